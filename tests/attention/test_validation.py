"""Bad arguments raise ValueError with a message naming the problem."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from rehyat_jax.attention import hybrid_attention, init_recurrent_state, recurrent_chunk_step
from rehyat_jax.attention.parallel import parallel_hybrid_attention

B, N, H, D, DP = 1, 12, 2, 4, 6


def _inputs(n: int = N, phi_dim: int = DP):
  x = jnp.ones((B, n, H, D))
  phi = jnp.ones((B, n, H, phi_dim))
  return x, x, x, phi, phi


def _call(*args, tokens_per_frame=3, chunk_frames=2, overlap_frames=1, causal=True,
          mode="parallel"):
  args = args or _inputs()
  return hybrid_attention(*args, tokens_per_frame=tokens_per_frame, chunk_frames=chunk_frames,
                          overlap_frames=overlap_frames, causal=causal, mode=mode)


def test_unknown_mode():
  with pytest.raises(ValueError, match="unknown hybrid attention mode 'flash'"):
    _call(mode="flash")


def test_scan_is_causal_only():
  with pytest.raises(ValueError, match="mode='scan' with causal=False"):
    _call(mode="scan", causal=False)


@pytest.mark.parametrize("mode", ["reference", "parallel", "scan"])
def test_tokens_not_multiple_of_tokens_per_frame(mode):
  with pytest.raises(ValueError, match="N=12 is not a positive multiple of tokens_per_frame=5"):
    _call(tokens_per_frame=5, mode=mode)


@pytest.mark.parametrize("value", [0, -1, 1.5])
def test_chunk_frames_below_one(value):
  with pytest.raises(ValueError, match="chunk_frames must be an int >= 1"):
    _call(chunk_frames=value)


@pytest.mark.parametrize("value", [-1, 0.5])
def test_negative_overlap(value):
  with pytest.raises(ValueError, match="overlap_frames must be an int >= 0"):
    _call(overlap_frames=value)


def test_tokens_per_frame_below_one():
  with pytest.raises(ValueError, match="tokens_per_frame must be an int >= 1"):
    _call(tokens_per_frame=0)


def test_qkv_shape_mismatch():
  q, k, v, phi_q, phi_k = _inputs()
  with pytest.raises(ValueError, match="q, k, v shapes must match"):
    _call(q, k[:, :9], v, phi_q, phi_k)


def test_phi_shape_mismatch():
  q, k, v, phi_q, phi_k = _inputs()
  with pytest.raises(ValueError, match="phi_q and phi_k shapes must match"):
    _call(q, k, v, phi_q, phi_k[..., :4])


def test_phi_leading_dims_mismatch():
  q, k, v, _, _ = _inputs()
  _, _, _, phi_q, phi_k = _inputs(n=9)
  with pytest.raises(ValueError, match=r"phi_q/phi_k leading dims \[B, N, H\]"):
    _call(q, k, v, phi_q, phi_k)


def test_wrong_rank():
  q, k, v, phi_q, phi_k = _inputs()
  with pytest.raises(ValueError, match="q must have rank 4"):
    _call(q[0], k, v, phi_q, phi_k)


def test_chunks_per_step():
  with pytest.raises(ValueError, match="chunks_per_step must be None or >= 1"):
    parallel_hybrid_attention(*_inputs(), tokens_per_frame=3, chunk_frames=2, overlap_frames=1,
                              causal=True, chunks_per_step=0)


def test_step_chunk_not_whole_frames():
  state = init_recurrent_state(B, H, D, DP, tokens_per_frame=3, overlap_frames=1)
  with pytest.raises(ValueError, match="chunk length 4 .* multiples of tokens_per_frame=3"):
    recurrent_chunk_step(state, *_inputs(n=4), tokens_per_frame=3)


def test_step_state_mismatch():
  state = init_recurrent_state(B, H, D, DP + 1, tokens_per_frame=3, overlap_frames=1)
  with pytest.raises(ValueError, match="state kv shape .* does not match"):
    recurrent_chunk_step(state, *_inputs(n=6), tokens_per_frame=3)


def test_state_negative_overlap():
  with pytest.raises(ValueError, match="overlap_frames must be an int >= 0"):
    init_recurrent_state(B, H, D, DP, tokens_per_frame=3, overlap_frames=-1)
