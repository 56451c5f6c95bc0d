"""Chunk-parallel ReHyAt (the training form): nothing N x N is materialised.

Softmax part: every chunk attends to its window [To overlap frames ; Tc chunk frames], built
from static slices so shapes are static; slots before the video start and the padding of a
shorter last chunk are masked. Scores are [B, chunks, H, Tc*HW, (To+Tc)*HW].

Linear part: per-frame sums phi_k v^T and phi_k, mixed into each chunk's L_t by a static
0/1 membership matrix [chunks, frames]. Working at frame granularity gets the causal set
L_t = [0, max(t*Tc - To, 0)) right when the overlap crosses chunk boundaries, and a direct
sum over L_t (rather than total minus window) avoids cancellation in the non-causal case.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from rehyat_jax.attention.chunking import ChunkGeometry, validate_hybrid_inputs
from rehyat_jax.attention.numerics import clamp_features, joint_normalise, matmul_precision

_HIGHEST = jax.lax.Precision.HIGHEST


def pad_to_chunks(x: jax.Array, geometry: ChunkGeometry) -> jax.Array:
  """[B, N, H, d] -> [B, chunks, Tc*HW, H, d], zero frames appended to fill the last chunk."""
  extra = (geometry.padded_frames - geometry.num_frames) * geometry.tokens_per_frame
  x = jnp.pad(x, ((0, 0), (0, extra), (0, 0), (0, 0)))
  b, _, h, d = x.shape
  return x.reshape(b, geometry.num_chunks, geometry.chunk_frames * geometry.tokens_per_frame, h, d)


def chunk_windows(x_chunks: jax.Array, geometry: ChunkGeometry) -> jax.Array:
  """[B, chunks, Tc*HW, H, d] -> [B, chunks, (To+Tc)*HW, H, d]: the To frames before each chunk
  (from as many earlier chunks as To spans; zeros before the video start), then the chunk."""
  hw, tc, to = geometry.tokens_per_frame, geometry.chunk_frames, geometry.overlap_frames
  if to == 0:
    return x_chunks
  earlier = -(-to // tc)
  padded = jnp.pad(x_chunks, ((0, 0), (earlier, 0), (0, 0), (0, 0), (0, 0)))
  n = geometry.num_chunks
  pieces = [padded[:, earlier - back:earlier - back + n] for back in range(earlier, -1, -1)]
  stacked = jnp.concatenate(pieces, axis=2)  # chunks t-earlier .. t, frames in order
  return stacked[:, :, (earlier * tc - to) * hw:]


def window_softmax(q_chunks: jax.Array, k_windows: jax.Array, v_windows: jax.Array,
                   key_valid: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Unnormalised softmax over each window with c = row max (method.md §2).

  q_chunks [B, C, Tq, H, D], k/v_windows [B, C, Tk, H, D], key_valid bool [C, Tk].
  Returns a_S [B, C, Tq, H, D] and n_S [B, C, Tq, H], both float32. Scores and stats are
  float32; the probabilities meet v in v's dtype (flash-attention style) with f32 accumulation.
  """
  precision = matmul_precision(q_chunks.dtype)
  scores = jnp.einsum("bcqhd,bckhd->bchqk", q_chunks, k_windows, precision=precision,
                      preferred_element_type=jnp.float32)
  scores = scores * (1.0 / math.sqrt(q_chunks.shape[-1]))
  scores = jnp.where(key_valid[None, :, None, None, :], scores, -jnp.inf)
  row_max = jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))
  weights = jnp.exp(scores - row_max)  # exactly 0 at invalid keys
  n_s = jnp.sum(weights, axis=-1).transpose(0, 1, 3, 2)
  a_s = jnp.einsum("bchqk,bckhd->bcqhd", weights.astype(v_windows.dtype), v_windows,
                   precision=precision, preferred_element_type=jnp.float32)
  return a_s, n_s


