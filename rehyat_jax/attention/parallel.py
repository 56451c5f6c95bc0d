"""Form "parallel": chunk-parallel ReHyAt (the training form); nothing N x N is materialised.

Softmax part: every chunk attends to its window [To overlap frames ; Tc chunk frames]; slots
before the video start and past its end are masked. q, k, v go to the ``window`` package as
they are, with the band that says which keys each query sees (``window.band``); it computes the
window together with the joint normalisation (docs/method.md §2), in XLA (per-chunk windows
built, scores [B, chunks, H, Tc*HW, (To+Tc)*HW] materialised) or with a fused Pallas kernel
(q, k, v read in place, scores stay on chip).

Linear part: per-frame sums phi_k v^T and phi_k, mixed into each chunk's L_t by a static
0/1 membership matrix [chunks, frames]. Working at frame granularity gets the causal set
L_t = [0, max(t*Tc - To, 0)) right when the overlap crosses chunk boundaries, and a direct
sum over L_t (rather than total minus window) avoids cancellation in the non-causal case.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rehyat_jax.attention.geometry import ChunkGeometry, validate_hybrid_inputs
from rehyat_jax.attention.numerics import clamp_features, feature_einsum
from rehyat_jax.attention.window import WindowKernelConfig, check_window_chunks_per_step, window_attention
from rehyat_jax.attention.window.band import WindowBand, from_chunks, to_chunks

_HIGHEST = jax.lax.Precision.HIGHEST


def pad_to_chunks(x: jax.Array, geometry: ChunkGeometry) -> jax.Array:
  """[B, N, H, d] -> [B, chunks, Tc*HW, H, d], zero frames appended to fill the last chunk."""
  return to_chunks(x, geometry.chunk_frames * geometry.tokens_per_frame)


def geometry_band(geometry: ChunkGeometry, key_shift_frames: int = 0) -> WindowBand:
  """The softmax windows of ``geometry`` over its flat tokens (``window.band``)."""
  return WindowBand(geometry.tokens_per_frame, geometry.chunk_frames, geometry.overlap_frames,
                    key_shift_frames)


def frame_sums(phi_k: jax.Array, v: jax.Array,
               tokens_per_frame: int) -> tuple[jax.Array, jax.Array]:
  """Per-frame sums phi_k v^T [B, F, H, D', D] and phi_k [B, F, H, D'], float32 (products in
  phi_k's precision class: ``numerics.feature_einsum``)."""
  b, n, h, d = v.shape
  frames = n // tokens_per_frame
  phi_frames = phi_k.reshape(b, frames, tokens_per_frame, h, phi_k.shape[-1])
  v_frames = v.reshape(b, frames, tokens_per_frame, h, d)
  kv_per_frame = feature_einsum("bfnhp,bfnhd->bfhpd", phi_frames, v_frames)
  z_per_frame = jnp.sum(phi_frames, axis=2, dtype=jnp.float32)
  return kv_per_frame, z_per_frame


def mix_frames(weights: jax.Array, kv_per_frame: jax.Array,
               z_per_frame: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Weighted sums over frames of ``frame_sums``: weights [R, F] -> [B, R, H, D', D], [B, R, H, D']."""
  weights = jnp.asarray(weights, jnp.float32)
  kv = jnp.einsum("cf,bfhpd->bchpd", weights, kv_per_frame, precision=_HIGHEST)
  z = jnp.einsum("cf,bfhp->bchp", weights, z_per_frame, precision=_HIGHEST)
  return kv, z


def linear_states(phi_k: jax.Array, v: jax.Array, geometry: ChunkGeometry,
                  causal: bool) -> tuple[jax.Array, jax.Array]:
  """KV_L [B, C, H, D', D] and z_L [B, C, H, D'] of every chunk, float32 (products in phi_k's
  precision class: ``numerics.feature_einsum``)."""
  return mix_frames(geometry.linear_membership(causal),
                    *frame_sums(phi_k, v, geometry.tokens_per_frame))


def linear_readout(phi_q: jax.Array, kv_l: jax.Array, z_l: jax.Array,
                   geometry: ChunkGeometry) -> tuple[jax.Array, jax.Array]:
  """phi_q . KV_L [B, C, Tc*HW, H, D] and phi_q . z_L [B, C, Tc*HW, H], float32, from the
  states of ``linear_states`` [B, C, H, D', D] and [B, C, H, D']."""
  phi_q_chunks = pad_to_chunks(phi_q, geometry)
  lin_num = feature_einsum("bcqhp,bchpd->bcqhd", phi_q_chunks, kv_l)
  lin_den = feature_einsum("bcqhp,bchp->bcqh", phi_q_chunks, z_l)
  return lin_num, lin_den


def linear_terms(phi_q: jax.Array, phi_k: jax.Array, v: jax.Array, geometry: ChunkGeometry,
                 causal: bool) -> tuple[jax.Array, jax.Array]:
  """phi_q . KV_L [B, C, Tc*HW, H, D] and phi_q . z_L [B, C, Tc*HW, H] of every chunk, float32."""
  return linear_readout(phi_q, *linear_states(phi_k, v, geometry, causal), geometry)


def parallel_hybrid_attention(q: jax.Array, k: jax.Array, v: jax.Array, phi_q: jax.Array,
                              phi_k: jax.Array, *, tokens_per_frame: int, chunk_frames: int,
                              overlap_frames: int, causal: bool, window_backend: str = "auto",
                              window_backward: str = "auto", window_chunks_per_step: int | None = None,
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
  n = q.shape[1]
  phi_q = clamp_features(phi_q)
  phi_k = clamp_features(phi_k)

  lin_num, lin_den = linear_terms(phi_q, phi_k, v, geometry, causal)
  return window_attention(q, k, v, from_chunks(lin_num, n), from_chunks(lin_den, n),
                          geometry_band(geometry), window_backend=window_backend,
                          window_backward=window_backward,
                          window_chunks_per_step=window_chunks_per_step, kernel_config=kernel_config)
