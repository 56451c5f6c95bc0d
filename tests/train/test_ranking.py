"""Block ranking from a stage-1 report."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rehyat_jax.attention.config import RehyatConfig
from rehyat_jax.train.ranking import rank_blocks

TOOL = Path(__file__).resolve().parents[2] / "tools" / "rank_blocks.py"


def write_report(path, errors, converted=None, output_error=None):
  report = {"relative_error": errors, "baseline_error": [1.0] * len(errors),
            "converted": converted or [True] * len(errors)}
  if output_error is not None:
    report["output_error"] = output_error
  path.write_text(json.dumps(report))
  return path


def test_rank_by_output_error(tmp_path):
  report = write_report(tmp_path / "r.json", [0.5, 0.1, 0.9, 0.2], output_error=[1e-4, 5e-3, 2e-4, 3e-5])
  assert rank_blocks(report, 2) == [1, 3]                 # the paper's criterion: attention error
  assert rank_blocks(report, 2, by="output") == [0, 3]    # the blocks that change the prediction least
  with pytest.raises(ValueError, match="rank by one of"):
    rank_blocks(report, 2, by="speed")
  with pytest.raises(ValueError, match="train.block_output_errors=True"):
    rank_blocks(write_report(tmp_path / "old.json", [0.5, 0.1]), 1, by="output")
  proc = subprocess.run([sys.executable, str(TOOL), str(report), "--count", "3", "--by", "output"],
                        capture_output=True, text=True)
  assert proc.returncode == 0 and proc.stdout.strip() == "0,2,3"


def test_lowest_error_blocks_are_chosen(tmp_path):
  report = write_report(tmp_path / "r.json", [0.5, 0.1, 0.9, 0.2, 0.3])
  assert rank_blocks(report, 2) == [1, 3]
  assert rank_blocks(report, 5) == [0, 1, 2, 3, 4]


def test_partial_report_and_bad_count_are_refused(tmp_path):
  partial = write_report(tmp_path / "p.json", [0.5, 0.0, 0.9], [True, False, True])
  with pytest.raises(ValueError, match="converted only blocks \\[0, 2\\]"):
    rank_blocks(partial, 1)
  with pytest.raises(ValueError, match="count must be in 1..3"):
    rank_blocks(write_report(tmp_path / "r.json", [0.1, 0.2, 0.3]), 4)


def test_cli_writes_the_config_value(tmp_path):
  report = write_report(tmp_path / "r.json", [0.4, 0.1, 0.3, 0.2])
  out = tmp_path / "blocks.txt"
  proc = subprocess.run([sys.executable, str(TOOL), str(report), "--count", "2", "--out", str(out)],
                        capture_output=True, text=True)
  assert proc.returncode == 0 and proc.stdout.strip() == "1,3" and out.read_text().strip() == "1,3"
  # One block prints bracketed: a bare number in rehyat.converted_blocks is a count of evenly spaced blocks.
  single = subprocess.run([sys.executable, str(TOOL), str(report), "--count", "1"], capture_output=True, text=True)
  assert single.returncode == 0 and single.stdout.strip() == "[1]"
  assert RehyatConfig(converted_blocks=single.stdout.strip()).converted_mask(4) == (False, True, False, False)
  assert RehyatConfig(converted_blocks="1").converted_mask(4) == (True, False, False, False)  # a count
  bad = subprocess.run([sys.executable, str(TOOL), str(tmp_path / "missing.json"), "--count", "2"],
                       capture_output=True, text=True)
  assert bad.returncode == 1 and "rank_blocks:" in bad.stderr


def test_step_flops_estimate_matches_hand_count():
  from rehyat_jax.models.config import WAN_T2V_1_3B
  from rehyat_jax.train.metrics import estimate_step_flops
  # Wan2.1-1.3B, 21 frames x 1560 tokens: linear layers alone are 2 x 1.33e9 weights x 32,760 tokens.
  flops = estimate_step_flops(WAN_T2V_1_3B, batch=1, frames=21, tokens_per_frame=1560, teacher_softmax=False,
                              backward=True, window_frames=4)
  linear = 2 * 32760 * 30 * (6 * 1536**2 + 2 * 1536 * 8960)
  assert linear * 3 < flops < linear * 3 * 1.5
  distill = estimate_step_flops(WAN_T2V_1_3B, batch=1, frames=21, tokens_per_frame=1560, teacher_softmax=True,
                                backward=False, window_frames=4)
  full_attention = 4 * 32760 * 32760 * 1536 * 30
  assert distill > full_attention
