"""The jitted train step (one per stage) and the stage-1 baseline evaluation, with explicit
shardings and a donated state so that nothing recompiles after step 0."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from rehyat_jax.train import objectives
from rehyat_jax.train.setup import TrainState


def _apply(state: TrainState, grads, tx, ema_decay: float) -> TrainState:
  updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
  trainable = optax.apply_updates(state.trainable, updates)
  ema = state.ema
  if ema_decay > 0:
    ema = jax.tree_util.tree_map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state.ema, trainable)
  return TrainState(state.step + 1, trainable, opt_state, ema)


def prepare_batch(batch: dict, rng: jax.Array, shift: float) -> dict:
  """Inputs for a forward: x_t from clean latents (noise and shifted sigma drawn from ``rng``),
  or the given x_t (teacher trajectories)."""
  if "x_t" in batch:
    return batch
  x0 = batch["latents"]
  noise_key, sigma_key = jax.random.split(rng)
  noise = jax.random.normal(noise_key, x0.shape, jnp.float32)
  sigmas = objectives.sample_sigmas(sigma_key, x0.shape[0], shift)
  return {"latents": x0, "noise": noise, "sigmas": sigmas, "text": batch["text"],
          "x_t": objectives.noised(x0, noise, sigmas), "timesteps": sigmas * objectives.NUM_TRAIN_TIMESTEPS}


def make_train_step(stage: str, graphdef, tx, converted, *, shift: float, ema_decay: float, seed: int,
                    state_shardings, frozen_shardings, batch_shardings, replicated):
  """jit(step)(state, frozen, batch) -> (state, metrics, flow or None)."""
  base_key = jax.random.key(seed)

  def step(state: TrainState, frozen, batch):
    inputs = prepare_batch(batch, jax.random.fold_in(base_key, state.step), shift)
    if stage == "distill":
      loss_fn = functools.partial(objectives.distill_loss, graphdef=graphdef, batch=inputs, converted=converted)
    else:
      loss_fn = functools.partial(objectives.flow_matching_loss, graphdef=graphdef, batch=inputs)
    (loss, aux), grads = jax.value_and_grad(lambda p: loss_fn(p, frozen), has_aux=True)(state.trainable)
    new_state = _apply(state, grads, tx, ema_decay)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "timesteps": inputs["timesteps"]}
    if stage == "distill":
      metrics.update(block_l1=aux["block_l1"], block_teacher_abs=aux["block_teacher_abs"])
      return new_state, metrics, aux["flow"]
    return new_state, metrics, None

  flow_sharding = batch_shardings.get("x_t", batch_shardings.get("latents"))
  return jax.jit(step, in_shardings=(state_shardings, frozen_shardings, batch_shardings),
                 out_shardings=(state_shardings, replicated, flow_sharding if stage == "distill" else None),
                 donate_argnums=(0,))


def make_baseline_eval(graphdef, converted, *, shift: float, seed: int, replicated):
  """jit(eval)(trainable, frozen, batch, step) -> per-block l1 [L, B] with phi == 0 (chunk-local softmax),
  replicated so every process can read it."""
  base_key = jax.random.key(seed)

  def evaluate(trainable, frozen, batch, step):
    inputs = prepare_batch(batch, jax.random.fold_in(base_key, step), shift)
    _, aux = objectives.distill_loss(objectives.zero_phi(trainable), frozen, graphdef, inputs, converted)
    return aux["block_l1"]

  return jax.jit(evaluate, out_shardings=replicated)
