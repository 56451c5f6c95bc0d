"""Schedule tables vs diffusers' schedulers: int timesteps equal, sigmas within 1e-6 (measured: 0)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from rehyat_jax.sampling import euler_flow_schedule, shift_sigmas, unipc_flow_schedule
from sampling_references import diffusers_euler, diffusers_unipc, original_base_sigmas

CASES = [(50, 5.0), (20, 3.0), (4, 8.0), (1, 5.0), (40, 12.0), (30, 7.7), (100, 16.0)]
SIGMA_TOLERANCE = 1e-6


def assert_same_table(ours, sigmas, timesteps, timestep_dtype):
  sigmas, timesteps = sigmas.numpy(), timesteps.numpy()
  assert ours.sigmas.dtype == np.float32 and ours.sigmas.shape == sigmas.shape
  assert np.abs(ours.sigmas - sigmas).max() <= SIGMA_TOLERANCE
  assert ours.timesteps.dtype == timestep_dtype
  np.testing.assert_array_equal(ours.timesteps, timesteps)
  assert ours.num_steps == len(timesteps) and ours.sigmas[-1] == 0


@pytest.mark.parametrize("num_steps, shift", CASES)
def test_unipc_diffusers_variant_matches_diffusers(num_steps, shift):
  ref = diffusers_unipc(shift, num_steps)
  assert_same_table(unipc_flow_schedule(num_steps, shift), ref.sigmas, ref.timesteps, np.int64)


@pytest.mark.parametrize("num_steps, shift", CASES)
def test_unipc_original_variant_is_diffusers_on_the_originals_grid(num_steps, shift):
  # The original's set_timesteps = shift(linspace(float32(0.999), 0, n + 1)[:-1]), int timesteps,
  # final 0: diffusers' flow branch computes exactly that from custom pre-shift sigmas.
  ref = diffusers_unipc(shift, num_steps, base_sigmas=original_base_sigmas(num_steps))
  ours = unipc_flow_schedule(num_steps, shift, variant="original")
  assert_same_table(ours, ref.sigmas, ref.timesteps, np.int64)
  np.testing.assert_allclose(ours.sigmas[0], shift_sigmas(0.999, shift), rtol=1e-7)


@pytest.mark.parametrize("num_steps, shift", CASES)
def test_euler_matches_diffusers(num_steps, shift):
  ref = diffusers_euler(shift, num_steps)
  ours = euler_flow_schedule(num_steps, shift)
  assert_same_table(ours, ref.sigmas, ref.timesteps, np.float32)
  assert ours.sigmas[0] == 1


@settings(derandomize=True, deadline=None, max_examples=60, database=None)
@given(num_steps=st.integers(1, 250), shift=st.floats(0.05, 30.0, allow_nan=False))
def test_all_tables_are_bit_identical_to_diffusers(num_steps, shift):
  for ours, ref in [(unipc_flow_schedule(num_steps, shift), diffusers_unipc(shift, num_steps)),
                    (euler_flow_schedule(num_steps, shift), diffusers_euler(shift, num_steps))]:
    np.testing.assert_array_equal(ours.sigmas, ref.sigmas.numpy())
    np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())


def test_non_default_train_timesteps_match_diffusers():
  from diffusers import UniPCMultistepScheduler
  ref = UniPCMultistepScheduler(num_train_timesteps=500, use_flow_sigmas=True,
                                prediction_type="flow_prediction", flow_shift=3.0)
  ref.set_timesteps(12)
  assert_same_table(unipc_flow_schedule(12, 3.0, num_train_timesteps=500), ref.sigmas,
                    ref.timesteps, np.int64)


def test_shift_sigmas_properties():
  sigmas = np.linspace(0, 1, 11)
  np.testing.assert_array_equal(shift_sigmas(sigmas, 1.0), sigmas)
  for shift in (0.5, 3.0, 12.0):
    shifted = shift_sigmas(sigmas, shift)
    assert shifted[0] == 0 and shifted[-1] == 1 and np.all(np.diff(shifted) > 0)
    assert (shifted[1:-1] > sigmas[1:-1]).all() == (shift > 1)
  assert shift_sigmas(0.5, 5.0) == pytest.approx(5 / 6)
