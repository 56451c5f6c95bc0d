"""The softmax-window part of the parallel and scan forms, with the joint normalisation.

``window_attention`` computes, for every query of every chunk, the whole of method.md §2 that
involves the softmax window,

    y = (a_S + lin_num) / guard(n_S + lin_den),

where a_S, n_S use c = the exact row max over S_t, and lin_num = phi_q . KV_L, lin_den =
phi_q . z_L come in precomputed (the cheap O(N D' D) part, left to XLA by the callers). Backends:
``xla`` (``window_softmax``: scores materialised, optionally chunk group by chunk group) and the
fused Pallas kernel (``fused_window_attention``): a flash-attention loop, whose end state (running
max, running sum, accumulator) is exactly what §2 needs, so the scores never reach device memory.
cuDNN's fused attention cannot do this: it returns only the log-sum-exp, and the spec's output
depends on c itself because the linear terms are not rescaled by exp(-c).

The kernel here uses Pallas' Triton lowering (GPU); ``window_tpu.py`` has a Mosaic TPU version.
Both run in Pallas interpret mode on any backend, which is how CI checks them against the
reference. Backward (``jax.custom_vjp``): the linear branch's cotangents are row-wise from the
saved output and n_S (``window_backward.row_cotangents``); dq, dk, dv come from ``jax.vjp`` of
the XLA backend, or from the fused backward kernels with ``backward='pallas'``.

Layout: q_chunks [B, C, Tq, H, D], k/v_windows [B, C, Tk, H, D] (the overlap frames then the
chunk: ``parallel.chunk_windows``, or the recurrent step's [cache ; chunk] buffer), and int32
key bounds [C, 2]: window slots [lo_c, hi_c) hold keys of S_t. Inside the kernel the token axes
are padded to the block sizes; slots outside the bounds and block padding are masked, and key
blocks wholly outside them are skipped.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from rehyat_jax.attention.kernel_sharding import context_mesh_size, map_over_batch_and_heads
from rehyat_jax.attention.numerics import DENOMINATOR_FLOOR, joint_normalise, matmul_precision
from rehyat_jax.attention.window_backward import fused_qkv_cotangents, row_cotangents
from rehyat_jax.attention.window_kernel_common import (LOG2_E, MASK_VALUE, WindowKernelConfig,
                                                       kernel_precision, pad_flat, round_up)
from rehyat_jax.attention.window_tpu import tpu_window_forward


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


def _pallas_forward(q_chunks, k_windows, v_windows, lin_num, lin_den, key_bounds,
                    config: WindowKernelConfig, interpret: bool):
  """Output [B, C, Tq, H, D] and the residuals row max (log2 units) and n_S, [B, C, Tq, H]."""
  if config.platform == "tpu":
    return tpu_window_forward(q_chunks, k_windows, v_windows, lin_num, lin_den, key_bounds,
                              config, interpret)
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


def window_softmax(q_chunks: jax.Array, k_windows: jax.Array, v_windows: jax.Array,
                   key_valid: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Unnormalised softmax over each window with c = row max (method.md §2), in XLA.

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


def xla_window_attention(q_chunks: jax.Array, k_windows: jax.Array, v_windows: jax.Array,
                         lin_num: jax.Array, lin_den: jax.Array, key_bounds: jax.Array,
                         chunks_per_step: int | None = None) -> jax.Array:
  """``window_attention`` with the XLA backend, in q's dtype.

  ``chunks_per_step``: None materialises every chunk's scores at once (and keeps them for the
  backward pass); n runs ``lax.map`` over groups of n chunks and recomputes them group by group
  in the backward pass (``jax.checkpoint``), so score memory is one group's.
  """
  key_valid = key_valid_from_bounds(jnp.asarray(key_bounds), k_windows.shape[2])
  if chunks_per_step is None:
    a_s, n_s = window_softmax(q_chunks, k_windows, v_windows, key_valid)
  else:
    a_s, n_s = _mapped_window_softmax(q_chunks, k_windows, v_windows, key_valid, chunks_per_step)
  return joint_normalise(a_s, n_s, lin_num, lin_den).astype(q_chunks.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def fused_window_attention(q_chunks: jax.Array, k_windows: jax.Array, v_windows: jax.Array,
                           lin_num: jax.Array, lin_den: jax.Array, key_bounds: jax.Array,
                           config: WindowKernelConfig = WindowKernelConfig(),
                           interpret: bool = False,
                           chunks_per_step: int | None = None) -> jax.Array:
  """``window_attention`` with the Pallas kernel (backward: see the module docstring).

  ``interpret`` runs the kernel in Pallas interpret mode (any backend; slow, for tests);
  ``chunks_per_step`` only shapes the backward pass (``xla_window_attention``).
  """
  return _pallas_forward(q_chunks, k_windows, v_windows, lin_num, lin_den, key_bounds, config,
                         interpret)[0]


def _fused_fwd(q_chunks, k_windows, v_windows, lin_num, lin_den, key_bounds, config, interpret,
               chunks_per_step):
  out, row_max, row_sum = _pallas_forward(q_chunks, k_windows, v_windows, lin_num, lin_den,
                                          key_bounds, config, interpret)
  inputs = (q_chunks, k_windows, v_windows, lin_num, lin_den, key_bounds)
  return out, (inputs, (out, row_max, row_sum))


def _fused_bwd(config, interpret, chunks_per_step, residuals, cotangent):
  (q_chunks, k_windows, v_windows, lin_num, lin_den, key_bounds), (out, row_max, row_sum) = residuals
  # The linear branch's cotangents are row-wise; only dq, dk, dv need the scores again.
  da, dn, dlin_den = row_cotangents(out, row_sum, lin_den, cotangent)
  if config.backward == "pallas":
    dq, dk, dv = fused_qkv_cotangents(q_chunks, k_windows, v_windows, key_bounds, row_max, da, dn,
                                      config, interpret)
  else:
    xla = lambda q, k, v: xla_window_attention(q, k, v, lin_num, lin_den, key_bounds,
                                               chunks_per_step)
    _, vjp = jax.vjp(xla, q_chunks, k_windows, v_windows)
    dq, dk, dv = vjp(cotangent)
  # Integer key bounds get no cotangent.
  return dq, dk, dv, da.astype(lin_num.dtype), dlin_den.astype(lin_den.dtype), None


fused_window_attention.defvjp(_fused_fwd, _fused_bwd)

# 'pallas_bwd': the fused kernel for the backward pass too (EXPERIMENTAL, window_backward.py);
# 'pallas_tpu': the Mosaic TPU forward (EXPERIMENTAL, window_tpu.py).
BACKENDS = ("auto", "xla", "pallas", "pallas_bwd", "pallas_tpu")


def tileable_head_dim(head_dim: int) -> bool:
  """The kernels' tiles (Triton, Mosaic) need a power-of-two head dim of at least 16."""
  return head_dim >= 16 and head_dim & (head_dim - 1) == 0


