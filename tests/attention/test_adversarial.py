"""No NaN/Inf for finite inputs in any form, forward and gradients: signed phi driving
phi_q . z_L far below -n_S, huge phi, and huge softmax logits."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybrid_cases import (IMPL_CAUSAL, IMPLS, XLA_WINDOW, Case, Impl, hybrid, impl_causal_id, jit_fast, normal,
                          qkv)

CASE = Case(batch=1, frames=7, tokens_per_frame=3, heads=2, head_dim=8, chunk_frames=2,
            overlap_frames=1, causal=True, seed=17)
PHI_DIM = 6


PHI_SHAPE = (CASE.batch, CASE.num_tokens, CASE.heads, PHI_DIM)


def _phi_opposed(scale: float):
  """phi_q = +scale and phi_k = -scale everywhere: phi_q . z_L = -scale^2 * D' * |L|."""
  return np.full(PHI_SHAPE, scale, np.float32), np.full(PHI_SHAPE, -scale, np.float32)


def _phi_random(scale: float):
  return normal(1, PHI_SHAPE, scale), normal(2, PHI_SHAPE, scale)


@functools.cache
def _grad_fn(impl: Impl, causal: bool):
  """One compiled program per implementation, shared by all scenarios (same shapes)."""
  def loss(q, k, v, phi_q, phi_k):
    out = hybrid(impl, q, k, v, phi_q, phi_k, causal=causal, **CASE.chunking)
    return jnp.sum(out), out

  return jit_fast(jax.grad(loss, argnums=tuple(range(5)), has_aux=True))


SCENARIOS = {
    # Just past the guard: phi_q . z_L ~ -n_S.
    "denominator_near_minus_n_s": lambda: (1.0, _phi_opposed(0.3)),
    "denominator_far_below_minus_n_s": lambda: (1.0, _phi_opposed(30.0)),
    "huge_phi": lambda: (1.0, _phi_random(1e30)),
    "huge_opposed_phi": lambda: (1.0, _phi_opposed(1e35)),
    "huge_logits": lambda: (1e4, _phi_random(0.5)),
    "huge_logits_and_phi": lambda: (1e4, _phi_opposed(1e20)),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("impl,causal", IMPL_CAUSAL, ids=impl_causal_id)
def test_output_and_grads_finite(scenario, impl, causal):
  q_scale, (phi_q, phi_k) = SCENARIOS[scenario]()
  q, k, v = qkv(CASE)
  q = np.asarray(q) * np.float32(q_scale)
  grads, out = _grad_fn(impl, causal)(q, k, v, phi_q, phi_k)
  assert np.all(np.isfinite(out)), scenario
  for name, grad in zip(("q", "k", "v", "phi_q", "phi_k"), grads):
    assert np.all(np.isfinite(grad)), (scenario, name)


@pytest.mark.parametrize("impl", [impl for impl in IMPLS if impl.kernel], ids=str)
def test_kernels_match_xla_where_the_guard_is_active(impl):
  """phi_q . z_L far below -n_S on many rows (the floored denominator): the kernels' forward and
  their backward (row-wise linear cotangents, fused dq/dk/dv) take the guard's branch exactly as
  the same form with the XLA window does."""
  q, k, v = qkv(CASE)
  phi_q, phi_k = _phi_opposed(3.0)
  phi_q = phi_q * np.abs(normal(3, PHI_SHAPE))  # vary the margin row by row
  xla = _grad_fn(Impl(impl.form, *XLA_WINDOW), True)(q, k, v, phi_q, phi_k)
  kernel = _grad_fn(impl, True)(q, k, v, phi_q, phi_k)
  for expected, actual in zip(jax.tree.leaves(xla), jax.tree.leaves(kernel)):
    scale = float(np.max(np.abs(expected)))
    assert float(np.max(np.abs(np.asarray(actual) - np.asarray(expected)))) <= 1e-5 * scale
