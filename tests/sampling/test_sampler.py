"""The sampler loop: DiT timestep convention, jit, dtypes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rehyat_jax.sampling import euler_flow_schedule, sample, unipc_flow_schedule
from sampling_references import FakeModel, latents


def test_dit_sees_the_int_timestep_table_as_float32_batch():
  # flow = t / 1000 everywhere, so Euler's result is x + sum_k (sigma_{k+1} - sigma_k) t_k / 1000.
  schedule = unipc_flow_schedule(7, 5.0)
  start = jnp.zeros((3, 2))

  def denoise_fn(x, timesteps):
    assert timesteps.shape == (3,) and timesteps.dtype == jnp.float32
    return jnp.broadcast_to(timesteps[:, None] / 1000, x.shape)

  out = sample(denoise_fn, start, schedule=schedule, solver="euler", guidance_scale=None)
  sigmas = schedule.sigmas.astype(np.float64)
  expected = np.sum(np.diff(sigmas) * schedule.timesteps.astype(np.float64) / 1000)
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-6)


@pytest.mark.parametrize("solver", ["unipc", "euler"])
def test_sample_is_jittable(solver):
  schedule = (unipc_flow_schedule if solver == "unipc" else euler_flow_schedule)(6, 5.0)
  model, start = FakeModel.make(6), jnp.asarray(latents())
  run = lambda x: sample(model.jax_denoise_fn(schedule, 5.0), x, schedule=schedule, solver=solver,
                         guidance_scale=5.0)
  np.testing.assert_allclose(np.asarray(jax.jit(run)(start)), np.asarray(run(start)), rtol=0, atol=1e-6)


@pytest.mark.parametrize("solver", ["unipc", "euler"])
def test_latent_dtype_is_kept(solver):
  schedule = (unipc_flow_schedule if solver == "unipc" else euler_flow_schedule)(4, 5.0)
  start = jnp.ones((2, 3), jnp.bfloat16)
  out, trajectory = sample(lambda x, t: (-x, x), start, schedule=schedule, solver=solver,
                           guidance_scale=2.0, return_trajectory=True)
  assert out.dtype == jnp.bfloat16 and trajectory.shape == (4, 2, 3)
  assert trajectory.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(out)))
