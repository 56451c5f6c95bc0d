"""``load_pretrained``: a converted checkpoint -> a ready ``WanDiT`` (teacher or ReHyAt student).

A student comes either from a ``RehyatConfig`` (fresh feature maps, for training) or from a student
export folder (``student=``: its ``student.json`` says what the student is, its adapters are
restored, and the teacher it was distilled from must be the checkpoint loaded here).

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
from rehyat_jax.convert import student as student_export
from rehyat_jax.core.adapters import TEACHER_PARAMS, AdapterParam
from rehyat_jax.convert.wan_dit import read_converted_config, restore_params
from rehyat_jax.core import sharding as sharding_lib
from rehyat_jax.models.params import canonical_to_model_layout
from rehyat_jax.models.wan import RuntimeConfig, WanDiT


def load_pretrained(path: str | os.PathLike, *, run: RuntimeConfig = RuntimeConfig(), rehyat: RehyatConfig | None = None,
                    student: str | os.PathLike | None = None, mesh: jax.sharding.Mesh | None = None,
                    rules=sharding_lib.DEFAULT_RULES, seed: int = 0) -> WanDiT:
  """The DiT stored at ``path`` (written by ``convert_wan_checkpoint``).

  With ``rehyat`` the teacher's weights are loaded into a student whose adapters (phi) are
  initialised from ``seed``. With ``student`` (an export folder) the student's config comes from
  its ``student.json`` and its adapters from the export; ``rehyat`` may then only repeat it or
  change ``converted_blocks`` (every block owns phi, so a ranked subset fits). Raises
  ``StudentExportError`` when the export does not fit this teacher. With ``mesh`` every parameter
  is placed with the ``NamedSharding`` that ``rules`` give its logical axes (layer-scanned
  models only: that is the training layout).
  """
  if student is not None:
    exported = student_export.read_student_config(student)
    if rehyat is not None:
      diffs = exported.differences(rehyat, ignore=("converted_blocks",))
      if diffs:
        raise student_export.StudentExportError(
            f"student export {student} was trained as another student (export vs requested): " + "; ".join(diffs))
    rehyat = rehyat or exported
  cfg = read_converted_config(path)
  build = lambda: WanDiT(cfg, run, rehyat, rngs=nnx.Rngs(seed))
  # Under a context mesh (jax.set_mesh) nnx.eval_shape shards the abstract variables by their
  # partition names, which are logical names: resolve them to mesh axes first.
  context = jax.sharding.get_abstract_mesh()
  axis_names = mesh.axis_names if mesh is not None else (() if context.empty else context.axis_names)
  with nnx.logical_axis_rules(sharding_lib.rules_for_mesh(axis_names, rules)):
    abstract = nnx.eval_shape(build)
  graphdef, teacher_abs, adapters_abs, rest_abs = nnx.split(abstract, TEACHER_PARAMS, AdapterParam, ...)
  if mesh is not None and not run.scan_layers:
    raise ValueError("load_pretrained: sharding on a mesh needs RuntimeConfig(scan_layers=True)")
  shardings = sharding_lib.mesh_shardings(nnx.state(abstract), mesh, rules) if mesh is not None else None

  teacher_target = nnx.to_pure_dict(teacher_abs)
  if run.scan_layers:
    target_shardings = (nnx.to_pure_dict(nnx.split_state(shardings, TEACHER_PARAMS, ...)[0]) if shardings is not None
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
    adapter_shardings = nnx.split_state(shardings, AdapterParam, ...)[0] if shardings is not None else None
    init_adapters = jax.jit(lambda: nnx.state(build(), AdapterParam), out_shardings=adapter_shardings)
    adapters_abs = init_adapters()
  model = nnx.merge(graphdef, teacher_abs, adapters_abs, rest_abs)
  if student is not None:
    student_export.check_teacher(student, model)
    student_export.restore_adapters(student, model)
  return model
