"""What every kernel window backend shares: the ``jax.custom_vjp`` around a kernel forward, the
row-wise part of its backward, the "xla" backward, and the per-shard dispatch. Operands are in
the band layout (``band.py``): q, lin_num [B, Tq, H, D], k, v [B, Tk, H, D], lin_den [B, Tq, H].

A kernel forward returns the output and the residuals c (row max, log2 units) and n_S. Per
query row it computed (docs/method.md §2, c the row max, p_j = exp(s_j - c)):

    a = sum_j p_j v_j,  n = sum_j p_j,  den = max(n + w, F n),  y = (a + u) / den

with u = lin_num, w = lin_den and F = DENOMINATOR_FLOOR. Given dy, with g = 1 where the guard is
inactive (n + w >= F n) and F otherwise:

    du = da = dy / den                      dden = -(dy . y) / den
    dn = g * dden                           dw = dden where the guard is inactive, else 0

These row-wise cotangents (``row_cotangents``) need only y and n, so the linear branch's
gradients cost O(N D) whatever computes dq, dk, dv from da and dn: the entry's chosen backward,
either "xla" (``xla_qkv_cotangents``: ``jax.vjp`` of the XLA window's a_S, n_S, scores
materialised) or fused kernels (``triton_backward.py``). Neither needs lin_num again, so it is not
kept for the backward pass. Ties at the guard (n + w == F n exactly) take the unguarded branch
here, where ``jnp.maximum`` would split the gradient; that set has measure zero.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from rehyat_jax.attention.kernel_sharding import map_over_batch_and_heads
from rehyat_jax.attention.numerics import DENOMINATOR_FLOOR
from rehyat_jax.attention.window.band import WindowBand
from rehyat_jax.attention.window.kernel_common import WindowKernelConfig, tileable_head_dim
from rehyat_jax.attention.window.registry import WindowBackend
from rehyat_jax.attention.window.xla import band_softmax_sums


class KernelResiduals(NamedTuple):
  """What a kernel's backward gets: the forward's inputs (not lin_num: no backward needs it, and
  at [B, Tq, H, D] float32 it is the largest of them), its output and its statistics."""

  q: jax.Array
  k: jax.Array
  v: jax.Array
  lin_den: jax.Array
  key_floor: jax.Array
  out: jax.Array
  row_max: jax.Array  # c in log2 units, [B, Tq, H]
  row_sum: jax.Array  # n_S, [B, Tq, H]


def row_cotangents(out, row_sum, lin_den, cotangent):
  """The row-wise part of the chain rule (module docstring): da (= du), dn and dw, float32.

  Needs only the forward's output and n_S, so the linear branch's cotangents (all that stage-1
  distillation needs: q, k, v are frozen there) cost O(N D) whatever computes dq, dk, dv.
  """
  unguarded = row_sum + lin_den >= DENOMINATOR_FLOOR * row_sum
  den = jnp.where(unguarded, row_sum + lin_den, DENOMINATOR_FLOOR * row_sum)
  dy = cotangent.astype(jnp.float32)
  da = dy / den[..., None]
  dden = -jnp.sum(dy * out.astype(jnp.float32), axis=-1) / den
  dn = jnp.where(unguarded, dden, DENOMINATOR_FLOOR * dden)
  dlin_den = jnp.where(unguarded, dden, 0.0)
  return da, dn, dlin_den


def xla_qkv_cotangents(res: KernelResiduals, cotangent, da, dn, *, band: WindowBand,
                       config: WindowKernelConfig, interpret: bool,
                       window_chunks_per_step: int | None):
  """Backward "xla" of the kernel backends: dq, dk, dv by ``jax.vjp`` of the XLA window's a_S, n_S
  (``xla.band_softmax_sums``, grouped by ``window_chunks_per_step`` as in its forward) at the
  row-wise cotangents da, dn, as the fused backward kernels use them."""
  del cotangent, config, interpret
  sums = lambda q, k, v: band_softmax_sums(q, k, v, res.key_floor, band, window_chunks_per_step)
  _, vjp = jax.vjp(sums, res.q, res.k, res.v)
  return vjp((da, dn))


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9, 10, 11))
def fused_window_attention(q: jax.Array, k: jax.Array, v: jax.Array, lin_num: jax.Array,
                           lin_den: jax.Array, key_floor: jax.Array, band: WindowBand,
                           forward: Callable, backward: Callable, config: WindowKernelConfig,
                           interpret: bool, window_chunks_per_step: int | None) -> jax.Array:
  """``window_attention`` through a kernel ``forward`` with the dq/dk/dv ``backward`` (an
  entry's ``WindowBackward.fn``). ``interpret``: Pallas interpret mode (any backend; slow, for
  tests); ``window_chunks_per_step`` only shapes the "xla" backward."""
  return forward(q, k, v, lin_num, lin_den, key_floor, band, config, interpret)[0]


def _fused_fwd(q, k, v, lin_num, lin_den, key_floor, band, forward, backward, config, interpret,
               window_chunks_per_step):
  out, row_max, row_sum = forward(q, k, v, lin_num, lin_den, key_floor, band, config, interpret)
  return out, KernelResiduals(q, k, v, lin_den, key_floor, out, row_max, row_sum)


def _fused_bwd(band, forward, backward, config, interpret, window_chunks_per_step, res, cotangent):
  del forward
  # The linear branch's cotangents are row-wise; only dq, dk, dv need the scores again.
  da, dn, dlin_den = row_cotangents(res.out, res.row_sum, res.lin_den, cotangent)
  dq, dk, dv = backward(res, cotangent, da, dn, band=band, config=config, interpret=interpret,
                        window_chunks_per_step=window_chunks_per_step)
  # lin_num, lin_den are float32 (``window_attention`` casts them); the key floor gets no cotangent.
  return dq, dk, dv, da, dlin_den, None


fused_window_attention.defvjp(_fused_fwd, _fused_bwd)


def run_kernel_backend(entry: WindowBackend, window_backward: str, q: jax.Array, k: jax.Array,
                       v: jax.Array, lin_num: jax.Array, lin_den: jax.Array, key_floor: jax.Array,
                       band: WindowBand, *, window_chunks_per_step: int | None,
                       kernel_config: WindowKernelConfig) -> jax.Array:
  """A kernel entry's window, per batch/head shard of the context mesh (``kernel_sharding``),
  compiled on the entry's platforms and in Pallas interpret mode elsewhere."""
  head_dim = q.shape[-1]
  interpret = not entry.compiles_here()
  if not interpret and not tileable_head_dim(head_dim):
    raise ValueError(f"window_backend {entry.name!r}: the fused kernel needs a power-of-two head "
                     f"dim >= 16, got {head_dim}; use window_backend='xla' (or 'auto')")
  backward = entry.backwards[window_backward].fn
  kernel = lambda *xs: fused_window_attention(*xs, band, entry.forward, backward, kernel_config,
                                              interpret, window_chunks_per_step)
  per_token = (0, 2)  # [B, T, H, ...]: batch and head dims
  return map_over_batch_and_heads(kernel, (q, k, v, lin_num, lin_den, key_floor),
                                  (per_token,) * 5 + (None,))
