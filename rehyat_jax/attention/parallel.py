"""Form "parallel": chunk-parallel ReHyAt (the training form); nothing N x N is materialised.

Softmax part: every chunk attends to its window [To overlap frames ; Tc chunk frames], built
from static slices so shapes are static; slots before the video start and the padding of a
shorter last chunk are masked. The ``window`` package computes it together with the joint
normalisation (docs/method.md §2), in XLA (scores [B, chunks, H, Tc*HW, (To+Tc)*HW]
materialised) or with a fused Pallas kernel (scores stay on chip).

Linear part: per-frame sums phi_k v^T and phi_k, mixed into each chunk's L_t by a static
0/1 membership matrix [chunks, frames]. Working at frame granularity gets the causal set
L_t = [0, max(t*Tc - To, 0)) right when the overlap crosses chunk boundaries, and a direct
sum over L_t (rather than total minus window) avoids cancellation in the non-causal case.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rehyat_jax.attention.geometry import ChunkGeometry, validate_hybrid_inputs
from rehyat_jax.attention.numerics import clamp_features
from rehyat_jax.attention.window import WindowKernelConfig, check_window_chunks_per_step, window_attention

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


def window_operands(q: jax.Array, k: jax.Array, v: jax.Array,
                    geometry: ChunkGeometry) -> tuple[jax.Array, jax.Array, jax.Array]:
  """q per chunk [B, C, Tc*HW, H, D] and k, v per softmax window [B, C, (To+Tc)*HW, H, D]."""
  windows = lambda x: chunk_windows(pad_to_chunks(x, geometry), geometry)
  return pad_to_chunks(q, geometry), windows(k), windows(v)


def linear_terms(phi_q: jax.Array, phi_k: jax.Array, v: jax.Array, geometry: ChunkGeometry,
                 causal: bool) -> tuple[jax.Array, jax.Array]:
  """phi_q . KV_L [B, C, Tc*HW, H, D] and phi_q . z_L [B, C, Tc*HW, H] of every chunk, float32."""
  kv_l, z_l = linear_states(phi_k, v, geometry, causal)
  phi_q_chunks = pad_to_chunks(phi_q, geometry).astype(jnp.float32)
  lin_num = jnp.einsum("bcqhp,bchpd->bcqhd", phi_q_chunks, kv_l, precision=_HIGHEST)
  lin_den = jnp.einsum("bcqhp,bchp->bcqh", phi_q_chunks, z_l, precision=_HIGHEST)
  return lin_num, lin_den


def parallel_hybrid_attention(q: jax.Array, k: jax.Array, v: jax.Array, phi_q: jax.Array,
                              phi_k: jax.Array, *, tokens_per_frame: int, chunk_frames: int,
                              overlap_frames: int, causal: bool, window_backend: str = "auto",
                              window_backward: str = "xla", window_chunks_per_step: int | None = None,
                              kernel_config: WindowKernelConfig = WindowKernelConfig()
                              ) -> jax.Array:
  """ReHyAt hybrid attention, chunk-parallel form. Same contract as the reference form.

  ``window_backend`` / ``window_backward``: how the softmax window runs (``window_attention``).
  ``window_chunks_per_step`` (XLA window, and the kernels' 'xla' backward): when set, the window
  softmax runs through ``lax.map`` over groups of that many chunks and is recomputed group by
  group in the backward pass (``jax.checkpoint``), so score memory is one group's in training as
  well as inference; None processes all chunks at once.
  """
  geometry = validate_hybrid_inputs(q, k, v, phi_q, phi_k, tokens_per_frame=tokens_per_frame,
                                    chunk_frames=chunk_frames, overlap_frames=overlap_frames)
  check_window_chunks_per_step(window_chunks_per_step)
  b, n, h, d = q.shape
  phi_q = clamp_features(phi_q)
  phi_k = clamp_features(phi_k)

  q_chunks, k_windows, v_windows = window_operands(q, k, v, geometry)
  lin_num, lin_den = linear_terms(phi_q, phi_k, v, geometry, causal)
  out = window_attention(q_chunks, k_windows, v_windows, lin_num, lin_den,
                         geometry.window_key_bounds(), window_backend=window_backend,
                         window_backward=window_backward,
                         window_chunks_per_step=window_chunks_per_step, kernel_config=kernel_config)
  return out.reshape(b, geometry.padded_frames * tokens_per_frame, h, d)[:, :n]
