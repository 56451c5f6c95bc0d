"""Window backend "xla": the softmax window in plain XLA, scores materialised.

The band's per-chunk windows are built (``band.band_windows``: one concatenation of k and of v);
per chunk, scores [B, C, H, Tc*HW, (To+Tc)*HW] are formed, masked outside the band, and reduced to
a_S, n_S with c = the exact row max (docs/method.md §2), then ``joint_normalise``. JAX
differentiates it; it is also the "xla" backward of the kernel backends (``fused.py``).
``window_chunks_per_step`` bounds score memory to one group of chunks, forward and backward.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from rehyat_jax.attention.numerics import joint_normalise, matmul_precision
from rehyat_jax.attention.window.band import WindowBand, band_windows, from_chunks
from rehyat_jax.attention.window.registry import WindowBackend, WindowBackward, register_window_backend


def window_softmax(q_chunks: jax.Array, k_windows: jax.Array, v_windows: jax.Array,
                   key_valid: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Unnormalised softmax over each window with c = row max (docs/method.md §2), in XLA.

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


def key_valid_from_bounds(key_bounds: jax.Array, window_tokens: int) -> jax.Array:
  """bool [C, Tk] from int [C, 2] bounds: slot j of chunk c is valid iff lo_c <= j < hi_c."""
  slot = jnp.arange(window_tokens)[None, :]
  return (slot >= key_bounds[:, :1]) & (slot < key_bounds[:, 1:])


def band_softmax_sums(q: jax.Array, k: jax.Array, v: jax.Array, key_floor: jax.Array, band: WindowBand,
                      window_chunks_per_step: int | None = None) -> tuple[jax.Array, jax.Array]:
  """a_S [B, Tq, H, D] and n_S [B, Tq, H] (float32, c = the row max) of every query's window in
  XLA. ``window_chunks_per_step``: None materialises every chunk's scores at once (and keeps them
  for the backward pass); n runs ``lax.map`` over groups of n chunks and recomputes them group by
  group in the backward pass (``jax.checkpoint``), so score memory is one group's."""
  q_chunks, k_windows, v_windows, key_bounds = band_windows(q, k, v, band, key_floor)
  key_valid = key_valid_from_bounds(key_bounds, k_windows.shape[2])
  if window_chunks_per_step is None:
    a_s, n_s = window_softmax(q_chunks, k_windows, v_windows, key_valid)
  else:
    a_s, n_s = _mapped_window_softmax(q_chunks, k_windows, v_windows, key_valid,
                                      window_chunks_per_step)
  return from_chunks(a_s, q.shape[1]), from_chunks(n_s, q.shape[1])


def xla_window_attention(q: jax.Array, k: jax.Array, v: jax.Array, lin_num: jax.Array,
                         lin_den: jax.Array, key_floor: jax.Array, band: WindowBand,
                         window_chunks_per_step: int | None = None) -> jax.Array:
  """``window_attention`` with the XLA backend, [B, Tq, H, D] in q's dtype (``band_softmax_sums``
  then ``joint_normalise``)."""
  a_s, n_s = band_softmax_sums(q, k, v, key_floor, band, window_chunks_per_step)
  return joint_normalise(a_s, n_s, lin_num, lin_den).astype(q.dtype)


register_window_backend(WindowBackend(
    name="xla",
    summary="plain XLA, scores materialised (optionally window_chunks_per_step chunks at a time)",
    forward=xla_window_attention,
    backwards={"xla": WindowBackward(None, "JAX autodiff of the XLA window")},
    platforms=None,
))
