"""Every form of the hybrid at Wan's head dims (64, 128; the other tests use tiny ones) against the
independent float64 implementation (tests/numpy_hybrid.py), on few tokens so that it stays cheap."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import numpy_hybrid
from rehyat_jax.attention import hybrid_attention

FRAMES, TOKENS_PER_FRAME, HEADS = 5, 3, 2
CHUNK_FRAMES, OVERLAP_FRAMES = 2, 1
FEATURE_DIM = 16
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("form,causal", [("reference", True), ("parallel", True), ("recurrent", True),
                                         ("reference", False), ("parallel", False)])
def test_forms_match_float64_at_wan_head_dims(head_dim, form, causal):
  rng = np.random.default_rng(head_dim)
  shape = (1, FRAMES * TOKENS_PER_FRAME, HEADS, head_dim)
  # Scores of order 1 as in a trained model (unit-variance q, k would give scores ~ sqrt(D)).
  q, k = (rng.standard_normal(shape).astype(np.float32) * head_dim ** -0.25 for _ in range(2))
  v = rng.standard_normal(shape).astype(np.float32)
  # Features of the size a trained map reaches, so the linear branch carries a real share of every row.
  phi_q, phi_k = (rng.uniform(0.0, 0.7, (*shape[:3], FEATURE_DIM)).astype(np.float32) for _ in range(2))
  geometry = dict(tokens_per_frame=TOKENS_PER_FRAME, chunk_frames=CHUNK_FRAMES, overlap_frames=OVERLAP_FRAMES,
                  causal=causal)
  expected = numpy_hybrid.hybrid_parts(q, k, v, phi_q, phi_k, **geometry)
  # The linear branch carries weight here, so a form that dropped or mis-scaled it would fail.
  assert np.abs(expected["lin_num"]).max() > 0.2 * np.abs(expected["a_s"]).max()
  run = jax.jit(lambda *args: hybrid_attention(*args, form=form, **geometry), compiler_options=FAST_COMPILE)
  y = np.asarray(run(q, k, v, phi_q, phi_k), np.float64)
  scale = np.abs(expected["y"]).max()
  np.testing.assert_allclose(y, expected["y"], rtol=0, atol=2e-5 * scale)
