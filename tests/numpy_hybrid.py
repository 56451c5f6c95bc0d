"""ReHyAt in float64 NumPy, written from docs/method.md §1–3 and the original Wan2.1 RoPE, sharing no code or
convention with ``rehyat_jax``: the independent side of the fidelity tests.

Arrays are [B, N, H, D] (phi [B, N, H, D']). ``hybrid_parts`` returns every intermediate of §2 so that tests
can look at the denominator guard and the chunk-local softmax, and takes an optional fixed row maximum c, the
function whose derivative the implementation's stop-gradient on c computes.
"""

from __future__ import annotations

import math

import numpy as np

DENOMINATOR_FLOOR = 0.01   # method.md §2 "Guards"
PHI_LIMIT = 1e4


def key_sets(num_frames: int, tokens_per_frame: int, chunk_frames: int, overlap_frames: int,
             causal: bool) -> tuple[np.ndarray, np.ndarray]:
  """bool [N, N] (query, key): key in S_t, key in L_t, for the chunk t of the query (method.md §1)."""
  n = num_frames * tokens_per_frame
  softmax_set = np.zeros((n, n), bool)
  linear_set = np.zeros((n, n), bool)
  for query in range(n):
    chunk = (query // tokens_per_frame) // chunk_frames
    lo, hi = max(chunk * chunk_frames - overlap_frames, 0), min((chunk + 1) * chunk_frames, num_frames)
    for key in range(n):
      frame = key // tokens_per_frame
      inside = lo <= frame < hi
      softmax_set[query, key] = inside
      linear_set[query, key] = frame < lo if causal else not inside
  return softmax_set, linear_set


def _gelu(x: np.ndarray) -> np.ndarray:
  erf = np.vectorize(math.erf)
  return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def mlp_power(x: np.ndarray, w1, b1, w2, b2, degree: int) -> np.ndarray:
  """method.md §3: per head psi = W2 gelu(W1 x + b1) + b2, split into ``degree`` parts, part i raised to i."""
  hidden = _gelu(np.einsum("bnhd,hdk->bnhk", x, w1) + b1)
  psi = np.einsum("bnhk,hkp->bnhp", hidden, w2) + b2
  parts = np.split(psi, degree, axis=-1)
  return np.concatenate([part ** power for power, part in enumerate(parts, start=1)], axis=-1)


def hybrid_parts(q, k, v, phi_q, phi_k, *, tokens_per_frame: int, chunk_frames: int, overlap_frames: int,
                 causal: bool, row_max: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Every quantity of method.md §2 in float64: c [B, H, N], a_s [B, N, H, D], n_s [B, N, H], lin_num, lin_den,
  y (the output). ``row_max`` given: c is that array instead of the max over S_t (held fixed)."""
  q, k, v, phi_q, phi_k = (np.asarray(t, np.float64) for t in (q, k, v, phi_q, phi_k))
  n, d = q.shape[1], q.shape[-1]
  softmax_set, linear_set = key_sets(n // tokens_per_frame, tokens_per_frame, chunk_frames, overlap_frames, causal)
  phi_q, phi_k = np.clip(phi_q, -PHI_LIMIT, PHI_LIMIT), np.clip(phi_k, -PHI_LIMIT, PHI_LIMIT)
  scores = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
  c = np.where(softmax_set, scores, -np.inf).max(axis=-1) if row_max is None else np.asarray(row_max)
  weights = np.where(softmax_set, np.exp(scores - c[..., None]), 0.0)
  linear = np.where(linear_set, np.einsum("bqhp,bkhp->bhqk", phi_q, phi_k), 0.0)
  parts = {"c": c,
           "a_s": np.einsum("bhqk,bkhd->bqhd", weights, v), "n_s": weights.sum(-1).transpose(0, 2, 1),
           "lin_num": np.einsum("bhqk,bkhd->bqhd", linear, v), "lin_den": linear.sum(-1).transpose(0, 2, 1)}
  den = np.maximum(parts["n_s"] + parts["lin_den"], DENOMINATOR_FLOOR * parts["n_s"])
  parts["y"] = (parts["a_s"] + parts["lin_num"]) / den[..., None]
  return parts


def wan_rope(x: np.ndarray, grid: tuple[int, int, int], theta: float = 10000.0) -> np.ndarray:
  """The original Wan2.1 ``rope_apply`` on [B, N, H, D] tokens of a (frames, height, width) grid, float64:
  consecutive channel pairs as complex numbers times exp(i p theta^(-2j/d_axis)), with the frequency table
  split between t, h and w as ``rope_params`` / ``rope_apply`` do it (d - 4(d // 6), 2(d // 6), 2(d // 6))."""
  b, n, h, d = x.shape
  def params(dim):
    return np.outer(np.arange(1024), 1.0 / np.power(theta, np.arange(0, dim, 2, dtype=np.float64) / dim))
  table = np.concatenate([params(d - 4 * (d // 6)), params(2 * (d // 6)), params(2 * (d // 6))], axis=1)
  c = d // 2
  table_t, table_h, table_w = np.split(table, [c - 2 * (c // 3), c - (c // 3)], axis=1)
  frames, height, width = grid
  angles = np.concatenate([
      np.broadcast_to(table_t[:frames, None, None], (frames, height, width, table_t.shape[1])),
      np.broadcast_to(table_h[None, :height, None], (frames, height, width, table_h.shape[1])),
      np.broadcast_to(table_w[None, None, :width], (frames, height, width, table_w.shape[1])),
  ], axis=-1).reshape(n, 1, c)
  pairs = np.asarray(x, np.float64).reshape(b, n, h, c, 2)
  rotated = (pairs[..., 0] + 1j * pairs[..., 1]) * np.exp(1j * angles)
  return np.stack([rotated.real, rotated.imag], axis=-1).reshape(b, n, h, d)
