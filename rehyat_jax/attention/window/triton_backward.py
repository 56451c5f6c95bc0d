"""The fused backward of the window kernel (flash-attention-2 style): dq, dk, dv with no scores
in device memory. It is the default ("pallas") backward of window backend "pallas": checked
against the dense reference in Pallas interpret mode on CPU CI and compiled on an H200
(bench/check_kernel_parity.py, fp32 and bf16). Tiles per kernel: ``WindowKernelConfig.dq`` /
``.dkv`` (halved for float32 operands, ``BackwardTiles.for_dtype``).

With the row-wise cotangents da, dn of ``fused.row_cotangents`` (docs/method.md §2; the chain
rule is in ``fused.py``), c the saved row max and p_j = exp(s_j - c) recomputed from it (c is a
stop-gradient constant, as in every form):

    dv_j += p_j da,   ds_j = p_j (da . v_j + dn),   dq = scale sum_j ds_j k_j,   dk_j += scale ds_j q

Two kernels recompute the scores tile by tile, in the band layout of the forward (``band.py``,
operands read in place): one per query block for dq (loop over the rows' key blocks), one per
key block for dk and dv (loop over the query blocks of every chunk whose window holds one of its
keys: a key of the To overlap frames is seen by two chunks, and its dk, dv sum both). Both mask
elements only on the edge blocks of their loops (``kernel_common.LoopBlocks``).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from rehyat_jax.attention.window.band import WindowBand
from rehyat_jax.attention.window.kernel_common import (LOG2_E, MASK_VALUE, BackwardTiles, WindowKernelConfig,
                                                       LoopBlocks, band_block_specs, band_rows, band_scores,
                                                       kernel_precision, load_rows, store_rows)


def _dq_kernel(floor_ref, q_ref, k_ref, v_ref, da_ref, dn_ref, row_max_ref, dq_ref, *, band: WindowBand,
               num_queries: int, num_keys: int, tiles: BackwardTiles, precision):
  """One (query block, batch, head) program: dq over the rows' keys."""
  block_q, block_k = tiles.block_q, tiles.block_k
  first_row = pl.program_id(0) * block_q
  key_lo, key_hi, blocks = band_rows(first_row, block_q, band, floor_ref[0], num_queries, num_keys,
                                     block_k)
  row_ok = first_row + jnp.arange(block_q) < num_queries
  q = load_rows(q_ref, first_row, block_q, row_ok)
  da = load_rows(da_ref, first_row, block_q, row_ok)
  dn = load_rows(dn_ref, first_row, block_q, row_ok)
  row_max = load_rows(row_max_ref, first_row, block_q, row_ok)
  scale2 = LOG2_E / math.sqrt(q.shape[-1])

  def body(block, dq, masked: bool):
    keys = block * block_k + jnp.arange(block_k)
    key_ok = keys < num_keys if masked else None
    k = load_rows(k_ref, block * block_k, block_k, key_ok)
    v = load_rows(v_ref, block * block_k, block_k, key_ok)
    scores = band_scores(q, k, keys, key_lo, key_hi, masked=masked, scale=scale2, precision=precision)
    weights = jnp.exp2(scores - row_max[:, None])
    dp = pltriton.dot(da, v, trans_b=True, precision=precision) + dn[:, None]
    return dq + pltriton.dot((weights * dp).astype(k.dtype), k, precision=precision)

  dq = blocks.loop(body, jnp.zeros(q.shape, jnp.float32))
  store_rows(dq_ref, first_row, (dq * (1.0 / math.sqrt(q.shape[-1]))).astype(dq_ref.dtype), row_ok)


