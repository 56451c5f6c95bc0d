"""A self-describing student export: the adapters a stage trained plus everything needed to use them.

Layout of an export folder (written by training, read by ``load_pretrained(..., student=DIR)``,
generation and stage 2)::

  student.json   {"format": "rehyat-student", "version": 1,
                  "student": RehyatConfig.to_dict(),            # feature map, chunking, blocks, causal
                  "teacher": {"config": WanConfig.to_dict(), "fingerprint": "<sha256>"},
                  "adapters": <number of arrays>, "written_by": {...}}
  adapters/      Orbax checkpoint of every ``AdapterParam`` (phi today), canonical (layer-stacked) layout

The teacher fingerprint hashes the teacher's architecture, its parameter paths and shapes, and
the first and last row of every parameter rounded to bfloat16 (so an fp32 and a bf16 copy of one
checkpoint agree, while another checkpoint or other random weights do not). It is cheap: it never
reads a whole tensor. Exports from before this format (a ``phi/`` folder and ``phi.json``) carry
no config: ``read_student_config`` says so and ``restore_adapters`` still loads their weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from rehyat_jax.attention.config import RehyatConfig
from rehyat_jax.core.adapters import TEACHER_PARAMS, AdapterParam
from rehyat_jax.models.config import WanConfig
from rehyat_jax.models.params import canonical_to_model_layout, model_to_canonical_layout

STUDENT_FILE, ADAPTERS_DIR, LEGACY_PHI_DIR = "student.json", "adapters", "phi"
FORMAT, VERSION = "rehyat-student", 1


class StudentExportError(ValueError):
  """A student export that is missing, malformed, or does not fit the teacher / model it meets."""


def _path(directory: str | os.PathLike) -> epath.Path:
  path = epath.Path(directory)
  return path if "://" in str(path) else path.absolute()


def _first_row(a: jax.Array) -> jax.Array:
  return a.reshape(1) if a.ndim == 0 else a[(0,) * (a.ndim - 1)]


def _last_row(a: jax.Array) -> jax.Array:
  return a.reshape(1) if a.ndim == 0 else a[(-1,) * (a.ndim - 1)]


def teacher_fingerprint(model: nnx.Module) -> str:
  """sha256 of the teacher's config, parameter paths, canonical shapes and edge rows.

  Layout-independent: a stacked block leaf [L, ...] contributes layer 0's first row and layer
  L-1's last row, exactly what the per-layer leaves of an unscanned model contribute.
  """
  state = nnx.to_pure_dict(nnx.state(model, TEACHER_PARAMS))
  num_layers = model.cfg.num_layers
  blocks = state.pop("blocks")
  if model.run.scan_layers:
    shapes = jax.tree_util.tree_map(lambda a: tuple(a.shape), blocks)
    first_block, last_block = blocks, blocks
  else:
    shapes = jax.tree_util.tree_map(lambda a: (num_layers, *a.shape), blocks[0])
    first_block, last_block = blocks[0], blocks[num_layers - 1]
  edges = jax.jit(lambda rest, first, last: (
      jax.tree_util.tree_map(lambda a: jnp.concatenate([_first_row(a), _last_row(a)]).astype(jnp.bfloat16), rest),
      jax.tree_util.tree_map(lambda a, b: jnp.concatenate([_first_row(a), _last_row(b)]).astype(jnp.bfloat16),
                             first, last)))(state, first_block, last_block)
  rest_edges, block_edges = jax.device_get(edges)
  digest = hashlib.sha256(json.dumps(model.cfg.to_dict(), sort_keys=True).encode())
  entries = [(p, tuple(np.shape(a)), e) for (p, a), e in zip(jax.tree_util.tree_flatten_with_path(state)[0],
                                                            jax.tree_util.tree_leaves(rest_edges))]
  entries += [(("blocks",) + tuple(p), s, e) for (p, s), e in zip(
      jax.tree_util.tree_flatten_with_path(shapes, is_leaf=lambda x: isinstance(x, tuple))[0],
      jax.tree_util.tree_leaves(block_edges))]
  for path, shape, edge in sorted(entries, key=lambda t: str(t[0])):
    digest.update(f"{path}{shape}".encode())
    digest.update(np.asarray(edge, np.float32).tobytes())
  return digest.hexdigest()


def adapter_state(model_or_state) -> nnx.State:
  """The ``AdapterParam`` part of a model or of an (already split) state."""
  if isinstance(model_or_state, nnx.Module):
    return nnx.state(model_or_state, AdapterParam)
  return nnx.split_state(model_or_state, AdapterParam, ...)[0]


def export_student(adapters, directory: str | os.PathLike, *, student: RehyatConfig, teacher_config: WanConfig,
                   fingerprint: str, scan_layers: bool, written_by: dict | None = None) -> epath.Path:
  """Write ``adapters`` (a model, or a state holding AdapterParams) and ``student.json``.

  Every process of a multi-host run must call this (Orbax synchronises the hosts); the JSON is
  written by the primary process after the arrays, so a folder with ``student.json`` is complete.
  """
  directory = _path(directory)
  tree = nnx.to_pure_dict(adapter_state(adapters))
  if not jax.tree_util.tree_leaves(tree):
    raise StudentExportError("export_student: the model has no adapter parameters (is it a ReHyAt student?)")
  canonical = model_to_canonical_layout(tree, scan_layers=scan_layers, num_layers=teacher_config.num_layers)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(directory / ADAPTERS_DIR, canonical, force=True)
  checkpointer.wait_until_finished()
  if jax.process_index() == 0:
    record = {"format": FORMAT, "version": VERSION, "student": student.to_dict(),
              "teacher": {"config": teacher_config.to_dict(), "fingerprint": fingerprint},
              "adapters": len(jax.tree_util.tree_leaves(canonical)), "written_by": written_by or {}}
    (directory / STUDENT_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
  return directory


def read_student_record(directory: str | os.PathLike) -> dict:
  """The parsed ``student.json`` of an export; StudentExportError naming what is wrong."""
  directory = _path(directory)
  if not directory.exists():
    raise StudentExportError(f"student export {directory}: no such directory")
  record_path = directory / STUDENT_FILE
  if not record_path.exists():
    if (directory / LEGACY_PHI_DIR).exists():
      raise StudentExportError(
          f"{directory} is a phi export from before student exports carried their config (no {STUDENT_FILE}). "
          f"Rebuild the student with its settings, e.g. load_pretrained(..., rehyat=RehyatConfig(...)) and "
          f"restore_adapters('{directory}', model), or re-run stage 1 to get a self-describing export")
    raise StudentExportError(f"{directory} is not a student export: {STUDENT_FILE} is missing")
  try:
    record = json.loads(record_path.read_text())
  except json.JSONDecodeError as e:
    raise StudentExportError(f"{record_path}: not valid JSON ({e})") from None
  if record.get("format") != FORMAT or record.get("version") != VERSION:
    raise StudentExportError(f"{record_path}: format {record.get('format')!r} version {record.get('version')!r}; "
                             f"this code reads {FORMAT!r} version {VERSION}")
  return record


def read_student_config(directory: str | os.PathLike) -> RehyatConfig:
  """The ``RehyatConfig`` an export was trained with (cheap: reads JSON only)."""
  record = read_student_record(directory)
  try:
    return RehyatConfig.from_dict(record["student"])
  except (KeyError, TypeError, ValueError) as e:
    raise StudentExportError(f"{directory}/{STUDENT_FILE}: bad student config: {e}") from None


def check_teacher(directory: str | os.PathLike, model: nnx.Module) -> None:
  """StudentExportError when the export was trained on another teacher than ``model``'s."""
  teacher = read_student_record(directory)["teacher"]
  if teacher["config"] != model.cfg.to_dict():
    diffs = {k: (teacher["config"].get(k), v) for k, v in model.cfg.to_dict().items()
             if teacher["config"].get(k) != v}
    raise StudentExportError(f"student export {directory} was trained on a teacher with another architecture: "
                             + ", ".join(f"{k} {a!r} (export) vs {b!r} (this teacher)" for k, (a, b) in diffs.items()))
  if teacher["fingerprint"] != teacher_fingerprint(model):
    raise StudentExportError(f"student export {directory} was trained on other teacher weights than the checkpoint "
                             "loaded now (same architecture, different parameters): load the teacher it was "
                             "distilled from")


