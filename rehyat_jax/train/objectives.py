"""Losses of the two stages, as pure functions of (trainable, frozen, batch).

Stage 1 (method.md §5): per converted block, mean |softmax(q,k,v) - hybrid(q,k,v)|; the reported
loss is the mean over converted blocks. Stage 2: Wan's flow matching, x_t = (1-s) x0 + s eps,
target eps - x0, s from the shifted uniform distribution, MSE.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rehyat_jax.sampling.schedules import shift_sigmas

NUM_TRAIN_TIMESTEPS = 1000


def sample_sigmas(rng: jax.Array, batch: int, shift: float) -> jax.Array:
  """Shifted sigma in (0, 1): u ~ U(0, 1), s = shift u / (1 + (shift - 1) u)."""
  u = jax.random.uniform(rng, (batch,), jnp.float32, minval=1e-3, maxval=1.0)
  return shift_sigmas(u, shift)


def noised(x0: jax.Array, noise: jax.Array, sigma: jax.Array) -> jax.Array:
  s = sigma.reshape(-1, *([1] * (x0.ndim - 1)))
  return (1.0 - s) * x0 + s * noise


def distill_loss(trainable, frozen, graphdef, batch, converted: tuple[bool, ...]):
  """(loss, aux) for stage 1; batch holds x_t [B,C,F,H,W], timesteps [B], text [B,L,D]."""
  model = nnx.merge(graphdef, trainable, frozen)
  flow, stats = model.distill_forward(batch["x_t"], batch["timesteps"], batch["text"])
  mask = jnp.asarray(converted, jnp.float32)[:, None]
  loss = jnp.sum(stats["l1"] * mask) / (jnp.sum(mask) * stats["l1"].shape[1])
  return loss, {"block_l1": stats["l1"], "block_teacher_abs": stats["teacher_abs"], "flow": flow}


def zero_phi(trainable):
  """phi == 0 (the chunk-local-softmax baseline): every PhiParam leaf set to zero."""
  return jax.tree_util.tree_map(jnp.zeros_like, trainable)


def flow_matching_loss(trainable, frozen, graphdef, batch):
  """(loss, aux) for stage 2; batch holds x0 latents, noise, sigmas, text."""
  model = nnx.merge(graphdef, trainable, frozen)
  x_t = noised(batch["latents"], batch["noise"], batch["sigmas"])
  pred = model(x_t, batch["sigmas"] * NUM_TRAIN_TIMESTEPS, batch["text"])
  target = batch["noise"] - batch["latents"]
  loss = jnp.mean(jnp.square(pred.astype(jnp.float32) - target))
  return loss, {}