def _dkv_kernel(floor_ref, q_ref, k_ref, v_ref, da_ref, dn_ref, row_max_ref, dk_ref, dv_ref, *,
                band: WindowBand, num_queries: int, num_keys: int, tiles: BackwardTiles, precision):
  """One (key block, batch, head) program: dk, dv over the queries whose windows hold its keys.

  Works on transposed tiles ([block_k, block_q]: s^T = k q^T), so that dv += p^T da and
  dk += ds^T q are plain products: no register-tile transposes (``trans_a``), which cost this
  kernel most of its time on an H200.
  """
  block_q, block_k = tiles.block_q, tiles.block_k
  key_floor = floor_ref[0]
  first_key = pl.program_id(0) * block_k
  keys = first_key + jnp.arange(block_k)
  key_ok = keys < num_keys
  k = load_rows(k_ref, first_key, block_k, key_ok)
  v = load_rows(v_ref, first_key, block_k, key_ok)
  # Chunk t's window holds key j iff window_start(t) <= j < window_start(t) + window_tokens, i.e.
  # (j - shift) // Tc*HW <= t <= (j + lead) // Tc*HW; it holds every key of the block (no mask) for
  # t from the last key's lower bound to the first key's upper bound (none when the floor cuts in).
  chunk_tokens = band.chunk_tokens
  shift = band.key_shift_frames * band.tokens_per_frame
  lead = band.overlap_frames * band.tokens_per_frame - shift
  last_key = jnp.minimum(first_key + block_k, num_keys) - 1
  lowest_chunk = lambda key: jnp.maximum(key - shift, 0) // chunk_tokens
  rows_hi = jnp.minimum(((last_key + lead) // chunk_tokens + 1) * chunk_tokens, num_queries)
  inner_hi = jnp.where(key_floor <= first_key, ((first_key + lead) // chunk_tokens + 1) * chunk_tokens, 0)
  blocks = LoopBlocks.of(lowest_chunk(first_key) * chunk_tokens // block_q, (rows_hi + block_q - 1) // block_q,
                         inner_first=(lowest_chunk(last_key) * chunk_tokens + block_q - 1) // block_q,
                         inner_last=jnp.minimum(inner_hi, num_queries) // block_q)
  scale2 = LOG2_E / math.sqrt(k.shape[-1])

  def body(block, carry, masked: bool):
    dk, dv = carry
    rows = block * block_q + jnp.arange(block_q)
    row_ok = rows < num_queries if masked else None
    q = load_rows(q_ref, block * block_q, block_q, row_ok)
    da = load_rows(da_ref, block * block_q, block_q, row_ok)
    dn = load_rows(dn_ref, block * block_q, block_q, row_ok)
    row_max = load_rows(row_max_ref, block * block_q, block_q, row_ok)
    scores_t = pltriton.dot(k, q, trans_b=True, precision=precision) * scale2
    if masked:
      lo, hi = band.key_range(rows // chunk_tokens, key_floor, num_keys)
      valid_t = (keys[:, None] >= lo[None, :]) & (keys[:, None] < hi[None, :]) & row_ok[None, :]
      scores_t = jnp.where(valid_t, scores_t, MASK_VALUE)
    weights_t = jnp.exp2(scores_t - row_max[None, :])
    dv = dv + pltriton.dot(weights_t.astype(v.dtype), da, precision=precision)
    dp_t = pltriton.dot(v, da, trans_b=True, precision=precision) + dn[None, :]
    dk = dk + pltriton.dot((weights_t * dp_t).astype(q.dtype), q, precision=precision)
    return dk, dv

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = blocks.loop(body, (zeros, zeros))
  store_rows(dk_ref, first_key, (dk * (1.0 / math.sqrt(k.shape[-1]))).astype(dk_ref.dtype), key_ok)
  store_rows(dv_ref, first_key, dv.astype(dv_ref.dtype), key_ok)


def fused_qkv_cotangents(q, k, v, key_floor, row_max, da, dn, band: WindowBand,
                         config: WindowKernelConfig, interpret: bool):
  """dq, dk, dv from the row-wise cotangents, recomputing the scores tile by tile.

  da enters the tile matmuls in q's dtype (it is rounded to it inside the kernels either way),
  so it is cast once here: half the bytes the dk/dv kernel streams per query tile for bf16.
  """
  b, tq, h, d = q.shape
  tk = k.shape[1]
  dq_tiles, dkv_tiles = config.dq.for_dtype(q.dtype), config.dkv.for_dtype(q.dtype)
  precision = kernel_precision(q.dtype)
  operands = (key_floor.reshape(1), q, k, v, da.astype(q.dtype), dn, row_max)
  whole, whole_rows, scalar = band_block_specs(tq, d)
  in_specs = [scalar, whole(tq), whole(tk), whole(tk), whole(tq), whole_rows, whole_rows]
  params = lambda tiles: pltriton.CompilerParams(num_warps=tiles.num_warps, num_stages=tiles.num_stages)
  static = dict(band=band, num_queries=tq, num_keys=tk, precision=precision)

  dq = pl.pallas_call(
      functools.partial(_dq_kernel, tiles=dq_tiles, **static),
      grid=(pl.cdiv(tq, dq_tiles.block_q), b, h), in_specs=in_specs, out_specs=whole(tq),
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      compiler_params=params(dq_tiles), interpret=interpret, name="rehyat_window_dq",
  )(*operands)
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, tiles=dkv_tiles, **static),
      grid=(pl.cdiv(tk, dkv_tiles.block_k), b, h), in_specs=in_specs, out_specs=[whole(tk), whole(tk)],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      compiler_params=params(dkv_tiles), interpret=interpret, name="rehyat_window_dkv",
  )(*operands)
  return dq, dk, dv


def pallas_qkv_cotangents(res, cotangent, da, dn, *, band: WindowBand, config: WindowKernelConfig,
                          interpret: bool, window_chunks_per_step: int | None):
  """Backward "pallas" of window backend "pallas" (the ``WindowBackward.fn`` protocol of
  ``fused.py``): ``fused_qkv_cotangents`` from the forward's residuals."""
  del cotangent, window_chunks_per_step  # the kernels need only da, dn and the saved row max
  return fused_qkv_cotangents(res.q, res.k, res.v, res.key_floor, res.row_max, da, dn, band,
                              config, interpret)
