"""Dense masked ReHyAt: the ground truth, written straight from the set definitions.

Materialises the N x N scores and the two boolean masks S (softmax set) and L (linear set) of
docs/method.md §1, then applies §2 literally. O(N^2) memory: for tests and small sizes only.
Everything is computed in float32 whatever the input dtype; the feature clamp and the
denominator guard are the shared ones of numerics.py, so the guarded regime is part of the
function every form computes.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from rehyat_jax.attention.geometry import validate_hybrid_inputs
from rehyat_jax.attention.numerics import clamp_features, joint_normalise

_HIGHEST = jax.lax.Precision.HIGHEST


def reference_masks(num_frames: int, tokens_per_frame: int, chunk_frames: int,
                    overlap_frames: int, causal: bool) -> tuple[np.ndarray, np.ndarray]:
  """bool [N, N] masks (query i, key j) of the softmax set S_t and the linear set L_t."""
  frame = np.arange(num_frames * tokens_per_frame) // tokens_per_frame
  chunk = frame // chunk_frames
  lo = np.maximum(chunk * chunk_frames - overlap_frames, 0)
  hi = np.minimum((chunk + 1) * chunk_frames, num_frames)
  key_frame = frame[None, :]
  softmax_mask = (key_frame >= lo[:, None]) & (key_frame < hi[:, None])
  if causal:
    linear_mask = key_frame < lo[:, None]
  else:
    linear_mask = ~softmax_mask
  return softmax_mask, linear_mask


def reference_hybrid_attention(q: jax.Array, k: jax.Array, v: jax.Array, phi_q: jax.Array,
                               phi_k: jax.Array, *, tokens_per_frame: int, chunk_frames: int,
                               overlap_frames: int, causal: bool) -> jax.Array:
  """ReHyAt hybrid attention, dense form. q, k, v [B, N, H, D]; phi [B, N, H, D'] -> q.dtype."""
  geometry = validate_hybrid_inputs(q, k, v, phi_q, phi_k, tokens_per_frame=tokens_per_frame,
                                    chunk_frames=chunk_frames, overlap_frames=overlap_frames)
  softmax_mask, linear_mask = reference_masks(geometry.num_frames, tokens_per_frame, chunk_frames,
                                              overlap_frames, causal)
  qf, kf, vf = (x.astype(jnp.float32) for x in (q, k, v))
  phi_qf = clamp_features(phi_q.astype(jnp.float32))
  phi_kf = clamp_features(phi_k.astype(jnp.float32))

  scores = jnp.einsum("bqhd,bkhd->bhqk", qf, kf, precision=_HIGHEST) / math.sqrt(q.shape[-1])
  scores = jnp.where(softmax_mask, scores, -jnp.inf)
  row_max = jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))
  weights = jnp.exp(scores - row_max)  # exactly 0 outside S_t
  a_s = jnp.einsum("bhqk,bkhd->bqhd", weights, vf, precision=_HIGHEST)
  n_s = jnp.sum(weights, axis=-1).transpose(0, 2, 1)

  linear_weights = jnp.einsum("bqhp,bkhp->bhqk", phi_qf, phi_kf, precision=_HIGHEST)
  linear_weights = jnp.where(linear_mask, linear_weights, 0.0)
  lin_num = jnp.einsum("bhqk,bkhd->bqhd", linear_weights, vf, precision=_HIGHEST)
  lin_den = jnp.sum(linear_weights, axis=-1).transpose(0, 2, 1)

  return joint_normalise(a_s, n_s, lin_num, lin_den).astype(q.dtype)
