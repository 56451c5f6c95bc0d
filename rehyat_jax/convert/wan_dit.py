"""Converting a PyTorch Wan2.1 T2V DiT checkpoint (original or diffusers layout) into an Orbax checkpoint.

Steps, each a function: open the source (headers only) → ``detect_layout`` → ``detect_config`` (config.json when
present, tensor shapes otherwise, explicit overrides last) → ``check_source`` (every missing / unexpected /
mis-shaped key reported at once, before anything is written) → ``allocate_params`` + ``fill_params`` (one
preallocated buffer per target leaf, source tensors streamed into it one at a time) → ``write_converted``.

A converted checkpoint is a directory::

  config.json       WanConfig.to_json()
  conversion.json   where it came from (source, layout, dtype, tensor count, time)
  params/           Orbax PyTree checkpoint of the scanned parameter tree (key_table.target_shapes)
"""

from __future__ import annotations

import datetime
import json
import math
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp

from rehyat_jax.convert import key_table
from rehyat_jax.convert.key_table import Layout, TargetSlot
from rehyat_jax.convert.safetensors_source import (DTYPE_NAMES, CheckpointError, SafetensorsSource,
                                                   open_safetensors_source, read_tensor)
from rehyat_jax.models.config import WanConfig

Progress = Callable[[str], None] | None

TARGET_DTYPES: dict[str, np.dtype] = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
SOURCE_FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})
# Heads of the released models by width; other widths fall back to the released head_dim.
KNOWN_NUM_HEADS = {1536: 12, 5120: 40}
RELEASED_HEAD_DIM = 128
CONFIG_FILE, CONVERSION_FILE, PARAMS_DIR = "config.json", "conversion.json", "params"
# Source rows copied per step of a transposing copy: row blocks keep the strided reads cache-friendly
# (about twice as fast as one whole-matrix strided copy).
COPY_ROWS_PER_BLOCK = 256
MAX_LISTED_PER_PROBLEM = 20
I2V_MESSAGE = "image-to-video checkpoints are not supported (only Wan2.1 text-to-video)"


# ----------------------------------------------------------------------------------------------------------
# Detection
# ----------------------------------------------------------------------------------------------------------

def detect_layout(keys: list[str] | set[str]) -> Layout:
  """'original' or 'diffusers', whichever names more of ``keys``; I2V keys and unknown names are errors."""
  i2v_keys = sorted(key for key in keys if key_table.is_image_to_video_key(key))
  if i2v_keys:
    raise CheckpointError(f"{I2V_MESSAGE}; found image-conditioning tensors such as {', '.join(i2v_keys[:3])}")
  scores = key_table.layout_scores(keys)
  best = max(scores.values())
  winners = [layout for layout, score in scores.items() if score == best]
  if best == 0 or len(winners) > 1:
    sample = ", ".join(sorted(keys)[:5]) or "(no tensors)"
    raise CheckpointError(f"unknown checkpoint layout: the keys match neither the original Wan2.1 nor the "
                          f"diffusers WanTransformer3DModel names (scores {scores}); first keys: {sample}")
  return winners[0]


def num_layers_from_keys(keys: list[str] | set[str]) -> int:
  """1 + the highest ``blocks.N.`` index (0 without blocks)."""
  indices = [block[0] for block in map(key_table.split_block_key, keys) if block is not None]
  return max(indices) + 1 if indices else 0


def config_fields_from_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
  """The WanConfig fields that the tensor shapes of an original-layout checkpoint fix (what is present)."""
  fields: dict[str, Any] = {}
  num_layers = num_layers_from_keys(shapes)
  if num_layers:
    fields["num_layers"] = num_layers
  patch = shapes.get("patch_embedding.weight", ())
  if len(patch) == 5:
    fields.update(dim=patch[0], in_dim=patch[1], patch_size=tuple(patch[2:]))
  text = shapes.get("text_embedding.0.weight", ())
  if len(text) == 2:
    fields["text_dim"] = text[1]
  time_in = shapes.get("time_embedding.0.weight", ())
  if len(time_in) == 2:
    fields["freq_dim"] = time_in[1]
  ffn_in = next((shapes[f"blocks.{i}.ffn.0.weight"] for i in range(num_layers)
                 if f"blocks.{i}.ffn.0.weight" in shapes), ())
  if len(ffn_in) == 2:
    fields["ffn_dim"] = ffn_in[0]
  head = shapes.get("head.head.weight", ())
  if len(head) == 2 and "patch_size" in fields:
    patch_volume = math.prod(fields["patch_size"])
    if head[0] % patch_volume == 0:
      fields["out_dim"] = head[0] // patch_volume
  return fields


