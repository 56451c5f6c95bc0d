"""Shared fixtures of the sampling tests: diffusers' schedulers driven by a deterministic fake model.

The fake model is ``v_k = a * x + b * n_k`` with ``n_k`` a fixed NumPy-RNG array per step k (and a
second branch with other constants for the unconditional pass), so diffusers' loop and ours see the
same model outputs whenever they hold the same sample. Our side finds k from the timestep it is
given, which is why the test schedules have distinct timesteps.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax.numpy as jnp
import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from rehyat_jax.sampling import FlowSchedule

LATENT_SHAPE = (2, 4, 3, 4, 6)  # [B, C, F, H, W], a miniature Wan latent


def diffusers_unipc(shift: float, num_steps: int, *, solver_order: int = 2,
                    base_sigmas: np.ndarray | None = None) -> UniPCMultistepScheduler:
  """diffusers' Wan scheduler; ``base_sigmas`` (pre-shift) replaces its own grid, e.g. the original's."""
  scheduler = UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction",
                                      flow_shift=shift, solver_order=solver_order)
  if base_sigmas is None:
    scheduler.set_timesteps(num_steps)
  else:
    scheduler.set_timesteps(sigmas=np.array(base_sigmas, np.float64))
  return scheduler


def diffusers_euler(shift: float, num_steps: int) -> FlowMatchEulerDiscreteScheduler:
  scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
  scheduler.set_timesteps(num_steps)
  return scheduler


def original_base_sigmas(num_steps: int) -> np.ndarray:
  """Wan2.1's pre-shift grid: linspace(float32(0.999), 0, n + 1)[:-1] (the documented recipe)."""
  return np.linspace(float(np.float32(0.999)), 0.0, num_steps + 1)[:-1]


@dataclasses.dataclass(frozen=True)
class FakeModel:
  """Deterministic stand-in for the guided DiT: per-step noise tables and linear coefficients."""

  cond_noise: np.ndarray  # [num_steps, *LATENT_SHAPE] float32
  uncond_noise: np.ndarray
  a: float = -0.7
  b: float = 1.3
  a_uncond: float = -0.4
  b_uncond: float = 0.9

  @classmethod
  def make(cls, num_steps: int, seed: int = 0) -> "FakeModel":
    rng = np.random.default_rng(seed)
    draw = lambda: rng.standard_normal((num_steps, *LATENT_SHAPE)).astype(np.float32)
    return cls(cond_noise=draw(), uncond_noise=draw())

  def torch_flow(self, k: int, x: torch.Tensor, guidance_scale: float | None) -> torch.Tensor:
    cond = self.a * x + self.b * torch.from_numpy(self.cond_noise[k])
    if guidance_scale is None:
      return cond
    uncond = self.a_uncond * x + self.b_uncond * torch.from_numpy(self.uncond_noise[k])
    return uncond + guidance_scale * (cond - uncond)  # WanPipeline's combination

  def jax_denoise_fn(self, schedule: FlowSchedule, guidance_scale: float | None):
    """``denoise_fn`` for ``sample``: looks the step up by its timestep."""
    table = np.asarray(schedule.timesteps, np.float32)
    if len(np.unique(table)) != len(table):
      raise ValueError("FakeModel needs distinct timesteps to recover the step index")
    table, cond_noise, uncond_noise = map(jnp.asarray, (table, self.cond_noise, self.uncond_noise))

    def denoise_fn(x, timesteps):
      assert timesteps.shape == (x.shape[0],) and timesteps.dtype == jnp.float32
      k = jnp.argmax(table == timesteps[0])
      cond = self.a * x + self.b * cond_noise[k]
      if guidance_scale is None:
        return cond
      return cond, self.a_uncond * x + self.b_uncond * uncond_noise[k]

    return denoise_fn


def latents(seed: int = 1) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal(LATENT_SHAPE).astype(np.float32)


def diffusers_trajectory(scheduler, model: FakeModel, start: np.ndarray,
                         guidance_scale: float | None) -> np.ndarray:
  """Every sample diffusers' scheduler produces, [num_steps, *shape], WanPipeline-style loop."""
  scheduler.set_begin_index(0)  # as WanPipeline does
  x = torch.from_numpy(start.copy())
  samples = []
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for k, t in enumerate(scheduler.timesteps):
      x = scheduler.step(model.torch_flow(k, x, guidance_scale), t, x, return_dict=False)[0]
      samples.append(x.numpy().copy())
  return np.stack(samples)


def step_relative_errors(ours: np.ndarray, reference: np.ndarray) -> np.ndarray:
  """Per step: max |ours - ref| / max |ref| (float64)."""
  ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
  axes = tuple(range(1, reference.ndim))
  return np.abs(ours - reference).max(axis=axes) / np.abs(reference).max(axis=axes)
