"""Window backend "pallas": the fused window forward as a Pallas Triton kernel (GPU).

For every query it computes the whole of docs/method.md §2 that involves the softmax window,

    y = (a_S + lin_num) / guard(n_S + lin_den),

where a_S, n_S use c = the exact row max over S_t, and lin_num = phi_q . KV_L, lin_den =
phi_q . z_L come in precomputed (the cheap O(N D' D) part, left to XLA by the forms). A
flash-attention loop, whose end state (running max, running sum, accumulator) is exactly what
§2 needs, so the scores never reach device memory. cuDNN's fused attention cannot do this: it
returns only the log-sum-exp, and the spec's output depends on c itself because the linear
terms are not rescaled by exp(-c).

Compiled on GPU, Pallas interpret mode elsewhere (how CI checks it against the reference).
Backward (the shared ``jax.custom_vjp`` of ``fused.py``): "pallas" (default: the fused dq and
dk/dv kernels of ``triton_backward.py``) or "xla" (``jax.vjp`` of the XLA window for dq, dk, dv;
scores materialised).

Layout: the band layout of ``band.py``, read in place: q [B, Tq, H, D], k, v [B, Tk, H, D] as
the forms hold them (no window copies, no padding copies). One program per (query block of
``block_q`` consecutive tokens, batch, head); its rows may straddle a chunk boundary, so each row
carries its own key range (``band_rows``) and the loop visits the key blocks of the union of the
rows' ranges: the element mask and masked loads only at its edges, plain loads and no mask on the
blocks inside every row's range (most of them). Rows past the end are masked loads and stores.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from rehyat_jax.attention.numerics import DENOMINATOR_FLOOR
from rehyat_jax.attention.window.band import WindowBand
from rehyat_jax.attention.window.fused import xla_qkv_cotangents
from rehyat_jax.attention.window.kernel_common import (LOG2_E, MASK_VALUE, WindowKernelConfig,
                                                       band_block_specs, band_rows, band_scores,
                                                       kernel_precision, load_rows, store_rows)
from rehyat_jax.attention.window.registry import WindowBackend, WindowBackward, register_window_backend
from rehyat_jax.attention.window.triton_backward import pallas_qkv_cotangents


def _window_kernel(floor_ref, q_ref, k_ref, v_ref, lin_num_ref, lin_den_ref, out_ref, row_max_ref,
                   row_sum_ref, *, band: WindowBand, num_queries: int, num_keys: int,
                   config: WindowKernelConfig, precision: jax.lax.Precision):
  """One (query block, batch, head) program: flash loop over the block's keys, then §2."""
  block_q, block_k = config.block_q, config.block_k
  first_row = pl.program_id(0) * block_q
  key_lo, key_hi, blocks = band_rows(first_row, block_q, band, floor_ref[0], num_queries, num_keys,
                                     block_k)
  row_ok = first_row + jnp.arange(block_q) < num_queries

  q = load_rows(q_ref, first_row, block_q, row_ok)
  scale = LOG2_E / math.sqrt(q.shape[-1])  # scores in log2 units: exp2(s2 - m2) = exp(s - c)

  def body(block, carry, masked: bool):
    acc, row_max, row_sum = carry
    keys = block * block_k + jnp.arange(block_k)
    key_ok = keys < num_keys if masked else None
    k = load_rows(k_ref, block * block_k, block_k, key_ok)
    scores = band_scores(q, k, keys, key_lo, key_hi, masked=masked, scale=scale, precision=precision)
    new_max = jnp.maximum(row_max, jnp.max(scores, axis=1))
    # A row whose first visited block is all outside its range has row_max = MASK_VALUE there and
    # sums junk with weight 1; its first real key makes rescale exactly 0, which discards it.
    rescale = jnp.exp2(row_max - new_max)
    weights = jnp.exp2(scores - new_max[:, None])
    v = load_rows(v_ref, block * block_k, block_k, key_ok)
    acc = acc * rescale[:, None] + pltriton.dot(weights.astype(v.dtype), v, precision=precision)
    return acc, new_max, row_sum * rescale + jnp.sum(weights, axis=1)

  init = (jnp.zeros((block_q, q.shape[-1]), jnp.float32),
          jnp.full((block_q,), MASK_VALUE, jnp.float32), jnp.zeros((block_q,), jnp.float32))
  a_s, row_max, n_s = blocks.loop(body, init)
  # joint_normalise's guard, inlined (numerics.guarded_denominator).
  lin_den = load_rows(lin_den_ref, first_row, block_q, row_ok)
  den = jnp.maximum(n_s + lin_den, DENOMINATOR_FLOOR * n_s)
  lin_num = load_rows(lin_num_ref, first_row, block_q, row_ok)
  store_rows(out_ref, first_row, ((a_s + lin_num) / den[:, None]).astype(out_ref.dtype), row_ok)
  # Residuals of the fused backward pass: c in log2 units and n_S.
  store_rows(row_max_ref, first_row, row_max, row_ok)
  store_rows(row_sum_ref, first_row, n_s, row_ok)


def triton_window_forward(q, k, v, lin_num, lin_den, key_floor, band: WindowBand,
                          config: WindowKernelConfig, interpret: bool):
  """Output [B, Tq, H, D] and the residuals row max (log2 units) and n_S, [B, Tq, H]."""
  b, tq, h, d = q.shape
  tk = k.shape[1]
  kernel = functools.partial(_window_kernel, band=band, num_queries=tq, num_keys=tk, config=config,
                             precision=kernel_precision(q.dtype))
  whole, whole_rows, scalar = band_block_specs(tq, d)
  stats = jax.ShapeDtypeStruct((b, tq, h), jnp.float32)
  return pl.pallas_call(
      kernel,
      grid=(pl.cdiv(tq, config.block_q), b, h),
      in_specs=[scalar, whole(tq), whole(tk), whole(tk), whole(tq), whole_rows],
      out_specs=[whole(tq), whole_rows, whole_rows],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), stats, stats],
      compiler_params=pltriton.CompilerParams(num_warps=config.num_warps,
                                              num_stages=config.num_stages),
      interpret=interpret,
      name="rehyat_window_attention",
  )(key_floor.reshape(1), q, k, v, lin_num, lin_den)


register_window_backend(WindowBackend(
    name="pallas",
    summary="fused Pallas Triton kernel (GPU): flash loop, scores stay on chip",
    forward=triton_window_forward,
    # The fused backward is the default: checked against the dense reference on an H200 (fp32
    # and bf16; bench/check_kernel_parity.py) and 1.6x to 6x faster than the XLA one there.
    backwards={
        "pallas": WindowBackward(pallas_qkv_cotangents, "fused dq and dk/dv Triton kernels"),
        "xla": WindowBackward(xla_qkv_cotangents, "jax.vjp of the XLA window (scores materialised)"),
    },
    platforms=("gpu",),
))
