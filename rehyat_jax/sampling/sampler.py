"""The sampling loop: noise latents -> clean latents, one ``lax.scan`` over the schedule's steps.

Model-input convention (Wan2.1 and diffusers' WanPipeline): at step i the DiT sees the latents and
the schedule's timestep ``schedule.timesteps[i]`` (for UniPC the truncated int ``sigma_i * 1000``,
not the float sigma) broadcast to a float32 array [B]; it returns the flow ``v = noise - x0``.
With guidance the DiT runs on the prompt and the negative prompt at that same timestep and the
two flows are combined by ``cfg_combine`` before the solver step.

The schedule is host-static: its tables (and UniPC's coefficients, built from them) enter the
traced loop as constants, so ``sample`` can be wrapped in ``jax.jit`` with the schedule, the
solver and ``denoise_fn`` closed over. No per-step callback runs inside the scan (it stays pure);
ask for ``return_trajectory`` to inspect intermediate samples.
"""

from __future__ import annotations

from typing import Callable, Union

import jax
import jax.numpy as jnp
import numpy as np

from rehyat_jax.sampling.guidance import cfg_combine
from rehyat_jax.sampling.schedules import FlowSchedule
from rehyat_jax.sampling.solvers import (check_unipc_order, euler_step, unipc_init, unipc_step,
                                         unipc_tables)

SOLVERS = ("unipc", "euler")

# denoise_fn(latents [B, ...], timesteps float32 [B]) -> flow, or (cond_flow, uncond_flow) with CFG.
DenoiseFn = Callable[[jax.Array, jax.Array], Union[jax.Array, tuple[jax.Array, jax.Array]]]


def _check_schedule(schedule: FlowSchedule) -> int:
  sigmas, timesteps = np.shape(schedule.sigmas), np.shape(schedule.timesteps)
  if len(timesteps) != 1 or timesteps[0] < 1:
    raise ValueError("schedule.timesteps must be a 1-D table of num_steps >= 1 entries; "
                     f"got shape {timesteps}")
  if sigmas != (timesteps[0] + 1,):
    raise ValueError(f"schedule.sigmas must have num_steps + 1 = {timesteps[0] + 1} entries; "
                     f"got shape {sigmas}")
  return timesteps[0]


def _guided_flow(prediction, guidance_scale, latents_shape) -> jax.Array:
  """The flow to integrate from what ``denoise_fn`` returned (checked at trace time)."""
  is_pair = isinstance(prediction, (tuple, list))
  if guidance_scale is None:
    if is_pair:
      raise TypeError("guidance_scale=None (guidance off) but denoise_fn returned a "
                      f"{len(prediction)}-tuple; return the single flow, or pass a guidance_scale")
    flow = prediction
  else:
    if not (is_pair and len(prediction) == 2):
      raise TypeError(f"guidance_scale={guidance_scale!r} needs denoise_fn to return "
                      f"(cond_flow, uncond_flow); got {type(prediction).__name__}")
    flow = cfg_combine(prediction[0], prediction[1], guidance_scale)
  if flow.shape != latents_shape:
    raise ValueError(f"denoise_fn's flow has shape {flow.shape}; the latents have {latents_shape}")
  return flow


def sample(denoise_fn: DenoiseFn, latents: jax.Array, *, schedule: FlowSchedule,
           solver: str = "unipc", guidance_scale: float | None, solver_order: int = 2,
           return_trajectory: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
  """Integrate the flow ODE from ``latents`` (noise at ``schedule.sigmas[0]``) down to sigma 0.

  Args:
    denoise_fn: ``(latents [B, ...], timesteps float32 [B]) -> flow`` when ``guidance_scale`` is
      None, else ``-> (cond_flow, uncond_flow)``; flows have the latents' shape. Must be
      traceable (it runs inside ``lax.scan``).
    latents: starting noise [B, ...] (Wan: [B, 16, F, H/8, W/8] float32).
    schedule: a host ``FlowSchedule`` (``unipc_flow_schedule`` / ``euler_flow_schedule``).
    solver: 'unipc' (Wan's default, multistep bh2 + corrector) or 'euler'.
    guidance_scale: classifier-free guidance scale, or None for a single, unguided pass per step.
      (diffusers turns guidance off for scales <= 1; pass None for that.)
    solver_order: UniPC order, 1 to 3 (default 2, as Wan and diffusers); unused by Euler.
    return_trajectory: also return every step's output sample, [num_steps, B, ...].

  Returns:
    The final latents (latents.dtype), or (final, trajectory) with ``return_trajectory``.
  """
  if solver not in SOLVERS:
    raise ValueError(f"unknown solver {solver!r}; choose one of {SOLVERS}")
  if isinstance(guidance_scale, bool):
    raise TypeError(f"guidance_scale must be a number or None; got {guidance_scale!r}")
  _check_schedule(schedule)
  latents = jnp.asarray(latents)
  if latents.ndim < 1:
    raise ValueError("latents need a leading batch axis [B, ...]")
  batch = latents.shape[0]
  # int table values are exact in float32 (< 2**24); the DiT embeds them as floats anyway.
  timesteps = jnp.asarray(np.asarray(schedule.timesteps, np.float32))

  def model_flow(x: jax.Array, timestep: jax.Array) -> jax.Array:
    prediction = denoise_fn(x, jnp.broadcast_to(timestep, (batch,)))
    return _guided_flow(prediction, guidance_scale, latents.shape)

  def keep(x: jax.Array):
    return x if return_trajectory else None

  if solver == "euler":
    sigmas = jnp.asarray(np.asarray(schedule.sigmas, np.float32))

    def euler_body(x, step):
      timestep, sigma, sigma_next = step
      x = euler_step(x, model_flow(x, timestep), sigma, sigma_next)
      return x, keep(x)

    final, trajectory = jax.lax.scan(euler_body, latents, (timesteps, sigmas[:-1], sigmas[1:]))
  else:
    order = check_unipc_order(solver_order)
    tables = unipc_tables(schedule.sigmas, order)

    def unipc_body(carry, timestep):
      x, state = carry
      state, x = unipc_step(tables, state, x, model_flow(x, timestep))
      return (x, state), keep(x)

    (final, _), trajectory = jax.lax.scan(unipc_body, (latents, unipc_init(latents, order)),
                                          timesteps)
  return (final, trajectory) if return_trajectory else final
