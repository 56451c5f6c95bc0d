"""Bad arguments raise ValueError with a message naming the problem."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from rehyat_jax.attention import FORMS, WINDOW_BACKENDS, hybrid_attention, init_recurrent_state, recurrent_chunk_step
from rehyat_jax.attention.window import window_backward_names
from rehyat_jax.attention.parallel import parallel_hybrid_attention

B, N, H, D, DP = 1, 12, 2, 4, 6


def _inputs(n: int = N, phi_dim: int = DP):
  x = jnp.ones((B, n, H, D))
  phi = jnp.ones((B, n, H, phi_dim))
  return x, x, x, phi, phi


def _call(*args, tokens_per_frame=3, chunk_frames=2, overlap_frames=1, causal=True,
          form="parallel", **window):
  args = args or _inputs()
  return hybrid_attention(*args, tokens_per_frame=tokens_per_frame, chunk_frames=chunk_frames,
                          overlap_frames=overlap_frames, causal=causal, form=form, **window)


def test_unknown_form():
  with pytest.raises(ValueError, match="unknown hybrid attention form 'flash'"):
    _call(form="flash")


def test_recurrent_is_causal_only():
  with pytest.raises(ValueError, match="form='recurrent' with causal=False"):
    _call(form="recurrent", causal=False)


@pytest.mark.parametrize("form", FORMS)
def test_tokens_not_multiple_of_tokens_per_frame(form):
  with pytest.raises(ValueError, match="N=12 is not a positive multiple of tokens_per_frame=5"):
    _call(tokens_per_frame=5, form=form)


@pytest.mark.parametrize("form", FORMS)
def test_unknown_window_backend(form):
  with pytest.raises(ValueError, match=r"unknown window_backend 'pallas_bwd'; choose one of \('auto', 'xla'"):
    _call(form=form, window_backend="pallas_bwd")


# (backend, a backward some other entry offers but it does not), from the registry.
# 'auto' (each entry's default backward) is valid with every backend.
NOT_OFFERED = [(name, backward) for name, entry in WINDOW_BACKENDS.items() for backward in window_backward_names()
               if backward not in entry.backwards and backward != "auto"]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("backend,backward", NOT_OFFERED)
def test_window_backward_not_offered(form, backend, backward):
  with pytest.raises(ValueError, match=f"window_backward '{backward}' is not offered by window_backend '{backend}'"):
    _call(form=form, window_backend=backend, window_backward=backward)


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


@pytest.mark.parametrize("value", [0, 1.5, True])
def test_window_chunks_per_step(value):
  with pytest.raises(ValueError, match="window_chunks_per_step must be None or >= 1"):
    parallel_hybrid_attention(*_inputs(), tokens_per_frame=3, chunk_frames=2, overlap_frames=1,
                              causal=True, window_chunks_per_step=value)
  with pytest.raises(ValueError, match="window_chunks_per_step must be None or >= 1"):
    _call(window_chunks_per_step=value)


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
