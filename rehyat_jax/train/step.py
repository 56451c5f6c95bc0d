"""The jitted train step of any stage, with explicit shardings and a donated state so that
nothing recompiles after step 0.

A step whose loss or gradient is not finite changes no parameter, optimizer moment or EMA (the
optimizer is behind ``optax.apply_if_finite``; a non-finite loss poisons the gradient it sees); it
reports ``skipped`` and the optimizer's counts of such steps, consecutive and in total.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from rehyat_jax.train.objectives import prepare_batch
from rehyat_jax.train.optimizer import nonfinite_counts
from rehyat_jax.train.setup import TrainState
from rehyat_jax.train.stages import Stage


def _apply(state: TrainState, grads, tx, ema_decay: float) -> tuple[TrainState, jax.Array]:
  """(the updated state, whether the update was skipped as non-finite)."""
  updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
  skipped = nonfinite_counts(opt_state)[0] > 0
  trainable = optax.apply_updates(state.trainable, updates)  # zero updates when skipped
  ema = state.ema
  if ema_decay > 0:
    decayed = jax.tree_util.tree_map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state.ema, trainable)
    ema = jax.tree_util.tree_map(lambda old, new: jnp.where(skipped, old, new), state.ema, decayed)
  return TrainState(state.step + 1, trainable, opt_state, ema), skipped


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
    # apply_if_finite looks at the gradient only: a non-finite loss makes it non-finite too.
    grads = jax.tree_util.tree_map(lambda g: jnp.where(jnp.isfinite(loss), g, jnp.nan), grads)
    extra, feedback = stage.step_outputs(aux)
    grad_norm = optax.tree.norm(grads)
    state, skipped = _apply(state, grads, tx, ema_decay)
    in_a_row, total = nonfinite_counts(state.opt_state)
    metrics = {"loss": loss, "grad_norm": grad_norm, "timesteps": inputs["timesteps"], "skipped": skipped,
               "nonfinite_in_a_row": in_a_row, "nonfinite_total": total, **extra}
    return state, metrics, feedback

  return jax.jit(step, in_shardings=(state_shardings, frozen_shardings, batch_shardings),
                 out_shardings=(state_shardings, replicated, feedback_sharding), donate_argnums=(0,))
