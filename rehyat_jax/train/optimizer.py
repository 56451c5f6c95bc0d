"""Optax AdamW with linear warmup and cosine decay, global-norm clipping and gradient accumulation,
behind ``optax.apply_if_finite``: a non-finite gradient leaves parameters and optimizer state as they
were (the skip is counted in the state; the loop stops the run after ``train.max_nonfinite_steps`` in
a row)."""

from __future__ import annotations

import optax

# apply_if_finite applies updates again after this many non-finite ones in a row: in effect never.
NEVER_APPLY_NONFINITE = 2**30


def learning_rate_schedule(optim_cfg, total_steps: int) -> optax.Schedule:
  peak = optim_cfg.learning_rate
  warmup = min(int(optim_cfg.warmup_steps), max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1),
      end_value=peak * optim_cfg.end_learning_rate_factor)


def make_optimizer(optim_cfg, total_steps: int) -> optax.GradientTransformation:
  """``total_steps`` counts optimizer updates; with accumulation every k micro-steps make one."""
  tx = optax.chain(
      optax.clip_by_global_norm(optim_cfg.clip_norm) if optim_cfg.clip_norm > 0 else optax.identity(),
      optax.adamw(learning_rate_schedule(optim_cfg, total_steps), b1=optim_cfg.b1, b2=optim_cfg.b2,
                  weight_decay=optim_cfg.weight_decay),
  )
  if optim_cfg.grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=int(optim_cfg.grad_accum_steps))
  # Outermost, so that a non-finite micro-batch is dropped before it reaches the accumulated gradient.
  # Stopping after too many in a row is the loop's decision, not the optimizer's.
  return optax.apply_if_finite(tx, max_consecutive_errors=NEVER_APPLY_NONFINITE)


def nonfinite_counts(opt_state) -> tuple:
  """(consecutive, total) non-finite updates skipped so far, from ``make_optimizer``'s state."""
  return opt_state.notfinite_count, opt_state.total_notfinite