def resolve_backend(backend: str, head_dim: int) -> str:
  """'auto' -> 'pallas' on GPU for a tileable head dim, 'xla' otherwise (TPU included, until
  'pallas_tpu' has run on one); ValueError for an unknown name.

  With several devices 'auto' picks the kernel only under a context mesh (``jax.set_mesh``)
  covering them, where it runs per batch/head shard (``kernel_sharding``); without one GSPMD
  would gather the kernel's operands onto every device, so XLA is used. 'pallas' forces it.
  """
  if backend not in BACKENDS:
    raise ValueError(f"unknown hybrid window backend {backend!r}; choose one of {BACKENDS}")
  if backend == "auto":
    on_gpu = jax.default_backend() == "gpu"
    sharded_or_single = jax.device_count() in (1, context_mesh_size())
    return "pallas" if on_gpu and sharded_or_single and tileable_head_dim(head_dim) else "xla"
  return backend


def window_attention(q_chunks: jax.Array, k_windows: jax.Array, v_windows: jax.Array,
                     lin_num: jax.Array, lin_den: jax.Array, key_bounds: jax.Array, *,
                     backend: str = "auto", chunks_per_step: int | None = None,
                     kernel_config: WindowKernelConfig = WindowKernelConfig()) -> jax.Array:
  """y = (a_S + lin_num) / guard(n_S + lin_den) for every chunk window, in q's dtype.

  q_chunks [B, C, Tc*HW, H, D]; k/v_windows [B, C, (To+Tc)*HW, H, D]; lin_num [B, C, Tc*HW,
  H, D], lin_den [B, C, Tc*HW, H] (float32); key_bounds int32 [C, 2] (static or traced):
  window slots [lo_c, hi_c) of chunk c hold keys of S_t, the others (before the video start,
  padding of a shorter last chunk) are masked. ``backend``: 'xla', 'pallas' (the fused kernel,
  per batch/head shard of the context mesh; Pallas interpret mode off GPU; XLA backward),
  'pallas_bwd' (the fused backward kernels as well; experimental), 'pallas_tpu' (the Mosaic
  TPU forward; experimental) or 'auto' (``resolve_backend``).
  """
  head_dim = q_chunks.shape[-1]
  requested, backend = backend, resolve_backend(backend, head_dim)
  if backend == "xla":
    return xla_window_attention(q_chunks, k_windows, v_windows, lin_num, lin_den, key_bounds,
                                chunks_per_step)
  if backend == "pallas_bwd":
    kernel_config = dataclasses.replace(kernel_config, backward="pallas")
  if backend == "pallas_tpu":
    kernel_config = dataclasses.replace(kernel_config, platform="tpu")
  interpret = jax.default_backend() != kernel_config.platform
  if not interpret and not tileable_head_dim(head_dim):
    raise ValueError(f"window backend {requested!r}: the fused kernel needs a power-of-two head "
                     f"dim >= 16, got {head_dim}; use backend='xla' (or 'auto')")
  kernel = lambda *xs: fused_window_attention(*xs, kernel_config, interpret, chunks_per_step)
  per_token = (0, 3)  # [B, C, T, H, ...]: batch and head dims
  return map_over_batch_and_heads(
      kernel, (q_chunks, k_windows, v_windows, lin_num, lin_den, jnp.asarray(key_bounds, jnp.int32)),
      (per_token,) * 5 + (None,))
