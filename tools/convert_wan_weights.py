"""Convert a PyTorch Wan2.1 text-to-video DiT checkpoint (safetensors) into a rehyat-jax Orbax checkpoint.

  python tools/convert_wan_weights.py SRC DST [--dtype bfloat16] [--num-heads N] [--overwrite]

SRC: a .safetensors file, a *.safetensors.index.json, or a directory holding either (original Wan2.1 release,
diffusers transformer/ folder, or diffusers repo root). DST: the directory to create (config.json,
conversion.json, params/). Exits 1 with the problem (no traceback) when the source cannot be converted.
"""

from __future__ import annotations

import argparse
import sys

from rehyat_jax.convert import CheckpointError, convert_wan_checkpoint


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("src", help="checkpoint file, shard index or directory")
  parser.add_argument("dst", help="directory to write the converted checkpoint to")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="dtype of the converted weights (default: float32)")
  parser.add_argument("--num-heads", type=int, default=None,
                      help="attention heads, for widths other than the released ones without a config.json")
  parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  try:
    convert_wan_checkpoint(args.src, args.dst, dtype=args.dtype, num_heads=args.num_heads,
                           overwrite=args.overwrite)
  except CheckpointError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
