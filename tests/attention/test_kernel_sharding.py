"""Pallas kernels under a multi-device mesh run per batch/head shard (shard_map) and still compute
the single-device XLA result, forward and gradients (8 simulated CPU devices, interpret mode):
every kernel window backend of the registry with every backward it offers, and TPU splash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hybrid_cases import KERNEL_SETTINGS

TOLERANCE = 1e-5
# The phi gradients (and the scalar loss) are sums over every token of a shard's batch; sharded, they are summed
# in another order than on one device. Their float32 round-off reached 2.5e-5 (relative to the largest entry) on
# some CPUs with the Mosaic TPU kernel in interpret mode; the outputs and dq, dk, dv stay below 1e-7 there. A
# wrong shard or mask gives errors of order 1.
SUMMED_TOLERANCE = 5e-5


@pytest.fixture(scope="module")
def results() -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
  script = Path(__file__).with_name("sharded_kernels_run.py")
  proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                        cwd=Path(__file__).resolve().parents[2], timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_within_round_off(case):
  loss, dq, dk, dv, dphi_q, dphi_k = case["errors"]  # value_and_grad's leaves: the loss, then the 5 inputs' grads
  assert max(dq, dk, dv) <= TOLERANCE, case
  assert max(loss, dphi_q, dphi_k) <= SUMMED_TOLERANCE, case


@pytest.mark.parametrize("window_backend,window_backward", KERNEL_SETTINGS)
def test_window_kernel_runs_per_shard(results, window_backend, window_backward):
  case = results["hybrid"][f"{window_backend}/{window_backward}"]["heads_4"]
  assert case["shard_map"], case
  assert_within_round_off(case)
  # The gradient comes back sharded like its input (batch over data, heads over tensor).
  assert "tensor" in case["grad_sharding"] and "data" in case["grad_sharding"], case


@pytest.mark.parametrize("window_backend,window_backward", KERNEL_SETTINGS)
def test_heads_not_divisible_shards_batch_only(results, window_backend, window_backward):
  # 3 heads over a tensor axis of 4: batch-only sharding.
  case = results["hybrid"][f"{window_backend}/{window_backward}"]["heads_3"]
  assert case["shard_map"], case
  assert_within_round_off(case)


def test_splash_runs_per_shard(results):
  case = results["splash"]
  assert case["shard_map"], case
  assert case["max_error"] <= TOLERANCE, case