def config_fields_from_json(config: dict[str, Any], path: Path | str = "config.json") -> dict[str, Any]:
  """WanConfig fields of an original (``WanModel``) or diffusers (``WanTransformer3DModel``) config.json;
  {} for a config of anything else."""
  class_name = config.get("_class_name")
  if class_name == "WanModel" or (class_name is None and "dim" in config):
    if config.get("model_type", "t2v") != "t2v":
      raise CheckpointError(f"{I2V_MESSAGE}; {path} has model_type {config['model_type']!r}")
    names = ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "freq_dim", "text_len", "eps",
             "text_dim", "patch_size")
    fields = {name: config[name] for name in names if name in config}
  elif class_name == "WanTransformer3DModel" or (class_name is None and "num_attention_heads" in config):
    if config.get("image_dim") is not None or config.get("added_kv_proj_dim") is not None:
      raise CheckpointError(f"{I2V_MESSAGE}; {path} sets image_dim / added_kv_proj_dim")
    renames = {"num_attention_heads": "num_heads", "ffn_dim": "ffn_dim", "num_layers": "num_layers",
               "in_channels": "in_dim", "out_channels": "out_dim", "text_dim": "text_dim", "freq_dim": "freq_dim",
               "patch_size": "patch_size", "eps": "eps"}
    fields = {ours: config[theirs] for theirs, ours in renames.items() if theirs in config}
    if "num_attention_heads" in config and "attention_head_dim" in config:
      fields["dim"] = config["num_attention_heads"] * config["attention_head_dim"]
  else:
    return {}
  if "patch_size" in fields:
    fields["patch_size"] = tuple(fields["patch_size"])
  return fields


def default_num_heads(dim: int) -> int:
  """Heads for a width without a config: the released models' count, else head_dim 128."""
  if dim in KNOWN_NUM_HEADS:
    return KNOWN_NUM_HEADS[dim]
  if dim % RELEASED_HEAD_DIM == 0:
    return dim // RELEASED_HEAD_DIM
  raise CheckpointError(f"cannot infer num_heads for dim={dim} (no config.json, not a released width, and "
                        f"not a multiple of {RELEASED_HEAD_DIM}); pass num_heads= (--num-heads)")


def to_original_keys(shapes: dict[str, Any], layout: Layout) -> dict[str, Any]:
  """``shapes`` keyed by original-layout names (keys without an original name are dropped)."""
  if layout == "original":
    return dict(shapes)
  rename = key_table.diffusers_to_original_keys(num_layers_from_keys(shapes))
  return {rename[key]: value for key, value in shapes.items() if key in rename}


