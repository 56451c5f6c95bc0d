"""Stage-1 gradients (phi only; q, k, v frozen) through the fused window kernel never hold the
window scores: the linear branch's cotangents are row-wise, and the unused dq/dk/dv part of the
backward is dead code. Measured with compiled.memory_analysis(), not assumed. And the kernels'
backward does not keep lin_num alive."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybrid_cases import KERNEL_SETTINGS, XLA_WINDOW
from rehyat_jax.attention import parallel_hybrid_attention
from rehyat_jax.attention.window import WindowBand, WindowKernelConfig, window_attention

BATCH, FRAMES, HW, HEADS, HEAD_DIM, PHI_DIM, TC, TO = 1, 9, 64, 2, 16, 8, 3, 1


def _phi_only_grad_temp_bytes(window_backend: str, window_backward: str) -> int:
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal((BATCH, FRAMES * HW, HEADS, HEAD_DIM)), jnp.float32)
             for _ in range(3))
  weights = jnp.asarray(0.1 * rng.standard_normal((HEAD_DIM, PHI_DIM)), jnp.float32)
  frozen = jax.lax.stop_gradient
  kernel = WindowKernelConfig(block_q=64, block_k=64)

  def loss(w):
    phi = lambda x: jnp.einsum("bnhd,dp->bnhp", x, w)
    out = parallel_hybrid_attention(frozen(q), frozen(k), frozen(v), phi(q), phi(k),
                                    tokens_per_frame=HW, chunk_frames=TC, overlap_frames=TO,
                                    causal=True, window_backend=window_backend,
                                    window_backward=window_backward, kernel_config=kernel)
    return jnp.sum(jnp.abs(out))

  compiled = jax.jit(jax.grad(loss)).lower(weights).compile()
  return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("window_backend,window_backward", KERNEL_SETTINGS)
def test_phi_only_gradient_does_not_hold_scores(window_backend, window_backward):
  chunks = -(-FRAMES // TC)
  scores_bytes = BATCH * chunks * HEADS * (TC * HW) * ((TC + TO) * HW) * 4
  xla = _phi_only_grad_temp_bytes(*XLA_WINDOW)
  fused = _phi_only_grad_temp_bytes(window_backend, window_backward)
  print(f"phi-only grad temp: xla {xla:,} B, {window_backend}/{window_backward} {fused:,} B; "
        f"window scores {scores_bytes:,} B")
  assert xla > scores_bytes  # the XLA path does materialise them
  assert fused < scores_bytes


@pytest.mark.parametrize("window_backend,window_backward", KERNEL_SETTINGS)
def test_kernel_backward_does_not_keep_lin_num(window_backend, window_backward):
  """lin_num ([B, Tq, H, D] float32, the largest input) is not a residual of the kernels' custom_vjp:
  no backward needs it (fused.py). bf16 q, k, v make it the only float32 array of that shape."""
  rng = np.random.default_rng(1)
  shape = (BATCH, FRAMES * HW, HEADS, HEAD_DIM)
  q, k, v = (jnp.asarray(rng.standard_normal(shape), jnp.bfloat16) for _ in range(3))
  lin_num = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  lin_den = jnp.asarray(rng.uniform(0, 1, shape[:3]), jnp.float32)
  band = WindowBand(HW, TC, TO)
  window = lambda *x: window_attention(*x, band, window_backend=window_backend, window_backward=window_backward,
                                       kernel_config=WindowKernelConfig(block_q=64, block_k=64))
  _, vjp = jax.vjp(window, q, k, v, lin_num, lin_den)
  kept = [(x.shape, x.dtype) for x in jax.tree.leaves(vjp) if hasattr(x, "shape")]
  assert (shape, jnp.dtype(jnp.bfloat16)) in kept  # the residuals are visible here (q, k, v, out)
  assert (shape, jnp.dtype(jnp.float32)) not in kept
