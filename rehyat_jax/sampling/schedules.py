"""Shifted flow-matching schedules: the sigma and timestep tables of Wan2.1's samplers.

Flow matching here is ``x_sigma = (1 - sigma) * x0 + sigma * noise`` (sigma = 1 is pure noise), the
DiT predicts the flow ``v = noise - x0``, and Wan shifts the sigma grid towards the noisy end with
``sigma' = shift * sigma / (1 + (shift - 1) * sigma)``.

Each builder reproduces one reference scheduler's ``set_timesteps`` operation for operation:
  * ``unipc_flow_schedule(variant='diffusers')``: diffusers ``UniPCMultistepScheduler(
    use_flow_sigmas=True, prediction_type='flow_prediction', flow_shift=shift)``;
  * ``unipc_flow_schedule(variant='original')``: Wan2.1's ``FlowUniPCMultistepScheduler(shift=1)``
    followed by ``set_timesteps(num_steps, shift=shift)`` (what ``wan/text2video.py`` does);
  * ``euler_flow_schedule``: diffusers ``FlowMatchEulerDiscreteScheduler(shift=shift)``.

Tables are static per run, so they are built on the host in float64 NumPy and rounded once at the
end, exactly where the references round; ``sigmas`` is float32 because that is the precision the
reference solvers consume it at.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import NamedTuple

import numpy as np

UNIPC_VARIANTS = ("diffusers", "original")

# diffusers nudges a first sigma of exactly 1 down by this much: at sigma = 1 the flow path's
# alpha = 1 - sigma is 0 and UniPC's log-SNR would be -inf.
_DIFFUSERS_SIGMA_ONE_EPS = 1e-6


class FlowSchedule(NamedTuple):
  """A sampling schedule: where each step starts (``timesteps``, ``sigmas[:-1]``) and ends.

  Attributes:
    sigmas: float32 [num_steps + 1], decreasing, ``sigmas[-1] == 0``.
    timesteps: [num_steps], the value the DiT is conditioned on at each step: int64 (sigma * 1000
      truncated) for the UniPC schedules, float32 (sigma * 1000) for the Euler schedule.
  """

  sigmas: np.ndarray
  timesteps: np.ndarray

  @property
  def num_steps(self) -> int:
    return int(self.timesteps.shape[0])


def check_num_steps(num_steps: int) -> int:
  """``num_steps`` as an int >= 1, or a clear error."""
  if isinstance(num_steps, bool):
    raise TypeError(f"num_steps must be an int >= 1; got the bool {num_steps!r}")
  try:
    steps = operator.index(num_steps)
  except TypeError:
    raise TypeError(f"num_steps must be an int >= 1; got {num_steps!r} "
                    f"({type(num_steps).__name__})") from None
  if steps < 1:
    raise ValueError(f"num_steps must be >= 1; got {steps}")
  return steps


def check_shift(shift: float) -> float:
  """``shift`` as a finite float > 0, or a clear error (shift <= 0 folds sigmas outside [0, 1])."""
  if isinstance(shift, bool) or not isinstance(shift, numbers.Real):
    raise TypeError(f"shift must be a real number > 0; got {shift!r} ({type(shift).__name__})")
  if not math.isfinite(shift) or shift <= 0:
    raise ValueError(f"shift must be finite and > 0; got {shift!r}")
  return shift


def _check_num_train_timesteps(num_train_timesteps: int) -> int:
  if isinstance(num_train_timesteps, bool):
    raise TypeError(f"num_train_timesteps must be an int >= 2; got {num_train_timesteps!r}")
  value = operator.index(num_train_timesteps)
  if value < 2:
    raise ValueError(f"num_train_timesteps must be >= 2; got {value}")
  return value


def shift_sigmas(sigmas, shift: float):
  """Wan's timestep shift ``shift * sigma / (1 + (shift - 1) * sigma)``; maps [0, 1] onto itself.

  Works on floats and NumPy / JAX arrays; the operation order is the references' so float64 host
  tables come out bit-identical to theirs. ``shift > 1`` spends more steps at high noise.
  """
  shift = check_shift(shift)
  return shift * sigmas / (1 + (shift - 1) * sigmas)


def _finish(sigmas: np.ndarray, num_train_timesteps: int) -> FlowSchedule:
  """Append the final sigma 0 and derive int timesteps, both from the float64 sigmas (as the refs do)."""
  # float64 -> int64 truncates towards zero, as torch's `.to(torch.int64)` does.
  timesteps = (sigmas * num_train_timesteps).astype(np.int64)
  sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
  return FlowSchedule(sigmas=sigmas, timesteps=timesteps)


def unipc_flow_schedule(num_steps: int, shift: float, *, num_train_timesteps: int = 1000,
                        variant: str = "diffusers") -> FlowSchedule:
  """Sigma / int-timestep table of Wan's UniPC sampler.

  Args:
    num_steps: number of solver steps (model evaluations per guidance branch), >= 1.
    shift: timestep shift, > 0 (Wan T2V: 5.0; diffusers' Wan configs: 3.0 at 480p).
    num_train_timesteps: the training timestep range T (1000 for Wan).
    variant: 'diffusers': ``sigmas = shift(linspace(1, 1/T, num_steps + 1)[:-1])`` with a first
      sigma of 1 nudged to 1 - 1e-6; 'original' (Wan2.1 repository): ``sigmas =
      shift(linspace(s_max, 0, num_steps + 1)[:-1])`` with s_max = float32(1 - 1/T) = 0.99900001
      (the original reads it back from a float32 tensor).

  Returns:
    FlowSchedule with float32 sigmas [num_steps + 1] (last 0) and int64 timesteps
    ``trunc(sigma * T)`` [num_steps].
  """
  steps = check_num_steps(num_steps)
  shift = check_shift(shift)
  train_steps = _check_num_train_timesteps(num_train_timesteps)
  if variant == "diffusers":
    sigmas = np.linspace(1, 1 / train_steps, steps + 1)[:-1]
    sigmas = shift_sigmas(sigmas, shift)
    if np.fabs(sigmas[0] - 1) < _DIFFUSERS_SIGMA_ONE_EPS:
      sigmas[0] -= _DIFFUSERS_SIGMA_ONE_EPS
  elif variant == "original":
    # The original's training grid: 1 - linspace(1, 1/T, T)[::-1] stored as float32; sampling
    # spans its first (max) to last (min = 0) entry as Python floats.
    train_sigmas = (1.0 - np.linspace(1, 1 / train_steps, train_steps)[::-1]).astype(np.float32)
    sigma_max, sigma_min = float(train_sigmas[0]), float(train_sigmas[-1])
    sigmas = np.linspace(sigma_max, sigma_min, steps + 1)[:-1]
    sigmas = shift_sigmas(sigmas, shift)
  else:
    raise ValueError(f"unknown UniPC schedule variant {variant!r}; choose one of {UNIPC_VARIANTS}")
  return _finish(sigmas, train_steps)


def euler_flow_schedule(num_steps: int, shift: float, *,
                        num_train_timesteps: int = 1000) -> FlowSchedule:
  """Sigma / timestep table of diffusers' ``FlowMatchEulerDiscreteScheduler(shift=shift)``.

  That scheduler builds its own grid: its constructor shifts the float32 training grid
  ``linspace(1, T, T) / T`` once, and ``set_timesteps`` spans that shifted grid's max (1) and min
  (shift(1/T)) linearly and shifts again, so the end point is shifted twice. Timesteps are the
  float32 ``sigma * T`` (not truncated to int).

  Returns:
    FlowSchedule with float32 sigmas [num_steps + 1] (first 1, last 0) and float32 timesteps.
  """
  steps = check_num_steps(num_steps)
  shift = check_shift(shift)
  train_steps = _check_num_train_timesteps(num_train_timesteps)
  # Constructor: float32 arithmetic throughout (torch rounds the Python scalars to float32).
  train_grid = np.linspace(1, train_steps, train_steps, dtype=np.float32)[::-1] / np.float32(train_steps)
  train_grid = (np.float32(shift) * train_grid) / (np.float32(1) + np.float32(shift - 1) * train_grid)
  sigma_max, sigma_min = float(train_grid[0]), float(train_grid[-1])
  # set_timesteps: float64 on the host, rounded to float32 once.
  sigmas = np.linspace(sigma_max * train_steps, sigma_min * train_steps, steps) / train_steps
  sigmas = shift_sigmas(sigmas, shift).astype(np.float32)
  timesteps = sigmas * np.float32(train_steps)
  sigmas = np.concatenate([sigmas, np.zeros(1, np.float32)])
  return FlowSchedule(sigmas=sigmas, timesteps=timesteps)
