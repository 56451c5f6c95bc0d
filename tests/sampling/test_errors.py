"""Bad arguments fail early with errors that say what is wrong."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from rehyat_jax.sampling import (FlowSchedule, euler_flow_schedule, sample, shift_sigmas,
                                 unipc_flow_schedule, unipc_init, unipc_tables)

BUILDERS = [unipc_flow_schedule, euler_flow_schedule]
IDENTITY = lambda x, t: x


@pytest.mark.parametrize("build", BUILDERS)
@pytest.mark.parametrize("steps", [0, -3])
def test_steps_below_one(build, steps):
  with pytest.raises(ValueError, match="num_steps must be >= 1"):
    build(steps, 5.0)


@pytest.mark.parametrize("build", BUILDERS)
@pytest.mark.parametrize("steps", [2.5, "50", True, None])
def test_steps_not_an_int(build, steps):
  with pytest.raises(TypeError, match="num_steps must be an int"):
    build(steps, 5.0)


@pytest.mark.parametrize("build", BUILDERS)
@pytest.mark.parametrize("shift", [0.0, -1.0, float("nan"), float("inf")])
def test_shift_not_positive(build, shift):
  with pytest.raises(ValueError, match="shift must be finite and > 0"):
    build(10, shift)
  with pytest.raises(ValueError, match="shift must be finite and > 0"):
    shift_sigmas(np.linspace(0, 1, 5), shift)


def test_shift_not_a_number():
  with pytest.raises(TypeError, match="shift must be a real number"):
    unipc_flow_schedule(10, "5")


def test_unknown_variant():
  with pytest.raises(ValueError, match="unknown UniPC schedule variant 'wan'"):
    unipc_flow_schedule(10, 5.0, variant="wan")


def test_unknown_solver():
  with pytest.raises(ValueError, match="unknown solver 'dpm\\+\\+'"):
    sample(IDENTITY, jnp.zeros((1, 2)), schedule=unipc_flow_schedule(4, 5.0), solver="dpm++",
           guidance_scale=None)


@pytest.mark.parametrize("order", [0, 4])
def test_bad_unipc_order(order):
  with pytest.raises(ValueError, match="solver_order must be in"):
    sample(IDENTITY, jnp.zeros((1, 2)), schedule=unipc_flow_schedule(4, 5.0), guidance_scale=None,
           solver_order=order)
  with pytest.raises(ValueError, match="solver_order must be in"):
    unipc_init(jnp.zeros(2), order)


def test_unipc_refuses_a_schedule_starting_at_sigma_one():
  with pytest.raises(ValueError, match=r"strictly inside \(0, 1\)"):
    unipc_tables(euler_flow_schedule(4, 5.0).sigmas)
  with pytest.raises(ValueError, match="final sigma of 0"):
    unipc_tables(np.array([0.9, 0.5], np.float32))


def test_mismatched_schedule():
  bad = FlowSchedule(sigmas=np.array([0.9, 0.5, 0.0], np.float32), timesteps=np.array([900]))
  with pytest.raises(ValueError, match="num_steps \\+ 1 = 2 entries"):
    sample(IDENTITY, jnp.zeros((1, 2)), schedule=bad, guidance_scale=None)


def test_guidance_and_denoise_fn_disagree():
  schedule = unipc_flow_schedule(3, 5.0)
  with pytest.raises(TypeError, match="guidance_scale=None"):
    sample(lambda x, t: (x, x), jnp.zeros((2, 2)), schedule=schedule, guidance_scale=None)
  with pytest.raises(TypeError, match=r"needs denoise_fn to return \(cond_flow, uncond_flow\)"):
    sample(IDENTITY, jnp.zeros((2, 2)), schedule=schedule, guidance_scale=5.0)


def test_flow_shape_mismatch():
  with pytest.raises(ValueError, match="flow has shape"):
    sample(lambda x, t: x[:1], jnp.zeros((2, 2)), schedule=unipc_flow_schedule(3, 5.0),
           guidance_scale=None)
