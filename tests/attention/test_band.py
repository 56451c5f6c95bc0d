"""The band layout of the softmax window (``window/band.py``) and the loop ranges of the Triton
kernels that read it in place (``kernel_common.band_rows``, ``LoopBlocks``), checked against S_t
of docs/method.md §1 written out directly."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rehyat_jax.attention import hybrid_attention
from rehyat_jax.attention.geometry import ChunkGeometry
from rehyat_jax.attention.window import WindowBand, WindowKernelConfig
from rehyat_jax.attention.window.band import band_windows
from rehyat_jax.attention.window.kernel_common import band_rows

# (frames, tokens_per_frame, chunk_frames, overlap_frames)
LAYOUTS = [(5, 8, 2, 1), (7, 6, 3, 2), (4, 16, 1, 3), (6, 5, 4, 0), (3, 24, 2, 1)]


def expected_mask(frames: int, hw: int, tc: int, to: int, shift: int, floor: int, num_keys: int) -> np.ndarray:
  """bool [Tq, Tk]: query token i sees key token j (k holds ``shift`` frames before q's frame 0)."""
  geometry = ChunkGeometry(frames, hw, tc, to)
  mask = np.zeros((frames * hw, num_keys), bool)
  for i in range(frames * hw):
    t = i // hw // tc
    hi = geometry.softmax_frames(t)[1]
    lo = t * tc - to  # not clipped at 0: a shifted key buffer holds frames before q's first
    keys = np.arange(num_keys)
    frame = keys // hw - shift
    mask[i] = (frame >= lo) & (frame < hi) & (keys >= floor)
  return mask


def band_mask(band: WindowBand, num_queries: int, num_keys: int, floor: int) -> np.ndarray:
  rows = np.arange(num_queries)
  lo, hi = band.key_range(rows // band.chunk_tokens, floor, num_keys)
  keys = np.arange(num_keys)
  return (keys[None] >= np.asarray(lo)[:, None]) & (keys[None] < np.asarray(hi)[:, None])


@pytest.mark.parametrize("frames,hw,tc,to", LAYOUTS)
@pytest.mark.parametrize("shift", ["none", "overlap"])
def test_key_range_is_the_softmax_set(frames, hw, tc, to, shift):
  """The parallel form's band (shift 0, floor 0) and a shard's [halo ; frames] band (shift To, the
  floor cutting halo frames before the video start) give exactly S_t of every query."""
  s = 0 if shift == "none" else to
  band = WindowBand(hw, tc, to, s)
  num_keys = (frames + s) * hw
  for floor in sorted({0, s * hw, max(s - 1, 0) * hw}):
    np.testing.assert_array_equal(band_mask(band, frames * hw, num_keys, floor),
                                  expected_mask(frames, hw, tc, to, s, floor, num_keys))


@pytest.mark.parametrize("frames,hw,tc,to", LAYOUTS)
def test_band_windows_hold_the_band(frames, hw, tc, to):
  """``band_windows``: slot j of chunk t is key token window_start(t) + j, and its bounds mark
  exactly the band's keys (the per-chunk layout of the XLA window and the TPU kernel)."""
  band = WindowBand(hw, tc, to, to)
  num_keys, floor = (frames + to) * hw, (to // 2) * hw
  rng = np.random.default_rng(0)
  k = rng.standard_normal((1, num_keys, 1, 1)).astype(np.float32)
  q = np.zeros((1, frames * hw, 1, 1), np.float32)
  _, k_windows, _, bounds = band_windows(jnp.asarray(q), jnp.asarray(k), jnp.asarray(k), band, floor)
  mask = band_mask(band, frames * hw, num_keys, floor)
  for t in range(band.num_chunks(frames * hw)):
    start = band.window_start(t)
    lo, hi = np.asarray(bounds[t])
    for j in range(band.window_tokens):
      key = start + j
      inside = 0 <= key < num_keys
      assert float(k_windows[0, t, j, 0, 0]) == (k[0, key, 0, 0] if inside else 0.0)
      assert (lo <= j < hi) == (inside and mask[t * band.chunk_tokens, key])


@pytest.mark.parametrize("frames,hw,tc,to", LAYOUTS)
@pytest.mark.parametrize("block_q,block_k", [(16, 16), (32, 16), (16, 64)])
def test_kernel_loops_cover_the_band(frames, hw, tc, to, block_q, block_k):
  """For every query block of the Triton kernels: the visited key blocks cover every key some row
  sees, and the unmasked interior blocks hold only keys that every (real) row sees."""
  band = WindowBand(hw, tc, to, to)
  num_queries, num_keys = frames * hw, (frames + to) * hw
  floor = to * hw
  mask = band_mask(band, num_queries, num_keys, floor)
  interiors = 0
  for first_row in range(0, num_queries, block_q):
    _, _, blocks = band_rows(first_row, block_q, band, floor, num_queries, num_keys, block_k)
    first, inner_first, inner_last, last = (int(x) for x in blocks)
    assert first <= inner_first <= inner_last <= last
    rows = mask[first_row:first_row + block_q]
    seen = np.flatnonzero(rows.any(axis=0))
    assert seen.min() >= first * block_k and seen.max() < last * block_k
    interior = np.arange(inner_first * block_k, inner_last * block_k)
    assert rows[:, interior].all()
    interiors += inner_last > inner_first
  if num_queries >= 4 * block_q and tc * hw >= 2 * block_k:
    assert interiors, "no unmasked interior anywhere: the test would not reach that path"


@pytest.mark.parametrize("form", ["parallel", "recurrent"])
@pytest.mark.parametrize("window_backward", ["pallas", "xla"])
def test_kernels_with_unmasked_interior_match_reference(form, window_backward):
  """Shapes whose chunks span several tiles, so the kernels' unmasked interior loops (forward, dq,
  dk/dv) run next to the masked edges: fused forms (interpret mode) vs the dense reference."""
  b, frames, hw, heads, d, p = 1, 5, 24, 2, 16, 8
  chunking = dict(tokens_per_frame=hw, chunk_frames=2, overlap_frames=1, causal=True)
  rng = np.random.default_rng(3)
  shape = (b, frames * hw, heads, d)
  q, k, v = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for _ in range(3))
  phi_q, phi_k = (jnp.asarray(np.abs(rng.standard_normal(shape[:3] + (p,))) * 0.1, jnp.float32) for _ in range(2))
  fused = lambda *x: hybrid_attention(*x, form=form, window_backend="pallas", window_backward=window_backward,
                                      kernel_config=WindowKernelConfig.uniform(16), **chunking)
  reference = lambda *x: hybrid_attention(*x, form="reference", **chunking)
  loss = lambda fn: lambda *x: jnp.sum(jnp.sin(fn(*x)))
  args = (q, k, v, phi_q, phi_k)
  np.testing.assert_allclose(fused(*args), reference(*args), atol=2e-6, rtol=0)
  for got, want in zip(jax.grad(loss(fused), argnums=tuple(range(5)))(*args),
                       jax.grad(loss(reference), argnums=tuple(range(5)))(*args)):
    np.testing.assert_allclose(got, want, atol=5e-6, rtol=0)


def test_band_rejects_a_shift_beyond_the_overlap():
  with pytest.raises(ValueError, match="key_shift_frames"):
    WindowBand(4, 2, 1, 2)
  with pytest.raises(ValueError, match="chunk_frames"):
    WindowBand(4, 0, 1)
