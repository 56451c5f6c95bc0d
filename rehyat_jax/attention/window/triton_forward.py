"""Window backend "pallas": the fused window forward as a Pallas Triton kernel (GPU).

For every query of every chunk it computes the whole of docs/method.md §2 that involves the
softmax window,

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

Layout: q_chunks [B, C, Tq, H, D], k/v_windows [B, C, Tk, H, D] (the overlap frames then the
chunk: ``parallel.chunk_windows``, or the recurrent step's [cache ; chunk] buffer), and int32
key bounds [C, 2]: window slots [lo_c, hi_c) hold keys of S_t. Inside the kernel the token axes
are padded to the block sizes; slots outside the bounds and block padding are masked, and key
blocks wholly outside them are skipped.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from rehyat_jax.attention.numerics import DENOMINATOR_FLOOR
from rehyat_jax.attention.window.fused import xla_qkv_cotangents
from rehyat_jax.attention.window.kernel_common import (LOG2_E, MASK_VALUE, WindowKernelConfig,
                                                       kernel_precision, pad_flat, round_up)
from rehyat_jax.attention.window.registry import WindowBackend, WindowBackward, register_window_backend
from rehyat_jax.attention.window.triton_backward import pallas_qkv_cotangents


def _window_kernel(q_ref, k_ref, v_ref, lin_num_ref, lin_den_ref, bounds_ref, out_ref,
                   row_max_ref, row_sum_ref, *, config: WindowKernelConfig,
                   precision: jax.lax.Precision):
  """One (query block, batch x chunk, head) program: flash loop over the keys of S_t, then §2."""
  block_q, block_k = config.block_q, config.block_k
  key_lo, key_hi = bounds_ref[0], bounds_ref[1]  # the valid window slots are [key_lo, key_hi)

  q = q_ref[...]
  scale = LOG2_E / math.sqrt(q.shape[-1])  # scores in log2 units: exp2(s2 - m2) = exp(s - c)

  def body(block, carry):
    acc, row_max, row_sum = carry
    keys = pl.ds(block * block_k, block_k)
    k = k_ref[keys, :]
    scores = pltriton.dot(q, k, trans_b=True, precision=precision) * scale
    index = block * block_k + jnp.arange(block_k)
    valid = (index >= key_lo) & (index < key_hi)
    scores = jnp.where(valid[None, :], scores, MASK_VALUE)
    new_max = jnp.maximum(row_max, jnp.max(scores, axis=1))
    rescale = jnp.exp2(row_max - new_max)
    weights = jnp.exp2(scores - new_max[:, None])
    v = v_ref[keys, :]
    acc = acc * rescale[:, None] + pltriton.dot(weights.astype(v.dtype), v, precision=precision)
    return acc, new_max, row_sum * rescale + jnp.sum(weights, axis=1)

  first = key_lo // block_k
  last = (key_hi + block_k - 1) // block_k
  init = (jnp.zeros((block_q, q.shape[-1]), jnp.float32),
          jnp.full((block_q,), MASK_VALUE, jnp.float32), jnp.zeros((block_q,), jnp.float32))
  a_s, row_max, n_s = jax.lax.fori_loop(first, last, body, init)
  # joint_normalise's guard, inlined (numerics.guarded_denominator).
  den = jnp.maximum(n_s + lin_den_ref[...], DENOMINATOR_FLOOR * n_s)
  out_ref[...] = ((a_s + lin_num_ref[...]) / den[:, None]).astype(out_ref.dtype)
  # Residuals of the fused backward pass: c in log2 units and n_S.
  row_max_ref[...] = row_max
  row_sum_ref[...] = n_s


def triton_window_forward(q_chunks, k_windows, v_windows, lin_num, lin_den, key_bounds,
                          config: WindowKernelConfig, interpret: bool):
  """Output [B, C, Tq, H, D] and the residuals row max (log2 units) and n_S, [B, C, Tq, H]."""
  b, c, tq, h, d = q_chunks.shape
  tk = k_windows.shape[2]
  tq_pad, tk_pad = round_up(tq, config.block_q), round_up(tk, config.block_k)

  kernel = functools.partial(_window_kernel, config=config,
                             precision=kernel_precision(q_chunks.dtype))
  q_block = pl.BlockSpec((None, config.block_q, None, d), lambda i, j, n: (j, i, n, 0))
  kv_block = pl.BlockSpec((None, tk_pad, None, d), lambda i, j, n: (j, 0, n, 0))
  den_block = pl.BlockSpec((None, config.block_q, None), lambda i, j, n: (j, i, n))
  bounds_block = pl.BlockSpec((None, 2), lambda i, j, n: (j % c, 0))
  stats = jax.ShapeDtypeStruct((b * c, tq_pad, h), jnp.float32)
  out, row_max, row_sum = pl.pallas_call(
      kernel,
      grid=(tq_pad // config.block_q, b * c, h),
      in_specs=[q_block, kv_block, kv_block, q_block, den_block, bounds_block],
      out_specs=[q_block, den_block, den_block],
      out_shape=[jax.ShapeDtypeStruct((b * c, tq_pad, h, d), q_chunks.dtype), stats, stats],
      compiler_params=pltriton.CompilerParams(num_warps=config.num_warps,
                                              num_stages=config.num_stages),
      interpret=interpret,
      name="rehyat_window_attention",
  )(pad_flat(q_chunks, tq_pad), pad_flat(k_windows, tk_pad), pad_flat(v_windows, tk_pad),
    pad_flat(lin_num.astype(jnp.float32), tq_pad), pad_flat(lin_den.astype(jnp.float32), tq_pad),
    jnp.asarray(key_bounds, jnp.int32))
  unflat = lambda x: x[:, :tq].reshape(b, c, tq, *x.shape[2:])
  return unflat(out), unflat(row_max), unflat(row_sum)


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
