"""Convert a PyTorch Wan2.1 checkpoint (DiT, umT5 text encoder or VAE) into a rehyat-jax Orbax checkpoint.

  python tools/convert_wan_weights.py SRC DST [--component dit|umt5|vae] [--dtype bfloat16] [--num-heads N] [--overwrite]

SRC: a .safetensors file, a *.safetensors.index.json, or a directory holding either (original Wan2.1 release,
diffusers transformer/ folder, or diffusers repo root); for umt5 and vae also a torch .pth (Wan's
models_t5_umt5-xxl-enc-bf16.pth, Wan2.1_VAE.pth) or the diffusers text_encoder/ / vae/ folder. DST: the directory
to create (config.json, conversion.json, params/; see rehyat_jax.convert.storage). Exits 1 with the problem (no
traceback) when the source cannot be converted.

Resources: host memory stays near one source tensor whatever the model (the converted tensors go to memory-mapped
files); the disk next to DST needs room for DST twice while it runs. Until it finishes everything is in a hidden
directory next to DST; Ctrl-C or SIGTERM removes it, and a conversion killed outright leaves it for the next
conversion to DST to remove.
"""

from __future__ import annotations

import argparse
import signal
import sys

from rehyat_jax.convert import CheckpointError, convert_wan_checkpoint
from rehyat_jax.convert.umt5 import convert_umt5_checkpoint
from rehyat_jax.convert.wan_vae import convert_wan_vae

# Each part of the Wan2.1 release: its converter and its usual dtype (the text encoder ships in bf16).
COMPONENTS = {
    "dit": (convert_wan_checkpoint, "float32"),
    "umt5": (convert_umt5_checkpoint, "bfloat16"),
    "vae": (convert_wan_vae, "float32"),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("src", help="checkpoint file, shard index or directory")
  parser.add_argument("dst", help="directory to write the converted checkpoint to")
  parser.add_argument("--component", choices=sorted(COMPONENTS), default="dit",
                      help="dit (default), umt5 (text encoder: Wan's .pth or a transformers text_encoder/) or vae "
                           "(Wan2.1_VAE.pth or a diffusers vae/)")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                      help="dtype of the converted weights (default: float32; bfloat16 for umt5)")
  parser.add_argument("--num-heads", type=int, default=None,
                      help="attention heads, for widths other than the released ones without a config.json")
  parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
  return parser.parse_args(argv)


def _exit_on_sigterm(signum, frame):
  raise SystemExit(128 + signum)  # unwinds, so the staging directory is removed


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  signal.signal(signal.SIGTERM, _exit_on_sigterm)
  convert, default_dtype = COMPONENTS[args.component]
  extra = {"num_heads": args.num_heads} if args.component == "dit" else {}
  if args.num_heads is not None and args.component != "dit":
    print("error: --num-heads applies to --component dit only", file=sys.stderr)
    return 1
  try:
    convert(args.src, args.dst, dtype=args.dtype or default_dtype, overwrite=args.overwrite, **extra)
  except CheckpointError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
