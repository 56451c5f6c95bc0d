"""Encode a prompt file with umT5 into a PromptEmbeddingsDataset, host-sharded and resumable.

  python tools/encode_prompts.py --prompts-file prompts.txt --t5 T5_DIR --tokenizer SPIECE --out OUT
      [--host-index I --num-hosts N] [--examples-per-shard 1024] [--batch-size 8] [--precision bf16_params]
      [--text-len 512] [--negative-prompt TEXT]

One prompt per line (blank lines skipped). T5_DIR: a converted umT5 checkpoint (rehyat_jax.convert.umt5);
SPIECE: spiece.model or a folder holding it. Host I of N writes shards I, I + N, ...; shards already written are
skipped, so rerunning resumes. The last host finalises once every shard exists (rerun it if it finished first,
or pass --finalize on any host). The dataset lands in OUT/prompt_embeddings_dataset/<config>/1.0.0/; training
reads OUT as it is (--config.data.data_dir=OUT). --text-len: the DiT's text_len (512 for every Wan2.1 DiT).
The negative prompt (Wan2.1's by default) is stored too, as split 'negative': stage 1 samples its teacher
trajectories with classifier-free guidance, as generation does.
Exits 1 with the problem (no traceback) on bad input.
"""

from __future__ import annotations

import argparse
import sys


from rehyat_jax.convert.umt5 import load_umt5
from rehyat_jax.data.prompt_encoding import encode_prompts, read_prompts
from rehyat_jax.data.tool_flags import run_tool, add_shard_flags, add_text_encoder_flags, add_text_len_flag, shard_kwargs
from rehyat_jax.models.config import PrecisionPolicy
from rehyat_jax.models.tokenizer import UMT5Tokenizer
from rehyat_jax.sampling.guidance import WAN_NEGATIVE_PROMPT


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--prompts-file", required=True, help="text file, one prompt per line")
  add_text_encoder_flags(parser)
  add_text_len_flag(parser)
  add_shard_flags(parser, examples_per_shard=1024, batch_size=8, batch_help="prompts per encoder call")
  parser.add_argument("--precision", default="bf16_params", choices=("fp32", "bf16", "bf16_params"),
                      help="umT5 precision policy (default bf16_params: Wan runs umT5 in bfloat16)")
  parser.add_argument("--negative-prompt", default=WAN_NEGATIVE_PROMPT, metavar="TEXT",
                      help="the negative prompt of classifier-free guidance, stored as split 'negative' for stage 1's "
                           "guided teacher trajectories (default, also when empty: Wan2.1's, as generation uses)")
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)

  def work():
    prompts = read_prompts(args.prompts_file)
    tokenizer = UMT5Tokenizer(args.tokenizer, text_len=args.text_len)
    encoder = load_umt5(args.t5, PrecisionPolicy.named(args.precision))
    return encode_prompts(
        prompts, tokenizer, encoder, args.out, negative_prompt=args.negative_prompt,
        **shard_kwargs(args))

  return run_tool(work)


if __name__ == "__main__":
  sys.exit(main())
