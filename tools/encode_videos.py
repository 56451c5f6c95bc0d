"""Encode captioned videos with the Wan VAE and umT5 into a WanLatentsDataset, host-sharded and resumable.

  python tools/encode_videos.py (--videos-dir DIR | --video-list LIST) --vae VAE_DIR --t5 T5_DIR
      --tokenizer SPIECE --out OUT [--size 832x480] [--frames 81] [--frame-stride 1]
      [--host-index I --num-hosts N] [--examples-per-shard 64] [--batch-size 1] [--text-len 512]

--videos-dir: every video in DIR, captioned by <stem>.txt beside it (empty caption when absent).
--video-list: a .csv with columns path,caption or a .jsonl of {"path": ..., "caption": ...}; relative paths
are relative to the list. Each video gives one clip: its first --frames frames (4k + 1) every --frame-stride,
scaled to cover WxH and centre-cropped (see rehyat_jax.data.video_encoding). Hosts, resuming and finalising
work as in tools/encode_prompts.py. Exits 1 with the problem (no traceback) on bad input.
"""

from __future__ import annotations

import argparse
import sys


from rehyat_jax.convert.umt5 import load_umt5
from rehyat_jax.convert.wan_vae import load_wan_vae
from rehyat_jax.data.tool_flags import run_tool, add_shard_flags, add_text_encoder_flags, add_text_len_flag, parse_size, shard_kwargs
from rehyat_jax.data.video_encoding import ClipSpec, check_videos, encode_videos, list_videos_dir, read_video_list
from rehyat_jax.models.config import PrecisionPolicy
from rehyat_jax.models.tokenizer import UMT5Tokenizer


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--videos-dir", help="folder of videos with <stem>.txt captions")
  source.add_argument("--video-list", help=".csv (path,caption) or .jsonl list of videos")
  parser.add_argument("--vae", required=True, help="converted Wan VAE directory")
  add_text_encoder_flags(parser)
  add_text_len_flag(parser)
  parser.add_argument("--size", type=parse_size, default=(832, 480), help="clip WIDTHxHEIGHT (default 832x480)")
  parser.add_argument("--frames", type=int, default=81, help="frames per clip, 4k + 1 (default 81)")
  parser.add_argument("--frame-stride", type=int, default=1, help="take every n-th frame (default 1)")
  add_shard_flags(parser, examples_per_shard=64, batch_size=1, batch_help="clips per VAE call")
  parser.add_argument("--precision", default="bf16_params", choices=("fp32", "bf16", "bf16_params"),
                      help="umT5 precision policy (the VAE runs in float32)")
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)

  def work():
    videos = list_videos_dir(args.videos_dir) if args.videos_dir else read_video_list(args.video_list)
    width, height = args.size
    spec = ClipSpec(width=width, height=height, num_frames=args.frames, frame_stride=args.frame_stride)
    # Before loading the models: a bad size, frame count or path fails in seconds.
    spec.check()
    check_videos(videos)
    tokenizer = UMT5Tokenizer(args.tokenizer, text_len=args.text_len)
    encoder = load_umt5(args.t5, PrecisionPolicy.named(args.precision))
    vae = load_wan_vae(args.vae)
    return encode_videos(
        videos, vae, tokenizer, encoder, args.out, spec,
        **shard_kwargs(args))

  return run_tool(work)


if __name__ == "__main__":
  sys.exit(main())
