"""Window backend "pallas_tpu": the fused window forward as a Pallas Mosaic TPU kernel, the same
function as ``triton_forward.py``'s (docs/method.md §2).

EXPERIMENTAL: tested in Pallas interpret mode on CPU against the XLA window (the CI), never
compiled for or run on a TPU ('auto' never picks an experimental entry, so TPU runs stay on
XLA until it has been). Backward: "xla" only (``fused.xla_qkv_cotangents``).

TPU kernels see one block per grid step, so the flash loop over a window's keys is the innermost
grid axis ("arbitrary"), with the running max, sum and accumulator in VMEM scratch: initialised
at the first key block, finished with docs/method.md §2's joint normalisation at the last. The key
bounds of each chunk arrive by scalar prefetch: key blocks outside [lo, hi) are skipped
(``pl.when``) and their index map repeats the last useful block, so they cost no copy. Operands
are head-major ([B*C, H, T, D]) so that a block's last two dims are (tokens, head dim); the running
row statistics are lane-dense in VMEM (``NUM_LANES`` copies per row, as splash attention's).
Returns the output and the residuals (row max in log2 units, n_S) like the GPU kernel.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from rehyat_jax.attention.numerics import DENOMINATOR_FLOOR
from rehyat_jax.attention.window.band import WindowBand, band_windows, from_chunks, to_chunks
from rehyat_jax.attention.window.fused import xla_qkv_cotangents
from rehyat_jax.attention.window.kernel_common import (LOG2_E, MASK_VALUE, WindowKernelConfig,
                                                       kernel_precision, pad_flat, round_up)
from rehyat_jax.attention.window.registry import WindowBackend, WindowBackward, register_window_backend

NUM_LANES = 128  # a TPU vreg's lane count


def _tpu_window_kernel(bounds_ref, q_ref, k_ref, v_ref, lin_num_ref, lin_den_ref, out_ref,
                       row_max_ref, row_sum_ref, max_scratch, sum_scratch, acc_scratch, *,
                       num_chunks: int, key_blocks: int, block_k: int, precision):
  chunk = pl.program_id(0) % num_chunks
  key_block = pl.program_id(3)
  key_lo, key_hi = bounds_ref[2 * chunk], bounds_ref[2 * chunk + 1]

  @pl.when(key_block == 0)
  def _init():
    max_scratch[...] = jnp.full(max_scratch.shape, MASK_VALUE, jnp.float32)
    sum_scratch[...] = jnp.zeros(sum_scratch.shape, jnp.float32)
    acc_scratch[...] = jnp.zeros(acc_scratch.shape, jnp.float32)

  # The running max and sum are kept lane-dense, [block_q, NUM_LANES] with every lane equal (as splash
  # attention keeps its row statistics): a [block_q, 1] VMEM buffer fills one lane of each vreg and every
  # update of it is a masked load and store; the flash loop updates them at every key block.
  column = lambda x: x[:, :1]

  in_window = (key_block >= key_lo // block_k) & (key_block * block_k < key_hi)

  @pl.when(in_window)
  def _step():
    q, k, v = q_ref[...], k_ref[...], v_ref[...]
    scores = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())), precision=precision,
                                 preferred_element_type=jnp.float32)
    scores = scores * (LOG2_E / math.sqrt(q.shape[-1]))
    index = key_block * block_k + jax.lax.broadcasted_iota(jnp.int32, scores.shape, 1)
    scores = jnp.where((index >= key_lo) & (index < key_hi), scores, MASK_VALUE)
    old_max = max_scratch[...]
    new_max = jnp.maximum(old_max, jnp.max(scores, axis=1, keepdims=True))   # [block_q, NUM_LANES]
    rescale = jnp.exp2(old_max - new_max)
    weights = jnp.exp2(scores - column(new_max))
    sum_scratch[...] = sum_scratch[...] * rescale + jnp.sum(weights, axis=1, keepdims=True)
    acc_scratch[...] = acc_scratch[...] * column(rescale) + jax.lax.dot_general(
        weights.astype(v.dtype), v, (((1,), (0,)), ((), ())), precision=precision,
        preferred_element_type=jnp.float32)
    max_scratch[...] = new_max

  @pl.when(key_block == key_blocks - 1)
  def _finish():
    n_s = column(sum_scratch[...])
    den = jnp.maximum(n_s + lin_den_ref[...], DENOMINATOR_FLOOR * n_s)
    out_ref[...] = ((acc_scratch[...] + lin_num_ref[...]) / den).astype(out_ref.dtype)
    row_max_ref[...] = column(max_scratch[...])
    row_sum_ref[...] = n_s


def tpu_window_forward(q, k, v, lin_num, lin_den, key_floor, band: WindowBand,
                       config: WindowKernelConfig, interpret: bool):
  """Output [B, Tq, H, D] and residuals row max (log2 units), n_S [B, Tq, H] (the band layout);
  the kernel itself runs on the band's per-chunk windows (``band.band_windows``)."""
  q_chunks, k_windows, v_windows, key_bounds = band_windows(q, k, v, band, key_floor)
  chunks = lambda x: to_chunks(x, band.chunk_tokens)
  outputs = _tpu_window_chunks(q_chunks, k_windows, v_windows, chunks(lin_num), chunks(lin_den),
                               key_bounds, config, interpret)
  return tuple(from_chunks(x, q.shape[1]) for x in outputs)


