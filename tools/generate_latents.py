"""Sample teacher latents for a prompt file with a Wan2.1 DiT into a WanLatentsDataset, host-sharded, resumable.

  python tools/generate_latents.py --prompts-file prompts.txt --dit DIT_DIR --t5 T5_DIR --tokenizer SPIECE
      --out OUT [--frames 81] [--size 832x480] [--steps 50] [--guidance 5.0] [--shift 5.0]
      [--solver unipc|euler] [--seed 0] [--precision bf16] [--host-index I --num-hosts N]
      [--examples-per-shard 64] [--batch-size 8]

One prompt per line (blank lines skipped); prompt i is sampled from noise seed SEED + i, whatever the host
split. No VAE is needed: the records hold latents. Hosts, resuming and finalising work as in
tools/encode_prompts.py (see rehyat_jax.data.latent_generation). Exits 1 with the problem on bad input.
"""

from __future__ import annotations

import argparse
import sys


from rehyat_jax.convert.loading import load_pretrained
from rehyat_jax.convert.umt5 import load_umt5
from rehyat_jax.data.latent_generation import generate_latents
from rehyat_jax.data.prompt_encoding import read_prompts
from rehyat_jax.data.tool_flags import run_tool, add_shard_flags, add_text_encoder_flags, parse_size, shard_kwargs
from rehyat_jax.inference.pipeline import check_video_shape
from rehyat_jax.inference.sampler import make_schedule
from rehyat_jax.models.config import PrecisionPolicy
from rehyat_jax.models.tokenizer import UMT5Tokenizer
from rehyat_jax.models.wan import RuntimeConfig
from rehyat_jax.sampling import SOLVERS, WAN_T2V_GUIDANCE_SCALE, WAN_T2V_SAMPLING_STEPS, WAN_T2V_SHIFT


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--prompts-file", required=True, help="text file, one prompt per line")
  parser.add_argument("--dit", required=True, help="converted Wan2.1 DiT directory (the teacher)")
  add_text_encoder_flags(parser)
  parser.add_argument("--frames", type=int, default=81, help="video frames, 4k + 1 (default 81)")
  parser.add_argument("--size", type=parse_size, default=(832, 480), help="video WIDTHxHEIGHT (default 832x480)")
  parser.add_argument("--steps", type=int, default=WAN_T2V_SAMPLING_STEPS)
  parser.add_argument("--guidance", type=float, default=WAN_T2V_GUIDANCE_SCALE, help="CFG scale (1: off)")
  parser.add_argument("--shift", type=float, default=WAN_T2V_SHIFT)
  parser.add_argument("--solver", choices=SOLVERS, default="unipc")
  parser.add_argument("--seed", type=int, default=0, help="noise seed of prompt 0 (prompt i: seed + i)")
  parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16", "bf16_params"),
                      help="DiT and umT5 precision policy (default bf16)")
  add_shard_flags(parser, examples_per_shard=64, batch_size=8, batch_help="prompts per text-encoder call")
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  width, height = args.size

  def work():
    prompts = read_prompts(args.prompts_file)
    # Before loading the models: a bad shape or schedule fails in seconds.
    check_video_shape(args.frames, height, width)
    make_schedule(args.solver, args.steps, args.shift)
    dit = load_pretrained(args.dit, run=RuntimeConfig(precision=args.precision))
    tokenizer = UMT5Tokenizer(args.tokenizer, text_len=dit.cfg.text_len)
    encoder = load_umt5(args.t5, PrecisionPolicy.named(args.precision))
    return generate_latents(
        prompts, dit, tokenizer, encoder, args.out, frames=args.frames, height=height, width=width,
        steps=args.steps, guidance=args.guidance, shift=args.shift, solver=args.solver, seed=args.seed,
        **shard_kwargs(args))

  return run_tool(work)


if __name__ == "__main__":
  sys.exit(main())
