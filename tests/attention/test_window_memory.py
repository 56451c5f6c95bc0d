"""Stage-1 gradients (phi only; q, k, v frozen) through the fused window kernel never hold the
window scores: the linear branch's cotangents are row-wise, and the unused dq/dk/dv part of the
backward is dead code. Measured with compiled.memory_analysis(), not assumed."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybrid_cases import KERNEL_SETTINGS, XLA_WINDOW
from rehyat_jax.attention import parallel_hybrid_attention
from rehyat_jax.attention.window import WindowKernelConfig

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
