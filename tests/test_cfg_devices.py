"""Generation's CFG branches on two devices (``cfg_devices=2``): the same samples as the two passes on one device,
with each device running one branch (batch 1 per device in the compiled program), for the teacher's parallel
forward and a student's recurrent forward; and a clear error where the devices are not there."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rehyat_jax.inference.pipeline import GenerationError
from rehyat_jax.inference.sampler import branch_mesh


@pytest.fixture(scope="module")
def two_device_run():
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
  proc = subprocess.run([sys.executable, str(Path(__file__).with_name("cfg_devices_run.py"))], capture_output=True,
                        text=True, env=env, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", ["teacher, parallel forward", "student, recurrent forward"])
def test_two_devices_sample_what_one_does(two_device_run, case):
  result = two_device_run["cases"][case]
  assert two_device_run["devices"] == 2 and result["finite"]
  assert result["relative_difference"] < 1e-5, result
  # One pass at a time on one device; split over two, each device's DiT still sees one video, never both.
  assert result["token_batches_one_device"] == [1]
  assert result["token_batches_two_devices"] == [1]


def test_device_counts_that_cannot_work_are_named():
  assert branch_mesh(1) is None
  with pytest.raises(GenerationError, match="1 or 2 devices"):
    branch_mesh(3)
  with pytest.raises(GenerationError, match="this process sees 1"):
    branch_mesh(2)   # the test process has one CPU device
