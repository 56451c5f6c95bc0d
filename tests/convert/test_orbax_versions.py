"""The converted-checkpoint writer works with Orbax releases whose numpy handler lacks ``deepcopy_host_arrays``
(0.12.4, as preinstalled on the GPU image, failed the stage-2 export there)."""

import inspect

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



def test_save_params_with_an_orbax_without_the_file_size_option(tmp_path, monkeypatch):
  original = ocp.args.PyTreeSave

  def older_pytree_save(item, save_args=None):  # the signature of a release without the option
    return original(item, save_args=save_args)

  monkeypatch.setattr(ocp.args, "PyTreeSave", older_pytree_save)
  params = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
  storage.save_params(tmp_path / "params", params)
  restored = ocp.PyTreeCheckpointer().restore(tmp_path / "params")
  np.testing.assert_array_equal(restored["w"], params["w"])


def test_arrays_are_written_as_one_chunk_where_orbax_can(tmp_path, monkeypatch):
  # Over Orbax's default 2 GiB data-file target a stacked weight is split into non-contiguous chunks, which
  # TensorStore copies whole into RAM to write (bench/convert_memory.py measures it); 0 lifts the target.
  original, seen = ocp.args.PyTreeSave, []

  def spy(*args, **kwargs):
    seen.append(kwargs)
    return original(*args, **kwargs)

  spy.__signature__ = inspect.signature(original)
  monkeypatch.setattr(ocp.args, "PyTreeSave", spy)
  storage.save_params(tmp_path / "params", {"w": np.zeros((3, 4, 5), np.float32)})
  assert seen == [{"ocdbt_target_data_file_size": 0}]