def linear_states(phi_k: jax.Array, v: jax.Array, geometry: ChunkGeometry,
                  causal: bool) -> tuple[jax.Array, jax.Array]:
  """KV_L [B, C, H, D', D] and z_L [B, C, H, D'] of every chunk, float32."""
  b, _, h, d = v.shape
  frames, hw = geometry.num_frames, geometry.tokens_per_frame
  phi_frames = phi_k.astype(jnp.float32).reshape(b, frames, hw, h, phi_k.shape[-1])
  v_frames = v.astype(jnp.float32).reshape(b, frames, hw, h, d)
  kv_per_frame = jnp.einsum("bfnhp,bfnhd->bfhpd", phi_frames, v_frames, precision=_HIGHEST)
  z_per_frame = jnp.sum(phi_frames, axis=2)
  membership = jnp.asarray(geometry.linear_membership(causal))
  kv_l = jnp.einsum("cf,bfhpd->bchpd", membership, kv_per_frame, precision=_HIGHEST)
  z_l = jnp.einsum("cf,bfhp->bchp", membership, z_per_frame, precision=_HIGHEST)
  return kv_l, z_l


def parallel_hybrid_attention(q: jax.Array, k: jax.Array, v: jax.Array, phi_q: jax.Array,
                              phi_k: jax.Array, *, tokens_per_frame: int, chunk_frames: int,
                              overlap_frames: int, causal: bool,
                              chunks_per_step: int | None = None) -> jax.Array:
  """ReHyAt hybrid attention, chunk-parallel form. Same contract as the reference form.

  ``chunks_per_step``: when set, the window softmax runs through ``lax.map`` over groups of
  that many chunks and is recomputed group by group in the backward pass (``jax.checkpoint``,
  flash-attention style), so score memory is one group's in training as well as inference;
  None processes all chunks at once and keeps their scores for the backward pass.
  """
  geometry = validate_hybrid_inputs(q, k, v, phi_q, phi_k, tokens_per_frame=tokens_per_frame,
                                    chunk_frames=chunk_frames, overlap_frames=overlap_frames)
  if chunks_per_step is not None and chunks_per_step < 1:
    raise ValueError(f"chunks_per_step must be None or >= 1, got {chunks_per_step!r}")
  b, n, h, d = q.shape
  phi_q = clamp_features(phi_q)
  phi_k = clamp_features(phi_k)

  q_chunks = pad_to_chunks(q, geometry)
  k_windows = chunk_windows(pad_to_chunks(k, geometry), geometry)
  v_windows = chunk_windows(pad_to_chunks(v, geometry), geometry)
  key_valid = jnp.asarray(np.repeat(geometry.window_valid(), tokens_per_frame, axis=1))
  if chunks_per_step is None:
    a_s, n_s = window_softmax(q_chunks, k_windows, v_windows, key_valid)
  else:
    a_s, n_s = _mapped_window_softmax(q_chunks, k_windows, v_windows, key_valid, chunks_per_step)

  kv_l, z_l = linear_states(phi_k, v, geometry, causal)
  phi_q_chunks = pad_to_chunks(phi_q, geometry).astype(jnp.float32)
  lin_num = jnp.einsum("bcqhp,bchpd->bcqhd", phi_q_chunks, kv_l, precision=_HIGHEST)
  lin_den = jnp.einsum("bcqhp,bchp->bcqh", phi_q_chunks, z_l, precision=_HIGHEST)

  out = joint_normalise(a_s, n_s, lin_num, lin_den)
  return out.reshape(b, geometry.padded_frames * tokens_per_frame, h, d)[:, :n].astype(q.dtype)


def _mapped_window_softmax(q_chunks: jax.Array, k_windows: jax.Array, v_windows: jax.Array,
                           key_valid: jax.Array,
                           chunks_per_step: int) -> tuple[jax.Array, jax.Array]:
  """window_softmax one chunk at a time, vectorised over ``chunks_per_step`` chunks."""
  @jax.checkpoint
  def one_chunk(args: tuple[jax.Array, ...]) -> tuple[jax.Array, jax.Array]:
    q_c, k_c, v_c, valid_c = args
    a_s, n_s = window_softmax(q_c[:, None], k_c[:, None], v_c[:, None], valid_c[None])
    return a_s[:, 0], n_s[:, 0]

  chunk_major = lambda x: jnp.swapaxes(x, 0, 1)
  a_s, n_s = jax.lax.map(one_chunk, (chunk_major(q_chunks), chunk_major(k_windows),
                                     chunk_major(v_windows), key_valid),
                         batch_size=chunks_per_step)
  return chunk_major(a_s), chunk_major(n_s)
