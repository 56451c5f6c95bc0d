"""Choosing which blocks to convert: rank blocks by held-out stage-1 distillation error.

Stage 1 with every block converted writes ``per_block_error.json`` (relative attention error of
the distilled hybrid per block, on held-out inputs). The blocks whose hybrid is closest to their
softmax are the cheapest to convert; the paper converts 15, 20 or 25 of Wan2.1-1.3B's 30.
"""

from __future__ import annotations

import json
from etils import epath


def rank_blocks(report_path: str | epath.PathLike, count: int) -> list[int]:
  """The ``count`` converted blocks with the lowest held-out relative error, sorted by block id."""
  report = json.loads(epath.Path(report_path).read_text())
  errors, converted = report["relative_error"], report["converted"]
  candidates = [i for i, c in enumerate(converted) if c]
  if len(candidates) < len(converted):
    raise ValueError(f"{report_path} comes from a run that converted only blocks {candidates}; rank from a stage-1 "
                     "run with rehyat.converted_blocks='all' so every block has a distilled error")
  if not 0 < count <= len(candidates):
    raise ValueError(f"count must be in 1..{len(candidates)}, got {count}")
  best = sorted(candidates, key=lambda i: (errors[i], i))[:count]
  return sorted(best)
