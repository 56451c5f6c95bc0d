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


@pytest.fixture(scope="module")
def results() -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
  script = Path(__file__).with_name("sharded_kernels_run.py")
  proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                        cwd=Path(__file__).resolve().parents[2], timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("window_backend,window_backward", KERNEL_SETTINGS)
def test_window_kernel_runs_per_shard(results, window_backend, window_backward):
  case = results["hybrid"][f"{window_backend}/{window_backward}"]["heads_4"]
  assert case["shard_map"], case
  assert case["max_error"] <= TOLERANCE, case
  # The gradient comes back sharded like its input (batch over data, heads over tensor).
  assert "tensor" in case["grad_sharding"] and "data" in case["grad_sharding"], case


@pytest.mark.parametrize("window_backend,window_backward", KERNEL_SETTINGS)
def test_heads_not_divisible_shards_batch_only(results, window_backend, window_backward):
  # 3 heads over a tensor axis of 4: batch-only sharding.
  case = results["hybrid"][f"{window_backend}/{window_backward}"]["heads_3"]
  assert case["shard_map"], case
  assert case["max_error"] <= TOLERANCE, case


def test_splash_runs_per_shard(results):
  case = results["splash"]
  assert case["shard_map"], case
  assert case["max_error"] <= TOLERANCE, case
