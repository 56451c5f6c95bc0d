"""The fused backward of the window kernel (flash-attention-2 style): dq, dk, dv with no scores
in device memory. It is the default ("pallas") backward of window backend "pallas": checked
against the dense reference in Pallas interpret mode on CPU CI and compiled on an H200
(bench/check_kernel_parity.py, fp32 and bf16). Tiles per kernel: ``WindowKernelConfig.dq`` /
``.dkv`` (halved for float32 operands, ``BackwardTiles.for_dtype``).

With the row-wise cotangents da, dn of ``fused.row_cotangents`` (docs/method.md §2; the chain
rule is in ``fused.py``), c the saved row max and p_j = exp(s_j - c) recomputed from it (c is a
stop-gradient constant, as in every form):

    dv_j += p_j da,   ds_j = p_j (da . v_j + dn),   dq = scale sum_j ds_j k_j,   dk_j += scale ds_j q

Two kernels recompute the scores tile by tile: one per query block for dq (loop over the
window's keys), one per key block for dk and dv (loop over the chunk's queries).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from rehyat_jax.attention.window.kernel_common import (LOG2_E, MASK_VALUE, BackwardTiles,
                                                       WindowKernelConfig, kernel_precision, pad_flat,
                                                       round_up)


def _weights(q, k, row_max, key_index, key_lo, key_hi, scale, precision):
  """p = exp(s - c) of a [block_q, block_k] tile, 0 at keys outside [key_lo, key_hi)."""
  scores = pltriton.dot(q, k, trans_b=True, precision=precision) * scale
  valid = (key_index >= key_lo) & (key_index < key_hi)
  scores = jnp.where(valid[None, :], scores, MASK_VALUE)
  return jnp.exp2(scores - row_max[:, None])


def _dq_kernel(q_ref, k_ref, v_ref, da_ref, dn_ref, row_max_ref, bounds_ref, dq_ref, *,
               tiles: BackwardTiles, precision):
  """One (query block, batch x chunk, head) program: dq over the keys of the window."""
  block_k = tiles.block_k
  key_lo, key_hi = bounds_ref[0], bounds_ref[1]
  q, da, dn, row_max = q_ref[...], da_ref[...], dn_ref[...], row_max_ref[...]
  scale2 = LOG2_E / math.sqrt(q.shape[-1])

  def body(block, dq):
    keys = pl.ds(block * block_k, block_k)
    k, v = k_ref[keys, :], v_ref[keys, :]
    weights = _weights(q, k, row_max, block * block_k + jnp.arange(block_k), key_lo, key_hi,
                       scale2, precision)
    dp = pltriton.dot(da.astype(v.dtype), v, trans_b=True, precision=precision) + dn[:, None]
    ds = weights * dp
    return dq + pltriton.dot(ds.astype(k.dtype), k, precision=precision)

  first, last = key_lo // block_k, (key_hi + block_k - 1) // block_k
  dq = jax.lax.fori_loop(first, last, body, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = (dq * (1.0 / math.sqrt(q.shape[-1]))).astype(dq_ref.dtype)


def _dkv_kernel(q_ref, k_ref, v_ref, da_ref, dn_ref, row_max_ref, bounds_ref, dk_ref, dv_ref, *,
                tiles: BackwardTiles, precision, query_blocks: int):
  """One (key block, batch x chunk, head) program: dk, dv over the chunk's queries.

  Works on transposed tiles ([block_k, block_q]: s^T = k q^T), so that dv += p^T da and
  dk += ds^T q are plain products: no register-tile transposes (``trans_a``), which cost this
  kernel most of its time on an H200.
  """
  block_q, block_k = tiles.block_q, tiles.block_k
  key_lo, key_hi = bounds_ref[0], bounds_ref[1]
  k, v = k_ref[...], v_ref[...]
  key_index = pl.program_id(0) * block_k + jnp.arange(block_k)
  key_valid = (key_index >= key_lo) & (key_index < key_hi)
  scale2 = LOG2_E / math.sqrt(k.shape[-1])

  def body(block, carry):
    dk, dv = carry
    rows = pl.ds(block * block_q, block_q)
    q, da = q_ref[rows, :], da_ref[rows, :]
    dn, row_max = dn_ref[rows], row_max_ref[rows]
    scores_t = pltriton.dot(k, q, trans_b=True, precision=precision) * scale2
    scores_t = jnp.where(key_valid[:, None], scores_t, MASK_VALUE)
    weights_t = jnp.exp2(scores_t - row_max[None, :])
    dv = dv + pltriton.dot(weights_t.astype(v.dtype), da, precision=precision)
    dp_t = pltriton.dot(v, da, trans_b=True, precision=precision) + dn[None, :]
    ds_t = weights_t * dp_t
    dk = dk + pltriton.dot(ds_t.astype(q.dtype), q, precision=precision)
    return dk, dv

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = jax.lax.fori_loop(0, query_blocks, body, (zeros, zeros))
  dk_ref[...] = (dk * (1.0 / math.sqrt(k.shape[-1]))).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def fused_qkv_cotangents(q_chunks, k_windows, v_windows, key_bounds, row_max, da, dn,
                         config: WindowKernelConfig, interpret: bool):
  """dq, dk, dv from the row-wise cotangents, recomputing the scores tile by tile.

  da enters the tile matmuls in q's dtype (it is rounded to it inside the kernels either way),
  so it is cast once here: half the bytes the dk/dv kernel streams per query tile for bf16.
  """
  b, c, tq, h, d = q_chunks.shape
  tk = k_windows.shape[2]
  dq_tiles, dkv_tiles = config.dq.for_dtype(q_chunks.dtype), config.dkv.for_dtype(q_chunks.dtype)
  # One padding serves both kernels: tiles are powers of two, so the larger is a multiple.
  tq_pad = round_up(tq, max(dq_tiles.block_q, dkv_tiles.block_q))
  tk_pad = round_up(tk, max(dq_tiles.block_k, dkv_tiles.block_k))
  precision = kernel_precision(q_chunks.dtype)
  bounds = jnp.asarray(key_bounds, jnp.int32)
  q_flat, da_flat = pad_flat(q_chunks, tq_pad), pad_flat(da.astype(q_chunks.dtype), tq_pad)
  dn_flat, max_flat = pad_flat(dn, tq_pad), pad_flat(row_max, tq_pad)
  k_flat, v_flat = pad_flat(k_windows, tk_pad), pad_flat(v_windows, tk_pad)
  operands = (q_flat, k_flat, v_flat, da_flat, dn_flat, max_flat, bounds)

  whole = lambda length: pl.BlockSpec((None, length, None, d), lambda i, j, n: (j, 0, n, 0))
  whole_rows = pl.BlockSpec((None, tq_pad, None), lambda i, j, n: (j, 0, n))
  bounds_block = pl.BlockSpec((None, 2), lambda i, j, n: (j % c, 0))
  params = lambda tiles: pltriton.CompilerParams(num_warps=tiles.num_warps, num_stages=tiles.num_stages)

  q_tile = pl.BlockSpec((None, dq_tiles.block_q, None, d), lambda i, j, n: (j, i, n, 0))
  row_tile = pl.BlockSpec((None, dq_tiles.block_q, None), lambda i, j, n: (j, i, n))
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, tiles=dq_tiles, precision=precision),
      grid=(tq_pad // dq_tiles.block_q, b * c, h),
      in_specs=[q_tile, whole(tk_pad), whole(tk_pad), q_tile, row_tile, row_tile, bounds_block],
      out_specs=q_tile,
      out_shape=jax.ShapeDtypeStruct(q_flat.shape, q_chunks.dtype),
      compiler_params=params(dq_tiles), interpret=interpret, name="rehyat_window_dq",
  )(*operands)

  k_tile = pl.BlockSpec((None, dkv_tiles.block_k, None, d), lambda i, j, n: (j, i, n, 0))
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, tiles=dkv_tiles, precision=precision,
                        query_blocks=tq_pad // dkv_tiles.block_q),
      grid=(tk_pad // dkv_tiles.block_k, b * c, h),
      in_specs=[whole(tq_pad), k_tile, k_tile, whole(tq_pad), whole_rows, whole_rows,
                bounds_block],
      out_specs=[k_tile, k_tile],
      out_shape=[jax.ShapeDtypeStruct(k_flat.shape, k_windows.dtype),
                 jax.ShapeDtypeStruct(v_flat.shape, v_windows.dtype)],
      compiler_params=params(dkv_tiles), interpret=interpret, name="rehyat_window_dkv",
  )(*operands)

  unflat = lambda x, length: x[:, :length].reshape(b, c, length, *x.shape[2:])
  return unflat(dq, tq), unflat(dk, tk), unflat(dv, tk)


def pallas_qkv_cotangents(res, cotangent, da, dn, *, config: WindowKernelConfig, interpret: bool,
                          window_chunks_per_step: int | None):
  """Backward "pallas" of window backend "pallas" (the ``WindowBackward.fn`` protocol of
  ``fused.py``): ``fused_qkv_cotangents`` from the forward's residuals."""
  del cotangent, window_chunks_per_step  # the kernels need only da, dn and the saved row max
  return fused_qkv_cotangents(res.q_chunks, res.k_windows, res.v_windows, res.key_bounds,
                              res.row_max, da, dn, config, interpret)
