"""Every implementation == reference in float32, forward and gradients w.r.t. q, k, v, the phi
parameters and the phi inputs, over random shapes: parallel (causal and not) and recurrent
(causal) with every window backend and backward of the registry."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from hypothesis import given, settings

from hybrid_cases import (IMPLS, REFERENCE, TEST_KERNEL, WINDOW_SETTINGS, Case, Impl, apply_phi, cases,
                          cotangent, feature_map, hybrid, jit_fast, qkv, relative_error, tree_relative_errors)
from rehyat_jax.attention import (PhiParam, hybrid_attention, parallel_hybrid_attention,
                                  recurrent_hybrid_attention)

TOLERANCE = 1e-5  # float32 round-off: the forms sum the same terms in different orders


def outputs_and_grads(case: Case, impl: Impl):
  """Output, and grads of <output, cotangent> w.r.t. (q, k, v, phi params, phi_q, phi_k)."""
  q, k, v = qkv(case)
  graphdef, phi_params = nnx.split(feature_map(case), PhiParam)
  out_cotangent = cotangent(case)
  zero_phi = np.zeros(q.shape[:3] + (nnx.merge(graphdef, phi_params).output_dim,), np.float32)

  # Adding zero_phi to phi(q), phi(k) makes its gradient the gradient w.r.t. the phi inputs of
  # hybrid_attention, so one backward pass gives every gradient we compare.
  def loss(q, k, v, phi_params, shift_q, shift_k):
    phi = nnx.merge(graphdef, phi_params)
    out = hybrid(impl, q, k, v, phi(q) + shift_q, phi(k) + shift_k, causal=case.causal,
                 **case.chunking)
    return jnp.sum(out * out_cotangent), out

  grad_fn = jit_fast(jax.grad(loss, argnums=tuple(range(6)), has_aux=True))
  grads, out = grad_fn(q, k, v, phi_params, zero_phi, zero_phi)
  return out, grads


@settings(max_examples=25)
@given(cases())
def test_forms_match_reference(case: Case):
  ref_out, ref_grads = outputs_and_grads(case, REFERENCE)
  for impl in IMPLS:
    if impl == REFERENCE or not impl.supports(case.causal):
      continue
    out, grads = outputs_and_grads(case, impl)
    forward_error = relative_error(out, ref_out)
    grad_errors = tree_relative_errors(grads, ref_grads)
    assert forward_error <= TOLERANCE, (str(impl), case, forward_error)
    assert max(grad_errors) <= TOLERANCE, (str(impl), case, grad_errors)


def test_memory_options_match_reference():
  """parallel with window_chunks_per_step (mapped + rematerialised; also as the kernels' "xla"
  backward) under every window setting, and recurrent with remat=True."""
  case = Case(batch=2, frames=8, tokens_per_frame=3, heads=2, head_dim=8, chunk_frames=3,
              overlap_frames=2, causal=True, seed=9)
  q, k, v = qkv(case)
  phi_q, phi_k = apply_phi(feature_map(case), q, k)
  out_cotangent = cotangent(case)

  def value_and_grads(fn):
    loss = lambda *xs: jnp.sum(fn(*xs) * out_cotangent)
    return jit_fast(jax.value_and_grad(loss, argnums=tuple(range(5))))(q, k, v, phi_q, phi_k)

  expected = value_and_grads(functools.partial(hybrid_attention, causal=True, form="reference",
                                               **case.chunking))
  fns = [functools.partial(parallel_hybrid_attention, causal=True, window_chunks_per_step=2,
                           window_backend=backend, window_backward=backward, kernel_config=TEST_KERNEL,
                           **case.chunking) for backend, backward in WINDOW_SETTINGS]
  fns.append(functools.partial(recurrent_hybrid_attention, remat=True, **case.chunking))
  for fn in fns:
    assert max(tree_relative_errors(value_and_grads(fn), expected)) <= TOLERANCE, fn.keywords