def detect_config(source: SafetensorsSource, layout: Layout, *, num_heads: int | None = None,
                  progress: Progress = None) -> WanConfig:
  """The WanConfig of ``source``: tensor shapes, overridden by config.json fields, overridden by ``num_heads``."""
  fields = config_fields_from_shapes(to_original_keys(source.shapes(), layout))
  if source.config_path is not None:
    try:
      json_config = json.loads(source.config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
      raise CheckpointError(f"{source.config_path}: unreadable config ({e})") from e
    json_fields = config_fields_from_json(json_config, source.config_path)
    if not json_fields:
      _report(progress, f"ignoring {source.config_path}: not a Wan2.1 DiT config")
    fields.update(json_fields)
  if num_heads is not None:
    fields["num_heads"] = num_heads
  undetermined = [name for name in ("dim", "ffn_dim", "num_layers") if name not in fields]
  if undetermined:
    raise CheckpointError(f"{source.path}: cannot determine {', '.join(undetermined)} (no config.json and the "
                          "tensors that fix them are missing)")
  if "num_heads" not in fields:
    fields["num_heads"] = default_num_heads(fields["dim"])
  try:
    return WanConfig.from_dict(fields)
  except (TypeError, ValueError) as e:
    raise CheckpointError(f"{source.path}: inconsistent config {fields}: {e}") from e


# ----------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------

def check_source(source: SafetensorsSource, layout: Layout, cfg: WanConfig) -> None:
  """Raises one CheckpointError listing every missing, unexpected, mis-shaped or non-float tensor."""
  expected = key_table.expected_source_keys(cfg, layout)
  found = source.shapes()
  missing = [f"{key}  expected {list(shape)}" for key, shape in expected.items() if key not in found]
  unexpected = [f"{key}  {list(found[key])}" for key in sorted(found) if key not in expected]
  mismatched = [f"{key}: expected {list(shape)}, found {list(found[key])}"
                for key, shape in expected.items() if key in found and tuple(found[key]) != shape]
  not_float = [f"{key}: {DTYPE_NAMES[info.dtype]} (expected F32, F16, BF16 or F64)"
               for key, info in source.tensors.items()
               if key in expected and DTYPE_NAMES[info.dtype] not in SOURCE_FLOAT_DTYPES]
  problems = [(missing, "missing key", "missing keys"), (unexpected, "unexpected key", "unexpected keys"),
              (mismatched, "shape mismatch", "shape mismatches"),
              (not_float, "tensor with an unsupported dtype", "tensors with an unsupported dtype")]
  if not any(items for items, _, _ in problems):
    return
  lines = [f"{source.path} does not match a Wan2.1 T2V DiT ({layout} layout, dim={cfg.dim}, "
           f"ffn_dim={cfg.ffn_dim}, num_layers={cfg.num_layers}, in_dim={cfg.in_dim}, out_dim={cfg.out_dim}, "
           f"text_dim={cfg.text_dim}, freq_dim={cfg.freq_dim}, patch_size={list(cfg.patch_size)}):"]
  for items, singular, plural in problems:
    if items:
      lines.append(f"  {len(items)} {singular if len(items) == 1 else plural}:")
      lines.extend(f"    {item}" for item in items[:MAX_LISTED_PER_PROBLEM])
      if len(items) > MAX_LISTED_PER_PROBLEM:
        lines.append(f"    ... and {len(items) - MAX_LISTED_PER_PROBLEM} more")
  raise CheckpointError("\n".join(lines))


# ----------------------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------------------

def allocate_params(cfg: WanConfig, dtype: str) -> dict[str, Any]:
  """One uninitialised buffer per target leaf (pages are committed as they are filled)."""
  np_dtype = _target_dtype(dtype)

  def allocate(tree: dict[str, Any]) -> dict[str, Any]:
    return {name: allocate(sub) if isinstance(sub, dict) else np.empty(sub, np_dtype) for name, sub in tree.items()}

  return allocate(key_table.target_shapes(cfg))


def copy_into(destination: np.ndarray, tensor: np.ndarray, transform: key_table.Transform) -> None:
  """Writes a torch-layout ``tensor`` into ``destination`` in the JAX layout, casting to its dtype."""
  if transform == "linear" and tensor.ndim == 2:
    for row in range(0, tensor.shape[0], COPY_ROWS_PER_BLOCK):
      rows = slice(row, row + COPY_ROWS_PER_BLOCK)
      np.copyto(destination[:, rows], tensor[rows].T, casting="unsafe")
  else:
    np.copyto(destination, key_table.to_target_layout(tensor, transform), casting="unsafe")


def fill_params(params: dict[str, Any], source: SafetensorsSource, slots: dict[str, TargetSlot],
                progress: Progress = None) -> None:
  """Streams every source tensor into its slot, in file order (sequential reads)."""
  order = sorted(slots, key=lambda key: (str(source.tensors[key].file), source.tensors[key].offset))
  total_bytes = sum(source.tensors[key].nbytes for key in order)
  done_bytes, next_report, start = 0, 0.1, time.perf_counter()
  for count, key in enumerate(order, 1):
    slot, info = slots[key], source.tensors[key]
    destination = key_table.tree_get(params, slot.path)
    if slot.layer is not None:
      destination = destination[slot.layer]
    copy_into(destination, read_tensor(info), slot.transform)
    done_bytes += info.nbytes
    if done_bytes >= next_report * total_bytes or count == len(order):
      next_report += 0.1
      _report(progress, f"converted {count}/{len(order)} tensors, {done_bytes / 1e9:.2f}/{total_bytes / 1e9:.2f} GB, "
                        f"{time.perf_counter() - start:.1f} s")


def save_params(directory: Path, params: dict[str, Any]) -> None:
  """Writes ``params`` (numpy leaves) as an Orbax PyTree checkpoint at ``directory``, synchronously."""
  # Keeps the model in memory once: Orbax's default numpy handler deep-copies host arrays before writing (a
  # private registry turns that off; jax.Array keeps its default handler, without one Orbax warns), and zstd
  # compression holds every compressed chunk until the end (1.3B bf16: +2.1 GB RSS, 4x slower to write, for
  # a 25 % smaller checkpoint).
  registry = ocp.type_handlers.create_type_handler_registry(
      (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False)),
      (jax.Array, ocp.type_handlers.get_type_handler(jax.Array)))
  checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(type_handler_registry=registry,
                                                              use_compression=False))
  try:
    checkpointer.save(directory, args=ocp.args.PyTreeSave(params))
  finally:
    checkpointer.close()


