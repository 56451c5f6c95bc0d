"""Optax AdamW with linear warmup and cosine decay, global-norm clipping and gradient accumulation."""

from __future__ import annotations

import optax


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
  return tx
