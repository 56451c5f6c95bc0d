"""Write the ``converted_blocks`` list for a chosen count from a stage-1 per-block error report.

  python tools/rank_blocks.py runs/distill_wan_1_3b/per_block_error.json --count 15 [--by output] [--out blocks.txt]

Prints (and optionally writes) e.g. ``0,2,5,...`` for ``--config.rehyat.converted_blocks=...``; one block
prints as ``[7]``, since a bare number there is a count of evenly spaced blocks, not a block id.
"""

import argparse
import sys
from pathlib import Path

from rehyat_jax.train.ranking import CRITERIA, rank_blocks  # pylint: disable=g-import-not-at-top


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("report", help="per_block_error.json written at the end of stage 1")
  p.add_argument("--count", type=int, required=True, help="how many blocks to convert (e.g. 15, 20, 25 of 30)")
  p.add_argument("--by", choices=sorted(CRITERIA), default="attention",
                 help="attention: the distilled attention error per block (the paper's); output: the velocity error "
                      "with only that block converted (stage 1 with train.block_output_errors=True) "
                      "(default: %(default)s)")
  p.add_argument("--out", help="also write the list to this file")
  args = p.parse_args(argv)
  try:
    ranked = rank_blocks(args.report, args.count, args.by)
    blocks = ",".join(map(str, ranked)) if len(ranked) > 1 else f"[{ranked[0]}]"
  except (ValueError, OSError, KeyError) as e:
    print(f"rank_blocks: {e}", file=sys.stderr)
    return 1
  print(blocks)
  if args.out:
    Path(args.out).write_text(blocks + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