def write_converted(dst: str | os.PathLike, params: dict[str, Any], cfg: WanConfig, conversion: dict[str, Any],
                    *, overwrite: bool = False) -> Path:
  """Writes params + config.json + conversion.json into a temporary directory next to ``dst``, then renames it to
  ``dst``; nothing is left behind on error."""
  dst = Path(dst).absolute()  # Orbax rejects relative paths
  _check_destination(dst, overwrite)
  dst.parent.mkdir(parents=True, exist_ok=True)
  # A fresh uniquely named directory (not tempfile.mkdtemp: its 0700 mode would become dst's mode).
  staging = dst.parent / f".{dst.name}.converting-{uuid.uuid4().hex[:12]}"
  staging.mkdir()
  try:
    save_params(staging / PARAMS_DIR, params)
    (staging / CONFIG_FILE).write_text(cfg.to_json() + "\n")
    (staging / CONVERSION_FILE).write_text(json.dumps(conversion, indent=2, sort_keys=True) + "\n")
    if dst.exists():
      replaced = dst.parent / f".{dst.name}.replaced-{uuid.uuid4().hex[:12]}"
      os.replace(dst, replaced)
      os.replace(staging, dst)
      shutil.rmtree(replaced, ignore_errors=True)
    else:
      os.replace(staging, dst)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return dst


