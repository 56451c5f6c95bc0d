"""Choosing which blocks to convert: rank blocks by a held-out stage-1 measurement.

Stage 1 with every block converted writes ``per_block_error.json``: the relative attention error of
the distilled hybrid per block on held-out inputs (``attention``, what the paper ranks by; it
converts 15, 20 or 25 of Wan2.1-1.3B's 30 blocks) and, with ``train.block_output_errors``, each
block's effect on the model's output, the velocity error with only that block converted
(``output``). On the toy teacher of docs/fidelity.md the attention error picked the block holding
the teacher's one local head, and evenly spaced blocks gave 8.9 dB closer samples; the output
error measures what conversion costs the prediction itself.
"""

from __future__ import annotations

import json
from etils import epath

CRITERIA = {"attention": "relative_error", "output": "output_error"}


def rank_blocks(report_path: str | epath.PathLike, count: int, by: str = "attention") -> list[int]:
  """The ``count`` blocks with the lowest held-out error of criterion ``by`` (``CRITERIA``), sorted by id."""
  if by not in CRITERIA:
    raise ValueError(f"rank by one of {sorted(CRITERIA)}, got {by!r}")
  report = json.loads(epath.Path(report_path).read_text())
  converted = report["converted"]
  if CRITERIA[by] not in report:
    raise ValueError(f"{report_path} has no {CRITERIA[by]!r}: rank by output needs a stage-1 run with "
                     "train.block_output_errors=True")
  errors = report[CRITERIA[by]]
  candidates = [i for i, c in enumerate(converted) if c]
  if len(candidates) < len(converted):
    raise ValueError(f"{report_path} comes from a run that converted only blocks {candidates}; rank from a stage-1 "
                     "run with rehyat.converted_blocks='all' so every block has a distilled error")
  if not 0 < count <= len(candidates):
    raise ValueError(f"count must be in 1..{len(candidates)}, got {count}")
  best = sorted(candidates, key=lambda i: (errors[i], i))[:count]
  return sorted(best)
