"""Noise math both stages share: shifted sigma sampling and the flow-matching interpolation
(Wan: x_t = (1 - s) x0 + s eps, timesteps = 1000 s). The losses live with their stage (stages/)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rehyat_jax.core import prng
from rehyat_jax.sampling.schedules import shift_sigmas

NUM_TRAIN_TIMESTEPS = 1000


def sample_sigmas(rng: jax.Array, batch: int, shift: float) -> jax.Array:
  """Shifted sigma in (0, 1): u ~ U(0, 1), s = shift u / (1 + (shift - 1) u)."""
  u = jax.random.uniform(rng, (batch,), jnp.float32, minval=1e-3, maxval=1.0)
  return shift_sigmas(u, shift)


def noised(x0: jax.Array, noise: jax.Array, sigma: jax.Array) -> jax.Array:
  s = sigma.reshape(-1, *([1] * (x0.ndim - 1)))
  return (1.0 - s) * x0 + s * noise


def prepare_batch(batch: dict, rng: jax.Array, shift: float) -> dict:
  """Model inputs: x_t from clean latents (noise and shifted sigma drawn from ``rng``), or the
  given x_t (teacher trajectories) as it is."""
  if "x_t" in batch:
    return batch
  x0 = batch["latents"]
  noise_key, sigma_key = jax.random.split(rng)
  noise = prng.normal(noise_key, x0.shape, jnp.float32)  # flat draw: a 5-D one compiles for a minute on CPU
  sigmas = sample_sigmas(sigma_key, x0.shape[0], shift)
  return {"latents": x0, "noise": noise, "sigmas": sigmas, "text": batch["text"],
          "x_t": noised(x0, noise, sigmas), "timesteps": sigmas * NUM_TRAIN_TIMESTEPS}
