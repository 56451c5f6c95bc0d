"""Write a random-weight Wan2.1 T2V DiT checkpoint in the original or diffusers layout (tests, demo, benchmarks).

  python tools/make_random_wan_checkpoint.py OUT_DIR --preset t2v-1.3b --layout original [--dtype bfloat16]
      [--max-shard-gb 5] [--prefix model.diffusion_model.] [--no-config] [--seed 0]

OUT_DIR gets ``diffusion_pytorch_model.safetensors`` (or, when the tensors exceed ``--max-shard-gb``, numbered
shards plus ``diffusion_pytorch_model.safetensors.index.json``) and a config.json in the layout's own format.
Tensors are generated and written one at a time, so memory stays near the largest tensor whatever the size.
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import ml_dtypes
import numpy as np

from rehyat_jax.convert import wan_dit_keys
from rehyat_jax.models.config import PRESETS, WanConfig

DTYPES = {"float32": ("F32", np.dtype(np.float32)), "bfloat16": ("BF16", np.dtype(ml_dtypes.bfloat16))}
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
# Standard deviation of the random weights; norm scales are 1 + this noise, as trained ones are near 1.
WEIGHT_STD = 0.02
HEADER_ALIGNMENT = 8


def tensor_specs(cfg: WanConfig, layout: wan_dit_keys.Layout) -> list[tuple[str, tuple[int, ...], bool]]:
  """(key, torch shape, is a norm scale) of every tensor, in key-table order."""
  shapes = wan_dit_keys.expected_source_keys(cfg, layout)
  slots = wan_dit_keys.source_key_table(cfg, layout)
  return [(key, shape, slots[key].path[-1] == "scale") for key, shape in shapes.items()]


def split_into_shards(specs: list[tuple[str, tuple[int, ...], bool]], itemsize: int,
                      max_shard_bytes: int) -> list[list[tuple[str, tuple[int, ...], bool]]]:
  """Consecutive groups of tensors of at most ``max_shard_bytes`` each (a larger tensor gets its own shard)."""
  shards: list[list[Any]] = [[]]
  size = 0
  for spec in specs:
    nbytes = math.prod(spec[1]) * itemsize
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(spec)
    size += nbytes
  return shards


def write_safetensors_streaming(path: Path, tensors: list[tuple[str, tuple[int, ...]]], dtype_name: str,
                                itemsize: int, make: Callable[[int], np.ndarray]) -> int:
  """Writes a safetensors file whose i-th tensor is ``make(i)``, one tensor in memory at a time; returns bytes.

  The header is written first from the shapes alone (8-byte length, JSON padded with spaces to 8-byte
  alignment, as the safetensors library writes it), then the tensor bytes in the same order.
  """
  header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
  offset = 0
  for key, shape in tensors:
    nbytes = math.prod(shape) * itemsize
    header[key] = {"dtype": dtype_name, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
    offset += nbytes
  header_bytes = json.dumps(header, separators=(",", ":")).encode()
  header_bytes += b" " * (-(8 + len(header_bytes)) % HEADER_ALIGNMENT)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(header_bytes)))
    f.write(header_bytes)
    for i, (key, shape) in enumerate(tensors):
      array = make(i)
      assert array.shape == tuple(shape), key
      array.tofile(f)
  return offset


def original_config_json(cfg: WanConfig) -> dict[str, Any]:
  """config.json as the original release writes it (text_dim and patch_size are ignore_for_config)."""
  return {"_class_name": "WanModel", "_diffusers_version": "0.30.0", "model_type": "t2v", "dim": cfg.dim,
          "eps": cfg.eps, "ffn_dim": cfg.ffn_dim, "freq_dim": cfg.freq_dim, "in_dim": cfg.in_dim,
          "num_heads": cfg.num_heads, "num_layers": cfg.num_layers, "out_dim": cfg.out_dim,
          "text_len": cfg.text_len}


def diffusers_config_json(cfg: WanConfig) -> dict[str, Any]:
  """transformer/config.json as diffusers writes it for WanTransformer3DModel."""
  return {"_class_name": "WanTransformer3DModel", "_diffusers_version": "0.33.0", "added_kv_proj_dim": None,
          "attention_head_dim": cfg.head_dim, "cross_attn_norm": True, "eps": cfg.eps, "ffn_dim": cfg.ffn_dim,
          "freq_dim": cfg.freq_dim, "image_dim": None, "in_channels": cfg.in_dim,
          "num_attention_heads": cfg.num_heads, "num_layers": cfg.num_layers, "out_channels": cfg.out_dim,
          "patch_size": list(cfg.patch_size), "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024,
          "text_dim": cfg.text_dim}


def make_random_checkpoint(out_dir: str | Path, cfg: WanConfig, layout: wan_dit_keys.Layout, *,
                           dtype: str = "float32", max_shard_gb: float | None = None, prefix: str = "",
                           write_config: bool = True, seed: int = 0,
                           progress: Callable[[str], None] | None = print) -> list[Path]:
  """Writes the checkpoint; returns the safetensors files written."""
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  dtype_name, np_dtype = DTYPES[dtype]
  specs = tensor_specs(cfg, layout)
  max_shard_bytes = int(max_shard_gb * 1e9) if max_shard_gb else sys.maxsize
  shards = split_into_shards(specs, np_dtype.itemsize, max_shard_bytes)
  rng = np.random.default_rng(seed)

  def make(spec: tuple[str, tuple[int, ...], bool]) -> np.ndarray:
    _, shape, is_scale = spec
    values = rng.standard_normal(shape, dtype=np.float32)
    values *= WEIGHT_STD
    if is_scale:
      values += 1.0
    return values.astype(np_dtype, copy=False)

  names = ([WEIGHTS_NAME] if len(shards) == 1 else
           [f"diffusion_pytorch_model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)])
  weight_map: dict[str, str] = {}
  total = 0
  for name, shard in zip(names, shards):
    tensors = [(prefix + key, shape) for key, shape, _ in shard]
    total += write_safetensors_streaming(out_dir / name, tensors, dtype_name, np_dtype.itemsize,
                                         lambda i, shard=shard: make(shard[i]))
    weight_map.update({key: name for key, _ in tensors})
    if progress is not None:
      progress(f"wrote {out_dir / name} ({len(shard)} tensors, {total / 1e9:.2f} GB so far)")
  if len(shards) > 1:
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / (WEIGHTS_NAME + ".index.json")).write_text(json.dumps(index, indent=2) + "\n")
  if write_config:
    config = original_config_json(cfg) if layout == "original" else diffusers_config_json(cfg)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
  return [out_dir / name for name in names]


def parse_args(argv: Iterable[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("out_dir")
  parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
  parser.add_argument("--layout", choices=wan_dit_keys.LAYOUTS, default="original")
  parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
  parser.add_argument("--max-shard-gb", type=float, default=None, help="shard when larger (default: one file)")
  parser.add_argument("--prefix", default="", help="key prefix, e.g. model.diffusion_model. (ComfyUI files)")
  parser.add_argument("--no-config", action="store_true", help="do not write config.json")
  parser.add_argument("--seed", type=int, default=0)
  return parser.parse_args(argv)


def main(argv: Iterable[str] | None = None) -> int:
  args = parse_args(argv)
  make_random_checkpoint(args.out_dir, PRESETS[args.preset], args.layout, dtype=args.dtype,
                         max_shard_gb=args.max_shard_gb, prefix=args.prefix, write_config=not args.no_config,
                         seed=args.seed)
  return 0


if __name__ == "__main__":
  sys.exit(main())
