"""Wan2.1 3D rotary position embedding: interleaved pairs, per-axis frequencies, any grid size.

Per axis the angle is ``p * theta ** (-2 i / d_axis)`` with ``d_axis`` the real channels given to
that axis (44/42/42 for head dim 128; in general t = D - 4 (D // 6), h = w = 2 (D // 6)). Tables
are built per axis on the host in float64 and rounded to float32 once, as the original does, and
only expanded to tokens inside the computation, so any frame count works (no 1024-row limit)
and a chunk of frames needs only its own rows of the (tiny) temporal table.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np


def axis_dims(head_dim: int) -> tuple[int, int, int]:
  """Real channels per (t, h, w) axis for ``head_dim``; each is even."""
  hw = 2 * (head_dim // 6)
  return head_dim - 2 * hw, hw, hw


def _axis_angles(positions: np.ndarray, dim: int, theta: float) -> np.ndarray:
  inv_freq = theta ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
  return np.outer(positions.astype(np.float64), inv_freq)  # [P, dim // 2]


class RopeTables(NamedTuple):
  """cos/sin per axis, float32, shapes [F, t/2], [Hp, h/2], [Wp, w/2]."""

  cos_t: jnp.ndarray
  sin_t: jnp.ndarray
  cos_h: jnp.ndarray
  sin_h: jnp.ndarray
  cos_w: jnp.ndarray
  sin_w: jnp.ndarray


def rope_tables(head_dim: int, grid: tuple[int, int, int], *, theta: float = 10000.0,
                frame_offset: int = 0) -> RopeTables:
  """Host-side float64 tables for a (frames, height, width) patch grid starting at ``frame_offset``."""
  d_t, d_h, d_w = axis_dims(head_dim)
  f, h, w = grid
  ang_t = _axis_angles(np.arange(frame_offset, frame_offset + f), d_t, theta)
  ang_h = _axis_angles(np.arange(h), d_h, theta)
  ang_w = _axis_angles(np.arange(w), d_w, theta)
  as32 = lambda a: jnp.asarray(a.astype(np.float32))
  return RopeTables(as32(np.cos(ang_t)), as32(np.sin(ang_t)), as32(np.cos(ang_h)), as32(np.sin(ang_h)),
                    as32(np.cos(ang_w)), as32(np.sin(ang_w)))


def _token_table(t: jnp.ndarray, h: jnp.ndarray, w: jnp.ndarray) -> jnp.ndarray:
  """Broadcast per-axis rows to tokens in frame-major order: [F*Hp*Wp, D/2]."""
  f, hp, wp = t.shape[0], h.shape[0], w.shape[0]
  full = jnp.concatenate([
      jnp.broadcast_to(t[:, None, None, :], (f, hp, wp, t.shape[1])),
      jnp.broadcast_to(h[None, :, None, :], (f, hp, wp, h.shape[1])),
      jnp.broadcast_to(w[None, None, :, :], (f, hp, wp, w.shape[1])),
  ], axis=-1)
  return full.reshape(f * hp * wp, -1)


def apply_rope(x: jnp.ndarray, tables: RopeTables) -> jnp.ndarray:
  """Rotate interleaved pairs (x[2i], x[2i+1]) of ``x`` [B, N, H, D]; returns float32 like the original."""
  cos = _token_table(tables.cos_t, tables.cos_h, tables.cos_w)[None, :, None, :]
  sin = _token_table(tables.sin_t, tables.sin_h, tables.sin_w)[None, :, None, :]
  if cos.shape[1] != x.shape[1] or 2 * cos.shape[-1] != x.shape[-1]:
    raise ValueError(f"apply_rope: tables cover {cos.shape[1]} tokens x {2 * cos.shape[-1]} channels, "
                     f"input has {x.shape[1]} tokens x {x.shape[-1]} channels")
  x = x.astype(jnp.float32)
  x1, x2 = x[..., 0::2], x[..., 1::2]
  out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
  return out.reshape(x.shape)
