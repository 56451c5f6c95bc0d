"""bfloat16 inputs stay close to the float32 result.

Tolerance: BF16_TOLERANCE = 2e-2 relative (max |err| / max |ref|). bfloat16 keeps 8 significant
bits (unit round-off 2^-9 ~ 2e-3): the output is rounded to bf16 once (<= 2e-3), the softmax
probabilities meet v in bf16 (flash-attention style; another few 1e-3 after averaging) and
q, k, v themselves are bf16 inside the score matmul. The observed error is ~6e-3; 2e-2 leaves
a 3x margin while still catching a real precision bug (e.g. sums or statistics kept in bf16).
Gradients (observed ~7e-3) get BF16_GRAD_TOLERANCE = 3e-2: the backward pass rounds the
cotangents and the probabilities to bf16 once more.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from hybrid_cases import (IMPL_CAUSAL, REFERENCE, Case, Impl, apply_phi, cotangent, feature_map, hybrid,
                          impl_causal_id, jit_fast, qkv, relative_error, tree_relative_errors)

BF16_TOLERANCE = 2e-2
BF16_GRAD_TOLERANCE = 3e-2


def _value_and_grads(case: Case, impl: Impl, dtype):
  q, k, v = qkv(case, dtype)
  phi_q, phi_k = apply_phi(feature_map(case), q, k)  # float32 whatever the input dtype
  out_cotangent = cotangent(case)

  def loss(q, k, v):
    out = hybrid(impl, q, k, v, phi_q, phi_k, causal=case.causal, **case.chunking)
    return jnp.sum(out.astype(jnp.float32) * out_cotangent), out

  grads, out = jit_fast(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
  return out, grads


BF16_IMPL_CAUSAL = [(impl, causal) for impl, causal in IMPL_CAUSAL if impl != REFERENCE]


@pytest.mark.parametrize("impl,causal", BF16_IMPL_CAUSAL, ids=impl_causal_id)
def test_bf16_close_to_fp32(impl, causal):
  case = Case(batch=2, frames=9, tokens_per_frame=16, heads=2, head_dim=32, chunk_frames=3,
              overlap_frames=1, causal=causal, seed=11)
  out, grads = _value_and_grads(case, impl, jnp.bfloat16)
  # The float32 reference sees exactly the same (bf16-representable) inputs.
  ref_out, ref_grads = _value_and_grads(case, REFERENCE, jnp.float32)
  assert out.dtype == jnp.bfloat16
  assert relative_error(out, ref_out) <= BF16_TOLERANCE
  assert max(tree_relative_errors(grads, ref_grads)) <= BF16_GRAD_TOLERANCE
