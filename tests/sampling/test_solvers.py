"""UniPC and Euler steps vs diffusers' schedulers, sample by sample, on a deterministic fake model.

Error = max |ours - ref| / max |ref| per step, worst over all steps. Our UniPC coefficients are
float64 (from the float32 sigma table), diffusers' are float32: against diffusers run in float32
orders 1-2 agree to <= 3.3e-6 and order 3 only to ~8e-5, because diffusers' float32 order-3
linear solves drift; against diffusers with its coefficient math in float64 every order agrees
to <= 7.5e-7, so that is the order-3 check at the 1e-5 tolerance.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from rehyat_jax.sampling import (euler_flow_schedule, sample, unipc_flow_schedule, unipc_init,
                                 unipc_step, unipc_step_orders, unipc_tables)
from sampling_references import (FakeModel, diffusers_euler, diffusers_trajectory, diffusers_unipc,
                                 latents, original_base_sigmas, step_relative_errors)

TOLERANCE = 1e-5
ORDER3_VS_FLOAT32_DIFFUSERS = 2e-4  # diffusers' own float32-vs-float64 drift is up to 8.3e-5


def ours_trajectory(schedule, model, start, guidance_scale, **kwargs):
  _, trajectory = sample(model.jax_denoise_fn(schedule, guidance_scale), start, schedule=schedule,
                         guidance_scale=guidance_scale, return_trajectory=True, **kwargs)
  return np.asarray(trajectory)


def diffusers_float64_trajectory(scheduler, model, start, guidance_scale):
  """diffusers' loop with its sigma table (same float32 values) and all its math in float64."""
  scheduler.set_begin_index(0)
  scheduler.sigmas = scheduler.sigmas.double()
  x = torch.from_numpy(start.astype(np.float64))
  double = lambda a: a.double()
  samples = []
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for k, t in enumerate(scheduler.timesteps):
      cond = model.a * x + model.b * double(torch.from_numpy(model.cond_noise[k]))
      flow = cond
      if guidance_scale is not None:
        uncond = model.a_uncond * x + model.b_uncond * double(torch.from_numpy(model.uncond_noise[k]))
        flow = uncond + guidance_scale * (cond - uncond)
      x = scheduler.step(flow, t, x, return_dict=False)[0]
      samples.append(x.numpy().copy())
  return np.stack(samples)


@pytest.mark.parametrize("guidance_scale", [None, 5.0])
@pytest.mark.parametrize("solver_order", [1, 2])
@pytest.mark.parametrize("num_steps, shift", [(50, 5.0), (20, 3.0), (4, 8.0), (3, 5.0), (1, 5.0)])
def test_unipc_matches_diffusers(num_steps, shift, solver_order, guidance_scale):
  model, start = FakeModel.make(num_steps), latents()
  ref = diffusers_trajectory(diffusers_unipc(shift, num_steps, solver_order=solver_order), model,
                             start, guidance_scale)
  ours = ours_trajectory(unipc_flow_schedule(num_steps, shift), model, start, guidance_scale,
                         solver_order=solver_order)
  assert step_relative_errors(ours, ref).max() <= TOLERANCE


@pytest.mark.parametrize("num_steps, shift", [(50, 5.0), (4, 8.0)])
def test_unipc_original_schedule_matches_diffusers(num_steps, shift):
  # Wan2.1's FlowUniPCMultistepScheduler.step is diffusers' algorithm; only the grid differs.
  model, start = FakeModel.make(num_steps), latents()
  scheduler = diffusers_unipc(shift, num_steps, base_sigmas=original_base_sigmas(num_steps))
  ref = diffusers_trajectory(scheduler, model, start, 5.0)
  ours = ours_trajectory(unipc_flow_schedule(num_steps, shift, variant="original"), model, start, 5.0)
  assert step_relative_errors(ours, ref).max() <= TOLERANCE


@pytest.mark.parametrize("variant, num_steps, shift",
                         [("diffusers", 50, 5.0), ("diffusers", 20, 3.0), ("diffusers", 4, 8.0),
                          ("original", 50, 5.0)])
def test_unipc_order3_matches_diffusers(variant, num_steps, shift):
  model, start = FakeModel.make(num_steps), latents()
  base = original_base_sigmas(num_steps) if variant == "original" else None
  make = lambda: diffusers_unipc(shift, num_steps, solver_order=3, base_sigmas=base)
  ours = ours_trajectory(unipc_flow_schedule(num_steps, shift, variant=variant), model, start, 5.0,
                         solver_order=3)
  ref64 = diffusers_float64_trajectory(make(), model, start, 5.0)
  assert step_relative_errors(ours, ref64).max() <= TOLERANCE
  ref32 = diffusers_trajectory(make(), model, start, 5.0)
  assert step_relative_errors(ours, ref32).max() <= ORDER3_VS_FLOAT32_DIFFUSERS


@pytest.mark.parametrize("guidance_scale", [None, 5.0])
@pytest.mark.parametrize("num_steps, shift", [(50, 5.0), (20, 3.0), (4, 8.0), (1, 5.0)])
def test_euler_matches_diffusers(num_steps, shift, guidance_scale):
  model, start = FakeModel.make(num_steps), latents()
  ref = diffusers_trajectory(diffusers_euler(shift, num_steps), model, start, guidance_scale)
  ours = ours_trajectory(euler_flow_schedule(num_steps, shift), model, start, guidance_scale,
                         solver="euler")
  assert step_relative_errors(ours, ref).max() <= TOLERANCE


def test_step_orders_warm_up_and_lower_order_final():
  np.testing.assert_array_equal(unipc_step_orders(6, 2), [1, 2, 2, 2, 2, 1])
  np.testing.assert_array_equal(unipc_step_orders(6, 3), [1, 2, 3, 3, 2, 1])
  np.testing.assert_array_equal(unipc_step_orders(2, 3), [1, 1])
  np.testing.assert_array_equal(unipc_step_orders(1, 2), [1])


def test_last_step_lands_on_the_x0_prediction():
  schedule = unipc_flow_schedule(5, 5.0)
  tables = unipc_tables(schedule.sigmas)
  assert tables.pred_sample[-1] == 0 and tables.pred_x0[-1] == 1
  assert not tables.corrected[0] and tables.corrected[1:].all()


def test_state_machine_runs_in_fori_loop_like_sample():
  num_steps, shift = 8, 5.0
  schedule = unipc_flow_schedule(num_steps, shift)
  model, start = FakeModel.make(num_steps), jnp.asarray(latents())
  denoise_fn = model.jax_denoise_fn(schedule, None)
  tables = jax.tree.map(jnp.asarray, unipc_tables(schedule.sigmas, 2))
  timesteps = jnp.asarray(schedule.timesteps, jnp.float32)

  def body(i, carry):
    x, state = carry
    state, x = unipc_step(tables, state, x, denoise_fn(x, jnp.full((x.shape[0],), timesteps[i])))
    return x, state

  x, state = jax.jit(lambda x: jax.lax.fori_loop(0, num_steps, body, (x, unipc_init(x, 2))))(start)
  assert int(state.step) == num_steps
  expected = sample(denoise_fn, start, schedule=schedule, guidance_scale=None)
  np.testing.assert_allclose(np.asarray(x), np.asarray(expected), rtol=0, atol=1e-6)
