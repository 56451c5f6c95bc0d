"""The converted-checkpoint writer works with Orbax releases whose numpy handler lacks ``deepcopy_host_arrays``
(0.12.4, as preinstalled on the GPU image, failed the stage-2 export there)."""

import numpy as np
import orbax.checkpoint as ocp

from rehyat_jax.convert import storage


class OlderNumpyHandler(ocp.type_handlers.NumpyHandler):
  """The constructor of an Orbax release without the option."""

  def __init__(self, metadata_key=None):
    super().__init__(metadata_key=metadata_key)


def test_save_params_with_an_orbax_that_lacks_the_option(tmp_path, monkeypatch):
  monkeypatch.setattr(ocp.type_handlers, "NumpyHandler", OlderNumpyHandler)
  assert type(storage.numpy_handler_without_copies()) is OlderNumpyHandler
  params = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
  storage.save_params(tmp_path / "params", params)
  restored = ocp.PyTreeCheckpointer().restore(tmp_path / "params")
  np.testing.assert_array_equal(restored["w"], params["w"])


def test_the_option_is_used_where_it_exists():
  # pyproject's floor (0.12.8) has it; the handler must not deep-copy the model before writing.
  assert storage.numpy_handler_without_copies()._deepcopy_host_arrays is False  # pylint: disable=protected-access
