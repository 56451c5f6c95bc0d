"""The public chunk step: driven by hand chunk by chunk it reproduces the reference, and its
state holds exactly what docs/method.md §4 says (KV over the frames that left, the last To frames)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybrid_cases import XLA_WINDOW, Case, apply_phi, feature_map, jit_fast, qkv, relative_error
from rehyat_jax.attention import WINDOW_BACKENDS, hybrid_attention, init_recurrent_state, recurrent_chunk_step
from rehyat_jax.attention.numerics import clamp_features


def _run_by_hand(case: Case, dtype=jnp.float32, window_backend: str = XLA_WINDOW[0]):
  q, k, v = qkv(case, dtype)
  phi = feature_map(case)
  phi_q, phi_k = apply_phi(phi, q, k)
  hw, tc = case.tokens_per_frame, case.chunk_frames
  state = init_recurrent_state(case.batch, case.heads, case.head_dim, phi.output_dim,
                               tokens_per_frame=hw, overlap_frames=case.overlap_frames,
                               dtype=dtype)
  step = jit_fast(recurrent_chunk_step,
                  static_argnames=("tokens_per_frame", "window_backend"))
  outs = []
  for start in range(0, case.num_tokens, tc * hw):
    chunk = tuple(x[:, start:start + tc * hw] for x in (q, k, v, phi_q, phi_k))
    state, out = step(state, *chunk, tokens_per_frame=hw, window_backend=window_backend)
    outs.append(out)
  return (q, k, v, phi_q, phi_k), state, jnp.concatenate(outs, axis=1)


# Forward only here, so each backend once (its default backward).
@pytest.mark.parametrize("window_backend", list(WINDOW_BACKENDS))
@pytest.mark.parametrize("frames,chunk_frames,overlap_frames",
                         [(7, 3, 1), (7, 2, 3), (6, 3, 0), (2, 4, 2)])
def test_hand_driven_steps_match_reference_and_state(frames, chunk_frames, overlap_frames, window_backend):
  case = Case(batch=2, frames=frames, tokens_per_frame=2, heads=2, head_dim=4,
              chunk_frames=chunk_frames, overlap_frames=overlap_frames, causal=True, seed=21)
  (q, k, v, phi_q, phi_k), state, out = _run_by_hand(case, window_backend=window_backend)
  expected = jit_fast(lambda *xs: hybrid_attention(*xs, causal=True, form="reference",
                                                   **case.chunking))(q, k, v, phi_q, phi_k)
  assert relative_error(out, expected) <= 1e-5

  # After the last chunk, every frame before the final window [F - To, F) has left it.
  hw = case.tokens_per_frame
  left = max(frames - overlap_frames, 0) * hw
  phi_left = np.asarray(clamp_features(phi_k[:, :left]), np.float64)
  v_left = np.asarray(v[:, :left], np.float64)
  np.testing.assert_allclose(state.kv, np.einsum("bnhp,bnhd->bhpd", phi_left, v_left),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(state.z, phi_left.sum(1), rtol=1e-5, atol=1e-6)
  # The cache holds the To frames [F - To, F), invalid slots before the video start.
  cached = overlap_frames * hw
  valid = np.arange(frames * hw - cached, frames * hw) >= 0
  np.testing.assert_array_equal(state.overlap_valid, valid)
  np.testing.assert_array_equal(state.overlap_k[:, cached - valid.sum():],
                                k[:, frames * hw - valid.sum():])


def test_state_dtypes_are_stable_in_bf16():
  case = Case(batch=1, frames=5, tokens_per_frame=2, heads=2, head_dim=4, chunk_frames=2,
              overlap_frames=1, causal=True, seed=2)
  _, state, out = _run_by_hand(case, jnp.bfloat16)
  fresh = init_recurrent_state(1, 2, 4, state.kv.shape[2], tokens_per_frame=2, overlap_frames=1,
                               dtype=jnp.bfloat16)
  assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == jax.tree.map(
      lambda x: (x.shape, x.dtype), fresh)
  assert out.dtype == jnp.bfloat16 and state.kv.dtype == jnp.float32
