"""The progress line: speed is never reported over a step that included compilation."""

import json
import time

from etils import epath

from rehyat_jax.train.metrics import RunLogger


def test_a_line_logged_where_the_clock_was_reset_reports_no_speed(tmp_path):
  logger = RunLogger(epath.Path(tmp_path), total_steps=10, tokens_per_step=100, num_devices=1, device_kind="cpu")
  logger.reset_clock(1)  # what the loop does after the first (compiling) step
  first = logger.log(1, {"loss": 2.0})
  assert "included compilation" in first and "steps/s" not in first
  time.sleep(0.05)
  second = logger.log(2, {"loss": 1.5})
  steps_per_s = float(second.split(" steps/s")[0].split()[-1])
  assert 0 < steps_per_s <= 1 / 0.05  # one step over at least 50 ms, not a step over a zero interval
  logger.close()
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2] and "steps_per_s" not in rows[0]
  assert abs(rows[1]["steps_per_s"] - steps_per_s) < 0.01  # the line rounds to 2 decimals
