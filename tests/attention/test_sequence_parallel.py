"""Sequence-parallel ReHyAt (frames split over a "sequence" mesh axis, sequence_parallel.py) computes the
one-device parallel form: forward and gradients on 8 simulated CPU devices (a subprocess,
sequence_parallel_run.py) for To = 0, To < Tc, To = Tc, To > Tc spanning several devices, causal and
non-causal, with batch / heads also split; one bf16 case; the Pallas kernels (interpret mode) inside its
shard_map. The linear state's bytes per layer do not depend on the length, and frame counts that do not
split into whole chunks per device are refused with the numbers named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rehyat_jax.attention import check_sequence_split, linear_state_bytes, make_geometry

TOLERANCE = 1e-5
# bf16 on both sides; only the summation order of the float32 linear states differs, which can move
# a gradient entry by one bf16 ulp (2^-8 relative) of the largest entry.
BF16_TOLERANCE = 2e-2

FP32_CASES = ("tc2_to1_causal_seq4", "tc2_to1_noncausal_seq2_fsdp2_tensor2", "tc2_to0_noncausal_seq4",
              "tc1_to3_causal_seq8", "tc1_to3_noncausal_seq8", "tc2_to2_causal_seq2")
KERNEL_CASES = ("pallas_pallas_tc2_to1_causal_seq4", "pallas_tpu_xla_tc2_to1_causal_seq4")


@pytest.fixture(scope="module")
def results() -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
  script = Path(__file__).with_name("sequence_parallel_run.py")
  proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                        cwd=Path(__file__).resolve().parents[2], timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", FP32_CASES)
def test_forward_and_gradients_equal_one_device(results, name):
  case = results["cases"][name]
  assert case["shard_map"] and case["all_gather"], case
  assert case["max_error"] <= TOLERANCE, case


def test_halo_exchange_only_with_overlap(results):
  assert not results["cases"]["tc2_to0_noncausal_seq4"]["ppermute"]
  assert all(results["cases"][name]["ppermute"] for name in FP32_CASES if "to0" not in name)


def test_bf16(results):
  case = results["cases"]["bf16_tc2_to1_causal_seq4"]
  assert case["dtype"] == "bfloat16" and case["shard_map"], case
  assert case["max_error"] <= BF16_TOLERANCE, case


@pytest.mark.parametrize("name", KERNEL_CASES)
def test_kernels_inside_the_sequence_shard_map(results, name):
  case = results["cases"][name]
  assert case["shard_map"] and case["pallas_call"], case
  assert case["max_error"] <= TOLERANCE, case


def test_linear_state_bytes_independent_of_length(results):
  for causal in ("causal", "noncausal"):
    short, long = results["comm"][f"frames_8_{causal}"], results["comm"][f"frames_16_{causal}"]
    # What the traced program gathers is what linear_state_bytes says, at both lengths.
    assert short == long, (short, long)
    assert short["traced"] == short["expected"], short
  # Wan2.1-1.3B (12 heads x 128, D' = 256), one sample per shard, two devices: the same at any length.
  for causal in (True, False):
    per_layer = linear_state_bytes(batch=1, heads=12, head_dim=128, phi_dim=256, num_devices=2, causal=causal)
    print(f"linear state received per device per layer (1.3B, 2 devices, causal={causal}): "
          f"{per_layer} bytes ({per_layer / 2**20:.2f} MiB), any number of frames")
  assert linear_state_bytes(batch=1, heads=12, head_dim=128, phi_dim=256, num_devices=2, causal=True) == 1_585_152


def test_frames_that_do_not_split_into_whole_chunks_are_refused(results):
  errors = results["errors"]
  assert errors["frames_8_tc2_seq4"] is None
  assert "6 latent frames must be a multiple of devices x chunk_frames = 4 x 2 = 8" in errors["frames_6_tc2_seq4"]
  assert "[3]" in errors["frames_6_tc2_seq4"]  # the sequence sizes that would fit
  assert "8 latent frames must be a multiple of devices x chunk_frames = 2 x 3 = 6" in errors["frames_8_tc3_seq2"]


def test_check_sequence_split():
  assert check_sequence_split(84, 3, 2) == 42
  assert check_sequence_split(21, 3, 7) == 3
  with pytest.raises(ValueError, match=r"the 21 latent frames must be a multiple of devices x chunk_frames = "
                                       r"2 x 3 = 6\. Sequence sizes that fit 21 frames with chunk_frames=3: \[7\]"):
    check_sequence_split(21, 3, 2)


@pytest.mark.parametrize("frames_per_device,chunk_frames,overlap_frames", [(2, 2, 1), (4, 2, 3), (1, 1, 3), (3, 3, 0)])
@pytest.mark.parametrize("causal", [True, False])
def test_shard_membership_plus_outside_sums_is_the_linear_set(frames_per_device, chunk_frames, overlap_frames, causal):
  """For every device and chunk, the device's [halo ; own frames] membership, the frames before the halo
  (the exclusive prefix of the earlier devices' leaving sums) and, non-causal, the frames after the device
  (the suffix of the later devices' own sums) are exactly L_t of the whole video."""
  devices = 4
  frames, to = devices * frames_per_device, overlap_frames
  whole = make_geometry(frames, tokens_per_frame=1, chunk_frames=chunk_frames, overlap_frames=to)
  shard = make_geometry(frames_per_device, tokens_per_frame=1, chunk_frames=chunk_frames, overlap_frames=to)
  local = shard.linear_membership(causal, halo_frames=to)
  expected = whole.linear_membership(causal)
  for device in range(devices):
    first = device * frames_per_device
    for t in range(shard.num_chunks):
      member = np.zeros(frames, np.float32)
      member[:max(first - to, 0)] = 1.0                       # earlier devices' leaving frames
      if not causal:
        member[first + frames_per_device:] = 1.0               # later devices' own frames
      buffer_frames = np.arange(first - to, first + frames_per_device)
      inside = buffer_frames >= 0                               # halo slots before frame 0 carry zeros
      member[buffer_frames[inside]] += local[t][inside]
      np.testing.assert_array_equal(member, expected[device * shard.num_chunks + t])
