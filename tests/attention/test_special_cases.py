"""The two special cases docs/method.md §1 requires to hold exactly:
Tc >= F is full softmax attention; phi == 0 is chunk-local softmax with overlap."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from hybrid_cases import (IMPL_CAUSAL, Case, Impl, apply_phi, feature_map, hybrid, impl_causal_id, jit_fast, qkv,
                          relative_error)

TOLERANCE = 1e-5


def _hybrid(case: Case, impl: Impl, causal: bool, phi_q, phi_k):
  q, k, v = qkv(case)
  fn = jit_fast(lambda *xs: hybrid(impl, *xs, causal=causal, **case.chunking))
  return fn(q, k, v, phi_q, phi_k)


@pytest.mark.parametrize("impl,causal", IMPL_CAUSAL, ids=impl_causal_id)
@pytest.mark.parametrize("frames,chunk_frames,overlap_frames", [(5, 5, 1), (4, 7, 2)])
def test_chunk_covering_video_is_full_softmax(impl, causal, frames, chunk_frames, overlap_frames):
  case = Case(batch=2, frames=frames, tokens_per_frame=3, heads=2, head_dim=8,
              chunk_frames=chunk_frames, overlap_frames=overlap_frames, causal=causal, seed=3)
  q, k, v = qkv(case)
  # Nonzero phi: L_t is empty, so it must not matter.
  out = _hybrid(case, impl, causal, *apply_phi(feature_map(case, init_scale=1.0), q, k))
  full = jit_fast(functools.partial(jax.nn.dot_product_attention, implementation="xla"))
  assert relative_error(out, full(q, k, v)) <= TOLERANCE


def chunk_local_softmax(q: np.ndarray, k: np.ndarray, v: np.ndarray, tokens_per_frame: int,
                        chunk_frames: int, overlap_frames: int) -> np.ndarray:
  """Independent loop implementation: each chunk attends (softmax) to itself + To frames before."""
  out = np.zeros_like(q)
  frames = q.shape[1] // tokens_per_frame
  for start in range(0, frames, chunk_frames):
    stop = min(start + chunk_frames, frames)
    window = slice(max(start - overlap_frames, 0) * tokens_per_frame, stop * tokens_per_frame)
    rows = slice(start * tokens_per_frame, stop * tokens_per_frame)
    scores = np.einsum("bqhd,bkhd->bhqk", q[:, rows], k[:, window]) / np.sqrt(q.shape[-1])
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out[:, rows] = np.einsum("bhqk,bkhd->bqhd", probs, v[:, window])
  return out


@pytest.mark.parametrize("impl,causal", IMPL_CAUSAL, ids=impl_causal_id)
@pytest.mark.parametrize("frames,chunk_frames,overlap_frames", [(7, 3, 1), (8, 2, 3), (6, 3, 0)])
def test_zero_phi_is_chunk_local_softmax(impl, causal, frames, chunk_frames, overlap_frames):
  case = Case(batch=1, frames=frames, tokens_per_frame=2, heads=2, head_dim=4,
              chunk_frames=chunk_frames, overlap_frames=overlap_frames, causal=causal, seed=5)
  q, k, v = qkv(case)
  zeros = np.zeros(q.shape[:3] + (6,), np.float32)
  out = _hybrid(case, impl, causal, zeros, zeros)
  expected = chunk_local_softmax(*(np.asarray(x, np.float64) for x in (q, k, v)),
                                 case.tokens_per_frame, chunk_frames, overlap_frames)
  assert relative_error(out, expected) <= TOLERANCE