def _tpu_window_chunks(q_chunks, k_windows, v_windows, lin_num, lin_den, key_bounds,
                       config: WindowKernelConfig, interpret: bool):
  """Output [B, C, Tq, H, D] and residuals row max (log2 units), n_S [B, C, Tq, H]."""
  b, c, tq, h, d = q_chunks.shape
  tk = k_windows.shape[2]
  block_q, block_k = config.block_q, config.block_k
  tq_pad, tk_pad = round_up(tq, block_q), round_up(tk, block_k)
  key_blocks = tk_pad // block_k
  head_major = lambda x, length: jnp.swapaxes(pad_flat(x, length), 1, 2)  # [B*C, H, T, ...]
  rows = lambda x: head_major(x, tq_pad)[..., None]  # [B*C, H, Tq, 1]

  def key_block_index(bc, head, qi, kj, bounds):
    chunk = bc % c
    first = bounds[2 * chunk] // block_k
    last = (bounds[2 * chunk + 1] + block_k - 1) // block_k - 1
    return bc, head, jnp.clip(kj, first, last), 0

  q_spec = pl.BlockSpec((None, None, block_q, d), lambda bc, head, qi, kj, bounds: (bc, head, qi, 0))
  row_spec = pl.BlockSpec((None, None, block_q, 1), lambda bc, head, qi, kj, bounds: (bc, head, qi, 0))
  kv_spec = pl.BlockSpec((None, None, block_k, d), key_block_index)
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=1, grid=(b * c, h, tq_pad // block_q, key_blocks),
      in_specs=[q_spec, kv_spec, kv_spec, q_spec, row_spec],
      out_specs=[q_spec, row_spec, row_spec],
      scratch_shapes=[pltpu.VMEM((block_q, NUM_LANES), jnp.float32), pltpu.VMEM((block_q, NUM_LANES), jnp.float32),
                      pltpu.VMEM((block_q, d), jnp.float32)])
  stats = jax.ShapeDtypeStruct((b * c, h, tq_pad, 1), jnp.float32)
  kernel = functools.partial(_tpu_window_kernel, num_chunks=c, key_blocks=key_blocks,
                             block_k=block_k, precision=kernel_precision(q_chunks.dtype))
  out, row_max, row_sum = pl.pallas_call(
      kernel, grid_spec=grid_spec,
      out_shape=[jax.ShapeDtypeStruct((b * c, h, tq_pad, d), q_chunks.dtype), stats, stats],
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
      interpret=interpret, name="rehyat_window_attention_tpu",
  )(jnp.asarray(key_bounds, jnp.int32).reshape(-1), head_major(q_chunks, tq_pad),
    head_major(k_windows, tk_pad), head_major(v_windows, tk_pad),
    head_major(lin_num.astype(jnp.float32), tq_pad), rows(lin_den.astype(jnp.float32)))

  def token_major(x):  # [B*C, H, Tq_pad, ...] -> [B, C, Tq, H, ...]
    x = jnp.swapaxes(x, 1, 2)[:, :tq]
    return x.reshape(b, c, tq, *x.shape[2:])

  return token_major(out), token_major(row_max[..., 0]), token_major(row_sum[..., 0])


register_window_backend(WindowBackend(
    name="pallas_tpu",
    summary="fused Pallas Mosaic TPU forward kernel (never yet run on a TPU)",
    forward=tpu_window_forward,
    backwards={"xla": WindowBackward(xla_qkv_cotangents, "jax.vjp of the XLA window (scores materialised)")},
    platforms=("tpu",),
    experimental=True,
))
