"""The jitted train step of any stage, with explicit shardings and a donated state so that
nothing recompiles after step 0."""

from __future__ import annotations

import jax
import optax

from rehyat_jax.train.objectives import prepare_batch
from rehyat_jax.train.setup import TrainState
from rehyat_jax.train.stages import Stage


def _apply(state: TrainState, grads, tx, ema_decay: float) -> TrainState:
  updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
  trainable = optax.apply_updates(state.trainable, updates)
  ema = state.ema
  if ema_decay > 0:
    ema = jax.tree_util.tree_map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state.ema, trainable)
  return TrainState(state.step + 1, trainable, opt_state, ema)


def make_prepare(shift: float, seed: int):
  """(batch, step) -> model inputs; the noise of step n is drawn from fold_in(key(seed), n)."""
  base_key = jax.random.key(seed)
  return lambda batch, step: prepare_batch(batch, jax.random.fold_in(base_key, step), shift)


def make_train_step(stage: Stage, graphdef, tx, converted, *, shift: float, ema_decay: float, seed: int,
                    state_shardings, frozen_shardings, batch_shardings, replicated, feedback_sharding=None):
  """jit(step)(state, frozen, batch) -> (state, metrics, the stage's feedback for the input stream)."""
  prepare = make_prepare(shift, seed)

  def step(state: TrainState, frozen, batch):
    inputs = prepare(batch, state.step)
    loss_fn = lambda trainable: stage.loss(trainable, frozen, graphdef, inputs, converted)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.trainable)
    extra, feedback = stage.step_outputs(aux)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "timesteps": inputs["timesteps"], **extra}
    return _apply(state, grads, tx, ema_decay), metrics, feedback

  return jax.jit(step, in_shardings=(state_shardings, frozen_shardings, batch_shardings),
                 out_shardings=(state_shardings, replicated, feedback_sharding), donate_argnums=(0,))
