"""Command-line flags and the run wrapper the dataset tools share (tools/encode_prompts.py,
encode_videos.py, generate_latents.py)."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from rehyat_jax.convert.sources import CheckpointError


def parse_size(text: str) -> tuple[int, int]:
  """'832x480' or Wan's '832*480' -> (width, height)."""
  try:
    width, height = (int(part) for part in text.lower().replace("*", "x").split("x"))
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 832x480, got {text!r}") from None
  return width, height


def add_text_encoder_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--t5", required=True, help="converted umT5 checkpoint directory")
  parser.add_argument("--tokenizer", required=True, help="spiece.model or a folder holding it")
  parser.add_argument("--out", required=True, help="output directory (the dataset goes below it)")


def add_text_len_flag(parser: argparse.ArgumentParser) -> None:
  """Tokens per text embedding: the DiT's text_len (every Wan2.1 DiT: 512); training fits shorter embeddings to
  the DiT with zero rows, as Wan pads, but refuses longer ones."""
  from rehyat_jax.models.tokenizer import WAN_TEXT_LEN  # pylint: disable=g-import-not-at-top
  parser.add_argument("--text-len", type=int, default=WAN_TEXT_LEN,
                      help=f"tokens per prompt, the DiT's text_len (default {WAN_TEXT_LEN}, Wan2.1's); longer "
                           "prompts keep text_len - 1 pieces and EOS")


def add_shard_flags(parser: argparse.ArgumentParser, *, examples_per_shard: int, batch_size: int,
                    batch_help: str) -> None:
  """Host sharding (resumable: existing shards are skipped), shard size, batch size, finalisation."""
  parser.add_argument("--host-index", type=int, default=None, help="this host (default: jax.process_index())")
  parser.add_argument("--num-hosts", type=int, default=None,
                      help="hosts sharing the work (default: jax.process_count())")
  parser.add_argument("--examples-per-shard", type=int, default=examples_per_shard)
  parser.add_argument("--batch-size", type=int, default=batch_size, help=batch_help)
  parser.add_argument("--finalize", action="store_true", help="finalise on this host too once all shards exist")


def shard_kwargs(args: argparse.Namespace) -> dict:
  """The host/shard keyword arguments of the dataset writers, JAX's process index/count by default."""
  import jax  # pylint: disable=g-import-not-at-top
  return {"host_index": jax.process_index() if args.host_index is None else args.host_index,
          "num_hosts": jax.process_count() if args.num_hosts is None else args.num_hosts,
          "examples_per_shard": args.examples_per_shard, "batch_size": args.batch_size,
          "finalize": True if args.finalize else None}


def run_tool(work: Callable[[], Any]) -> int:
  """Runs a tool's ``work`` (returning a summary with ``describe()``): exit status 0 and the summary,
  or 1 and the error on one line for a bad checkpoint, a missing file or an invalid value."""
  try:
    summary = work()
  except (CheckpointError, FileNotFoundError, ValueError) as e:  # GenerationError is a ValueError
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(summary.describe())
  return 0