def restore_adapters(directory: str | os.PathLike, model: nnx.Module) -> None:
  """Load an export's adapters into ``model`` in place (new ``adapters/`` or legacy ``phi/`` folder)."""
  directory = _path(directory)
  target = nnx.state(model, AdapterParam)
  current = nnx.to_pure_dict(target)
  abstract = lambda tree: jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)
  checkpointer = ocp.StandardCheckpointer()
  scan_layers, num_layers = model.run.scan_layers, model.cfg.num_layers
  if (directory / ADAPTERS_DIR).exists():
    canonical_like = model_to_canonical_layout(current, scan_layers=scan_layers, num_layers=num_layers)
    try:
      values = checkpointer.restore(directory / ADAPTERS_DIR, abstract(canonical_like))
    except (ValueError, KeyError) as e:
      raise StudentExportError(f"student export {directory}: adapters do not fit this model ({e})") from None
    values = canonical_to_model_layout(values, scan_layers=scan_layers, num_layers=num_layers)
  elif (directory / LEGACY_PHI_DIR).exists():
    try:  # legacy exports hold the layout of the model that wrote them
      values = checkpointer.restore(directory / LEGACY_PHI_DIR, abstract(current))
    except (ValueError, KeyError) as e:
      raise StudentExportError(f"legacy phi export {directory}: phi do not fit this model ({e})") from None
  else:
    raise StudentExportError(f"{directory} holds neither {ADAPTERS_DIR}/ nor a legacy {LEGACY_PHI_DIR}/ folder")
  nnx.replace_by_pure_dict(target, values)
  nnx.update(model, target)