def convert_wan_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, *, dtype: str = "float32",
                           num_heads: int | None = None, config: WanConfig | None = None, overwrite: bool = False,
                           progress: Progress = print) -> WanConfig:
  """Converts a Wan2.1 T2V DiT checkpoint at ``src`` into a converted checkpoint directory ``dst``.

  Args:
    src: a .safetensors file, a shard index, or a directory holding either (original release dir, diffusers
      ``transformer/`` dir or diffusers repo root).
    dst: the directory to create.
    dtype: 'float32' or 'bfloat16', the dtype of every converted leaf.
    num_heads: overrides the detected head count (needed for unknown widths without a config.json).
    config: the architecture, skipping detection (it is still checked against the tensors).
    overwrite: replace an existing ``dst``.
    progress: called with one-line status messages; None for silence.

  Returns:
    The WanConfig written to ``dst/config.json``.

  Raises:
    CheckpointError: unreadable source, unknown layout, image-to-video checkpoint, or keys / shapes that do not
      match (all listed); raised before anything is written.
  """
  start = time.perf_counter()
  _target_dtype(dtype)
  _check_destination(Path(dst), overwrite)
  source = open_safetensors_source(src)
  layout = detect_layout(set(source.tensors))
  cfg = config if config is not None else detect_config(source, layout, num_heads=num_heads, progress=progress)
  check_source(source, layout, cfg)
  slots = key_table.source_key_table(cfg, layout)
  _report(progress, f"{source.path}: {layout} layout, {len(slots)} tensors, {source.total_bytes / 1e9:.2f} GB "
                    f"({', '.join(sorted({DTYPE_NAMES[info.dtype] for info in source.tensors.values()}))}) → "
                    f"{dtype}; dim={cfg.dim} ffn_dim={cfg.ffn_dim} heads={cfg.num_heads} layers={cfg.num_layers}")

  params = allocate_params(cfg, dtype)
  fill_params(params, source, slots, progress)
  _report(progress, f"writing {dst} ({time.perf_counter() - start:.1f} s)")
  conversion = {
      "source": str(source.path.resolve()),
      "source_files": [str(file.resolve()) for file in source.files],
      "source_dtypes": sorted({DTYPE_NAMES[info.dtype] for info in source.tensors.values()}),
      "stripped_prefix": source.stripped_prefix,
      "layout": layout,
      "dtype": dtype,
      "num_tensors": len(slots),
      "converted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      # Reading, checking and transposing; the Orbax write that follows is not included.
      "seconds_to_convert": round(time.perf_counter() - start, 2),
  }
  write_converted(dst, params, cfg, conversion, overwrite=overwrite)
  _report(progress, f"done: {dst} in {time.perf_counter() - start:.1f} s")
  return cfg


# ----------------------------------------------------------------------------------------------------------
# Reading a converted checkpoint
# ----------------------------------------------------------------------------------------------------------

def read_converted_config(path: str | os.PathLike) -> WanConfig:
  """The WanConfig of a converted checkpoint."""
  path = _check_converted(Path(path))
  return WanConfig.from_dict(json.loads((path / CONFIG_FILE).read_text()))


def restore_params(path: str | os.PathLike, target: Any = None) -> dict[str, Any]:
  """The parameter tree of a converted checkpoint.

  Args:
    path: the converted checkpoint directory.
    target: None for numpy arrays as stored, or a tree of the same structure whose leaves are
      ``jax.ShapeDtypeStruct`` (with ``sharding=`` to restore directly sharded; a different dtype casts) or arrays.
  """
  path = _check_converted(Path(path))
  checkpointer = ocp.StandardCheckpointer()
  try:
    return checkpointer.restore((path / PARAMS_DIR).resolve(), target)
  finally:
    checkpointer.close()


def read_converted(path: str | os.PathLike) -> tuple[WanConfig, dict[str, Any]]:
  """(WanConfig, parameter tree of numpy arrays) of a converted checkpoint."""
  return read_converted_config(path), restore_params(path)


# ----------------------------------------------------------------------------------------------------------

def _target_dtype(dtype: str) -> np.dtype:
  if dtype not in TARGET_DTYPES:
    raise CheckpointError(f"unsupported target dtype {dtype!r}; choose one of {sorted(TARGET_DTYPES)}")
  return TARGET_DTYPES[dtype]


def _check_destination(dst: Path, overwrite: bool) -> None:
  if dst.exists() and not overwrite:
    raise CheckpointError(f"{dst} already exists; pass overwrite=True (--overwrite) to replace it")
  if dst.exists() and not dst.is_dir():
    raise CheckpointError(f"{dst} exists and is not a directory")


def _check_converted(path: Path) -> Path:
  if not (path / CONFIG_FILE).is_file() or not (path / PARAMS_DIR).is_dir():
    raise CheckpointError(f"{path} is not a converted Wan checkpoint (expected {CONFIG_FILE} and {PARAMS_DIR}/; "
                          "create one with tools/convert_wan_weights.py)")
  return path


def _report(progress: Progress, message: str) -> None:
  if progress is not None:
    progress(message)
