"""Form "recurrent": chunk-wise recurrent ReHyAt (docs/method.md §4), one chunk step and
``lax.scan`` over chunks.

``recurrent_chunk_step`` is the single building block: ``recurrent_hybrid_attention`` here and
the whole-model recurrent DiT both call it. Static-shape design: the softmax window buffer is
[overlap cache (To frames) ; chunk (Tc frames)], slot w of chunk t holding frame t*Tc - To + w.
After the softmax

- the first Tc frames of the buffer are the frames that LEAVE the softmax window,
  [t*Tc - To, (t+1)*Tc - To); their valid ones (frame >= 0) go into KV and z. That is exactly
  §4's [max(t*Tc - To, 0), max((t+1)*Tc - To, 0)), so nothing is counted twice;
- the last To frames of the buffer become the new cache, [(t+1)*Tc - To, (t+1)*Tc), with their
  validity carried along (slots before the video start stay invalid).

This holds for To > Tc (the cache then spans several chunks), for To = 0 (zero-size caches)
and for a shorter last chunk (the same step with fewer tokens). Causal only.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rehyat_jax.attention.geometry import validate_hybrid_inputs, validate_qkv_phi
from rehyat_jax.attention.numerics import clamp_features, feature_einsum
from rehyat_jax.attention.window import WindowBand, WindowKernelConfig, window_attention



class RecurrentState(NamedTuple):
  """Carry of one causal ReHyAt layer between chunks (a pytree).

  kv:            float32 [B, H, D', D]   sum over L of phi_k v^T
  z:             float32 [B, H, D']      sum over L of phi_k
  overlap_k:     [B, To*HW, H, D]        K of the To frames before the next chunk
  overlap_v:     [B, To*HW, H, D]        V of those frames
  overlap_phi_k: [B, To*HW, H, D']       phi_k of those frames (they enter KV when they leave)
  overlap_valid: bool [To*HW]            False for slots before the video start
  """

  kv: jax.Array
  z: jax.Array
  overlap_k: jax.Array
  overlap_v: jax.Array
  overlap_phi_k: jax.Array
  overlap_valid: jax.Array


def init_recurrent_state(batch: int, num_heads: int, head_dim: int, phi_dim: int, *,
                         tokens_per_frame: int, overlap_frames: int,
                         dtype: jnp.dtype = jnp.float32,
                         phi_dtype: jnp.dtype = jnp.float32) -> RecurrentState:
  """State before chunk 0: empty linear sums and an all-invalid overlap cache.

  ``dtype`` is the dtype of the cached K/V (that of k, v); ``phi_dtype`` that of cached phi_k.
  """
  if overlap_frames < 0:
    raise ValueError(f"overlap_frames must be an int >= 0, got {overlap_frames!r}")
  if tokens_per_frame < 1:
    raise ValueError(f"tokens_per_frame must be a positive int, got {tokens_per_frame!r}")
  cached = overlap_frames * tokens_per_frame
  return RecurrentState(
      kv=jnp.zeros((batch, num_heads, phi_dim, head_dim), jnp.float32),
      z=jnp.zeros((batch, num_heads, phi_dim), jnp.float32),
      overlap_k=jnp.zeros((batch, cached, num_heads, head_dim), dtype),
      overlap_v=jnp.zeros((batch, cached, num_heads, head_dim), dtype),
      overlap_phi_k=jnp.zeros((batch, cached, num_heads, phi_dim), phi_dtype),
      overlap_valid=jnp.zeros((cached,), jnp.bool_),
  )


def recurrent_chunk_step(state: RecurrentState, q: jax.Array, k: jax.Array, v: jax.Array,
                         phi_q: jax.Array, phi_k: jax.Array, *, tokens_per_frame: int,
                         window_backend: str = "auto", window_backward: str = "auto",
                         kernel_config: WindowKernelConfig = WindowKernelConfig()
                         ) -> tuple[RecurrentState, jax.Array]:
  """One chunk of causal ReHyAt. q, k, v [B, Tc*HW, H, D], phi [B, Tc*HW, H, D'], any Tc >= 1.

  The softmax window [cache ; chunk] and the joint normalisation run through
  ``window.window_attention`` with ``window_backend`` ('auto': ``resolve_window_backend``) and
  ``window_backward``.

  Returns (state after the chunk, output [B, Tc*HW, H, D] in q.dtype).
  """
  validate_qkv_phi(q, k, v, phi_q, phi_k)
  chunk_tokens, cached = q.shape[1], state.overlap_k.shape[1]
  if chunk_tokens % tokens_per_frame or cached % tokens_per_frame:
    raise ValueError(
        f"chunk length {chunk_tokens} and overlap cache length {cached} must be multiples of "
        f"tokens_per_frame={tokens_per_frame}")
  if state.kv.shape[1:] != (q.shape[2], phi_q.shape[-1], q.shape[-1]):
    raise ValueError(
        f"state kv shape {tuple(state.kv.shape)} does not match [B, H, D', D] of the chunk "
        f"(H={q.shape[2]}, D'={phi_q.shape[-1]}, D={q.shape[-1]})")
  k_buf = jnp.concatenate([state.overlap_k.astype(k.dtype), k], axis=1)
  v_buf = jnp.concatenate([state.overlap_v.astype(v.dtype), v], axis=1)
  phi_k_buf = jnp.concatenate(
      [state.overlap_phi_k.astype(phi_k.dtype), clamp_features(phi_k)], axis=1)
  valid_buf = jnp.concatenate([state.overlap_valid, jnp.ones((chunk_tokens,), jnp.bool_)])

  phi_q = clamp_features(phi_q)
  lin_num = feature_einsum("bqhp,bhpd->bqhd", phi_q, state.kv)
  lin_den = feature_einsum("bqhp,bhp->bqh", phi_q, state.z)
  # Invalid cache slots (before the video start) are always a prefix of the buffer.
  first_valid = cached - jnp.sum(state.overlap_valid, dtype=jnp.int32)
  # One chunk whose window is the whole buffer: k_buf holds the cache's frames before q's first.
  cached_frames = cached // tokens_per_frame
  band = WindowBand(tokens_per_frame, chunk_tokens // tokens_per_frame, cached_frames, cached_frames)
  out = window_attention(q, k_buf, v_buf, lin_num, lin_den, band, first_valid,
                         window_backend=window_backend, window_backward=window_backward,
                         kernel_config=kernel_config)

  leaving = valid_buf[:chunk_tokens][None, :, None, None]
  phi_leaving = jnp.where(leaving, phi_k_buf[:, :chunk_tokens], 0)
  new_state = RecurrentState(
      kv=state.kv + feature_einsum("bnhp,bnhd->bhpd", phi_leaving, v_buf[:, :chunk_tokens]),
      z=state.z + jnp.sum(phi_leaving, axis=1, dtype=jnp.float32),
      overlap_k=k_buf[:, chunk_tokens:].astype(state.overlap_k.dtype),
      overlap_v=v_buf[:, chunk_tokens:].astype(state.overlap_v.dtype),
      overlap_phi_k=phi_k_buf[:, chunk_tokens:].astype(state.overlap_phi_k.dtype),
      overlap_valid=valid_buf[chunk_tokens:],
  )
  return new_state, out


def recurrent_hybrid_attention(q: jax.Array, k: jax.Array, v: jax.Array, phi_q: jax.Array,
                               phi_k: jax.Array, *, tokens_per_frame: int, chunk_frames: int,
                               overlap_frames: int, remat: bool = False,
                               window_backend: str = "auto", window_backward: str = "auto",
                               kernel_config: WindowKernelConfig = WindowKernelConfig()) -> jax.Array:
  """Causal ReHyAt as an RNN over chunks: lax.scan over the full chunks, then one more step
  for a shorter last chunk. Same contract as the reference form with causal=True.
  ``window_backend``, ``window_backward``, ``kernel_config``: the step's window
  (``recurrent_chunk_step``).

  ``remat``: recompute each chunk's softmax in the backward pass (``jax.checkpoint`` on the
  step), so training memory stays one chunk's whatever the length; off, the scan keeps every
  chunk's probabilities for the backward pass (faster, memory grows with the length).
  """
  geometry = validate_hybrid_inputs(q, k, v, phi_q, phi_k, tokens_per_frame=tokens_per_frame,
                                    chunk_frames=chunk_frames, overlap_frames=overlap_frames)
  b, _, h, d = q.shape
  state = init_recurrent_state(b, h, d, phi_q.shape[-1], tokens_per_frame=tokens_per_frame,
                               overlap_frames=overlap_frames, dtype=k.dtype, phi_dtype=phi_k.dtype)
  step = lambda carry, chunk: recurrent_chunk_step(carry, *chunk,
                                                   tokens_per_frame=tokens_per_frame,
                                                   window_backend=window_backend,
                                                   window_backward=window_backward,
                                                   kernel_config=kernel_config)
  if remat:
    step = jax.checkpoint(step)
  chunk_tokens = chunk_frames * tokens_per_frame
  full_tokens = geometry.num_full_chunks * chunk_tokens
  inputs = (q, k, v, phi_q, phi_k)
  outputs = []
  if geometry.num_full_chunks:
    def chunk_major(x: jax.Array) -> jax.Array:
      x = x[:, :full_tokens].reshape(b, geometry.num_full_chunks, chunk_tokens, *x.shape[2:])
      return jnp.swapaxes(x, 0, 1)
    state, chunk_outs = jax.lax.scan(step, state, tuple(chunk_major(x) for x in inputs))
    outputs.append(jnp.swapaxes(chunk_outs, 0, 1).reshape(b, full_tokens, h, d))
  if geometry.remainder_frames:
    _, last_out = step(state, tuple(x[:, full_tokens:] for x in inputs))
    outputs.append(last_out)
  return jnp.concatenate(outputs, axis=1) if len(outputs) > 1 else outputs[0]
