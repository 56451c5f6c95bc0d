"""Chunk geometry against the set definitions of docs/method.md §1."""

from __future__ import annotations

import numpy as np
from hypothesis import given, strategies as st

from rehyat_jax.attention import make_geometry


def test_wan_geometry():
  g = make_geometry(21 * 1560, tokens_per_frame=1560, chunk_frames=5, overlap_frames=1)
  assert (g.num_frames, g.num_chunks, g.num_full_chunks, g.remainder_frames) == (21, 5, 4, 1)
  assert g.padded_frames == 25 and g.window_frames == 6
  assert [g.softmax_frames(t) for t in range(5)] == [(0, 5), (4, 10), (9, 15), (14, 20), (19, 21)]


@given(st.integers(1, 12), st.integers(1, 7), st.integers(0, 5), st.booleans())
def test_masks_match_set_definitions(frames, chunk_frames, overlap_frames, causal):
  g = make_geometry(frames, tokens_per_frame=1, chunk_frames=chunk_frames,
                    overlap_frames=overlap_frames)
  valid = g.window_valid()
  member = g.linear_membership(causal)
  for t in range(g.num_chunks):
    lo, hi = max(t * chunk_frames - overlap_frames, 0), min((t + 1) * chunk_frames, frames)
    softmax_set = set(range(lo, hi))
    window_frames = t * chunk_frames - overlap_frames + np.arange(g.window_frames)
    assert set(window_frames[valid[t]].tolist()) == softmax_set
    linear_set = set(range(lo)) if causal else set(range(frames)) - softmax_set
    assert set(np.flatnonzero(member[t]).tolist()) == linear_set
