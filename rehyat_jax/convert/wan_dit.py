"""Converting a PyTorch Wan2.1 T2V DiT checkpoint (original or diffusers layout) into a converted checkpoint.

What is the DiT's own: image-to-video rejection, ``detect_config`` (config.json when present, tensor shapes
otherwise, explicit overrides last) and the conversion record; the key tables are ``wan_dit_keys``, the rest is
the core (``key_rows.check_source``, ``storage.write_tensors``). The source is safetensors only: a single file, a
sharded set or a directory (fp32 / bf16 / fp16). ``read_converted`` / ``restore_params`` load the result back.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from rehyat_jax.convert import key_rows, storage, wan_dit_keys
from rehyat_jax.convert.sources import CheckpointError, TensorSource, open_safetensors_source
from rehyat_jax.convert.storage import Progress, report, restore_params, write_converted
from rehyat_jax.convert.wan_dit_keys import Layout
from rehyat_jax.models.config import WanConfig

# restore_params and write_converted live in storage; they stay importable from here for callers of the DiT API.
__all__ = ["check_source", "config_fields_from_json", "config_fields_from_shapes", "convert_wan_checkpoint",
           "default_num_heads", "detect_config", "detect_layout", "read_converted", "read_converted_config",
           "restore_params", "write_converted"]

# Heads of the released models by width; other widths fall back to the released head_dim.
KNOWN_NUM_HEADS = {1536: 12, 5120: 40}
RELEASED_HEAD_DIM = 128
I2V_MESSAGE = "image-to-video checkpoints are not supported (only Wan2.1 text-to-video)"
KIND = "Wan"  # names converted DiT checkpoints in errors


# ----------------------------------------------------------------------------------------------------------
# Detection
# ----------------------------------------------------------------------------------------------------------

def detect_layout(keys: list[str] | set[str]) -> Layout:
  """'original' or 'diffusers', whichever names more of ``keys``; I2V keys and unknown names are errors."""
  i2v_keys = sorted(key for key in keys if wan_dit_keys.is_image_to_video_key(key))
  if i2v_keys:
    raise CheckpointError(f"{I2V_MESSAGE}; found image-conditioning tensors such as {', '.join(i2v_keys[:3])}")
  return key_rows.detect_layout(keys, wan_dit_keys.TEMPLATES,
                                "the original Wan2.1 nor the diffusers WanTransformer3DModel")


def config_fields_from_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
  """The WanConfig fields that the tensor shapes of an original-layout checkpoint fix (what is present)."""
  fields: dict[str, Any] = {}
  num_layers = wan_dit_keys.ORIGINAL.num_layers(shapes)
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


def config_fields_from_json(config: dict[str, Any], path: Path | str = storage.CONFIG_FILE) -> dict[str, Any]:
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
  rename = wan_dit_keys.diffusers_to_original_keys(wan_dit_keys.DIFFUSERS.num_layers(shapes))
  return {rename[key]: value for key, value in shapes.items() if key in rename}


def detect_config(source: TensorSource, layout: Layout, *, num_heads: int | None = None,
                  progress: Progress = None) -> WanConfig:
  """The WanConfig of ``source``: tensor shapes, overridden by config.json fields, overridden by ``num_heads``."""
  fields = config_fields_from_shapes(to_original_keys(source.shapes, layout))
  json_config = source.read_config_json()
  if json_config is not None:
    json_fields = config_fields_from_json(json_config, source.config_path)
    if not json_fields:
      report(progress, f"ignoring {source.config_path}: not a Wan2.1 DiT config")
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


def check_source(source: TensorSource, layout: Layout, cfg: WanConfig) -> None:
  """Raises one CheckpointError listing every missing, unexpected, mis-shaped or non-float tensor."""
  key_rows.check_source(source, wan_dit_keys.expected_source_keys(cfg, layout),
                        f"a Wan2.1 T2V DiT ({layout} layout, dim={cfg.dim}, ffn_dim={cfg.ffn_dim}, "
                        f"num_layers={cfg.num_layers}, in_dim={cfg.in_dim}, out_dim={cfg.out_dim}, "
                        f"text_dim={cfg.text_dim}, freq_dim={cfg.freq_dim}, patch_size={list(cfg.patch_size)})")


# ----------------------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------------------

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
  storage.target_dtype(dtype)
  storage.check_destination(dst, overwrite)
  source = open_safetensors_source(src)
  layout = detect_layout(set(source.tensors))
  cfg = config if config is not None else detect_config(source, layout, num_heads=num_heads, progress=progress)
  check_source(source, layout, cfg)
  table = wan_dit_keys.source_key_table(cfg, layout)
  source_dtypes = sorted(set(source.dtype_names.values()))
  report(progress, f"{source.path}: {layout} layout, {len(table)} tensors, {source.total_bytes / 1e9:.2f} GB "
                   f"({', '.join(source_dtypes)}) → {dtype}; dim={cfg.dim} ffn_dim={cfg.ffn_dim} "
                   f"heads={cfg.num_heads} layers={cfg.num_layers}")
  conversion = {
      "source": str(source.path.resolve()),
      "source_files": [str(file.resolve()) for file in source.files],
      "source_dtypes": source_dtypes,
      "stripped_prefix": source.stripped_prefix,
      "layout": layout,
      "dtype": dtype,
      "num_tensors": len(table),
  }
  storage.write_tensors(dst, source, table, wan_dit_keys.target_shapes(cfg), cfg, conversion, dtype=dtype,
                        overwrite=overwrite, progress=progress, start=start)
  return cfg


# ----------------------------------------------------------------------------------------------------------
# Reading a converted checkpoint
# ----------------------------------------------------------------------------------------------------------

def read_converted_config(path: str | os.PathLike) -> WanConfig:
  """The WanConfig of a converted checkpoint."""
  return storage.read_config(path, WanConfig.from_dict, KIND, "dit")


def read_converted(path: str | os.PathLike) -> tuple[WanConfig, dict[str, Any]]:
  """(WanConfig, parameter tree of numpy arrays) of a converted checkpoint."""
  return read_converted_config(path), restore_params(path)
