"""``load_pretrained``: a converted checkpoint -> a ready ``WanDiT`` (teacher or ReHyAt student).

Nothing is initialised and then thrown away: the model is built abstractly, the teacher's
parameters are restored straight into their final dtype (and, on a mesh, their final sharding),
and only a student's feature maps are freshly initialised (a jitted init whose other outputs XLA
drops).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from flax import nnx

from rehyat_jax.attention.config import RehyatConfig
from rehyat_jax.attention.feature_maps import PhiParam
from rehyat_jax.convert.wan_dit import read_converted_config, restore_params
from rehyat_jax.core import sharding as sharding_lib
from rehyat_jax.models.params import TEACHER_PARAMS, canonical_to_model_layout
from rehyat_jax.models.wan import RuntimeConfig, WanDiT


def load_pretrained(path: str | os.PathLike, *, run: RuntimeConfig = RuntimeConfig(), rehyat: RehyatConfig | None = None,
                    mesh: jax.sharding.Mesh | None = None, rules=sharding_lib.DEFAULT_RULES, seed: int = 0) -> WanDiT:
  """The DiT stored at ``path`` (written by ``convert_wan_checkpoint``).

  With ``rehyat`` the teacher's weights are loaded into a student whose phi are initialised from
  ``seed``. With ``mesh`` every parameter is placed with the ``NamedSharding`` that ``rules``
  give its logical axes (layer-scanned models only: that is the training layout).
  """
  cfg = read_converted_config(path)
  build = lambda: WanDiT(cfg, run, rehyat, rngs=nnx.Rngs(seed))
  abstract = nnx.eval_shape(build)
  graphdef, teacher_abs, phi_abs, rest_abs = nnx.split(abstract, TEACHER_PARAMS, PhiParam, ...)
  if mesh is not None and not run.scan_layers:
    raise ValueError("load_pretrained: sharding on a mesh needs RuntimeConfig(scan_layers=True)")
  shardings = sharding_lib.mesh_shardings(nnx.state(abstract), mesh, rules) if mesh is not None else None

  teacher_target = nnx.to_pure_dict(teacher_abs)
  if run.scan_layers:
    target_shardings = (nnx.to_pure_dict(nnx.split(shardings, TEACHER_PARAMS, ...)[0]) if shardings is not None
                        else jax.tree_util.tree_map(lambda _: None, teacher_target))
    target = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                    teacher_target, target_shardings)
    restored = restore_params(path, target)
  else:
    # Per-layer layout: restore the stacked tree, then slice it per block.
    canonical = restore_params(path)
    dtypes = jax.tree_util.tree_map(lambda a: a.dtype, teacher_target)
    per_layer = canonical_to_model_layout(canonical, scan_layers=False, num_layers=cfg.num_layers)
    restored = jax.tree_util.tree_map(lambda a, d: jax.numpy.asarray(np.asarray(a), d), per_layer, dtypes)
  nnx.replace_by_pure_dict(teacher_abs, restored)

  if rehyat is not None:
    phi_shardings = nnx.split(shardings, PhiParam, ...)[0] if shardings is not None else None
    init_phi = jax.jit(lambda: nnx.state(build(), PhiParam), out_shardings=phi_shardings)
    phi_abs = init_phi()
  return nnx.merge(graphdef, teacher_abs, phi_abs, rest_abs)
