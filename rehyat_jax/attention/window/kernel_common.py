"""What the fused window kernels (triton_forward.py, triton_backward.py, mosaic_tpu.py) share:
tile configuration, the head dims they can tile, the band's row ranges and masked row access of
the Triton kernels, padding to tiles (TPU), matmul precision and the score constants."""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

LOG2_E = math.log2(math.e)
# A finite mask value: exp2(mask - m) underflows to exactly 0 for any finite row max m, and
# masked-only blocks never occur (every visited key block holds a key of S_t), so no inf - inf.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def _check_tile(owner: str, name: str, value: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < 16 or value & (value - 1):
    raise ValueError(f"{owner}.{name} must be a power of two >= 16, got {value!r}")


@dataclasses.dataclass(frozen=True)
class BackwardTiles:
  """Tiles and Triton launch parameters of one fused backward kernel (dq, or dk/dv)."""

  block_q: int
  block_k: int
  num_warps: int = 4
  num_stages: int = 3

  def __post_init__(self):
    for name in ("block_q", "block_k"):
      _check_tile("BackwardTiles", name, getattr(self, name))

  def for_dtype(self, dtype) -> "BackwardTiles":
    """These tiles for 2-byte operands; halved (at least 16) for float32, whose tiles need twice
    the shared memory (the bf16 optimum overflows an H200's 227 KiB in float32). The float32
    path is the reference/test path, not the fast one."""
    if jnp.dtype(dtype).itemsize <= 2:
      return self
    return dataclasses.replace(self, block_q=max(16, self.block_q // 2), block_k=max(16, self.block_k // 2))


@dataclasses.dataclass(frozen=True)
class WindowKernelConfig:
  """Tile sizes and Triton launch parameters of the fused window kernels: the forward's
  (block_q, block_k, num_warps, num_stages; every kernel backend reads the tile sizes) and,
  separately, those of the two backward kernels (``dq``, ``dkv``), whose best tiles differ: the
  dq kernel keeps a query tile and streams keys, the dk/dv kernel the reverse.

  Defaults: the fastest of sweeps at Wan2.1-1.3B heads, 21 latent frames, bf16, on an H200
  (bench/tune_window_kernel.py, with and without --backward; docs/benchmarks.md). Which kernel
  runs and which backward it uses are the ``window_backend`` and ``window_backward`` settings,
  not part of this tiling.
  """

  block_q: int = 128
  block_k: int = 64
  num_warps: int = 4
  num_stages: int = 2
  dq: BackwardTiles = BackwardTiles(block_q=128, block_k=64, num_warps=8, num_stages=3)
  dkv: BackwardTiles = BackwardTiles(block_q=64, block_k=128, num_warps=8, num_stages=3)

  def __post_init__(self):
    for name in ("block_q", "block_k"):
      _check_tile("WindowKernelConfig", name, getattr(self, name))

  @classmethod
  def uniform(cls, block: int, num_warps: int = 4, num_stages: int = 2) -> "WindowKernelConfig":
    """One square tile for every kernel (small tiles for interpret-mode tests)."""
    tiles = BackwardTiles(block, block, num_warps, num_stages)
    return cls(block, block, num_warps, num_stages, dq=tiles, dkv=tiles)


def tileable_head_dim(head_dim: int) -> bool:
  """The kernels' tiles (Triton, Mosaic) need a power-of-two head dim of at least 16."""
  return head_dim >= 16 and head_dim & (head_dim - 1) == 0


def round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


def pad_flat(x: jax.Array, length: int) -> jax.Array:
  """[B, C, T, ...] -> [B*C, length, ...], zero rows appended along T."""
  pad = [(0, 0)] * x.ndim
  pad[2] = (0, length - x.shape[2])
  x = jnp.pad(x, pad)
  return x.reshape(x.shape[0] * x.shape[1], length, *x.shape[3:])


def band_rows(first_row, block_rows: int, band, key_floor, num_queries: int, num_keys: int,
              block_k: int):
  """Inside a Triton kernel, for the query rows [first_row, first_row + block_rows): each row's key
  range [lo, hi) (``WindowBand.key_range`` of its chunk; vectors) and ``LoopBlocks``: the key blocks
  of ``block_k`` keys that cover the union of those ranges, and among them the ones inside every
  row's range (no mask needed there). Ranges grow with the row, so the first row has the smallest
  hi and the last the largest lo."""
  rows = first_row + jnp.arange(block_rows)
  lo, hi = band.key_range(rows // band.chunk_tokens, key_floor, num_keys)
  last_row = jnp.minimum(first_row + block_rows, num_queries) - 1
  first_lo, first_hi = band.key_range(first_row // band.chunk_tokens, key_floor, num_keys)
  last_lo, last_hi = band.key_range(last_row // band.chunk_tokens, key_floor, num_keys)
  return lo, hi, LoopBlocks.of(first_lo // block_k, (last_hi + block_k - 1) // block_k,
                               inner_first=(last_lo + block_k - 1) // block_k, inner_last=first_hi // block_k)


class LoopBlocks(NamedTuple):
  """Blocks [first, last) a kernel loops over; [inner_first, inner_last) is the part where every
  element is valid, [first, inner_first) and [inner_last, last) need the element mask."""

  first: jax.Array
  inner_first: jax.Array
  inner_last: jax.Array
  last: jax.Array

  @classmethod
  def of(cls, first, last, *, inner_first, inner_last) -> "LoopBlocks":
    """[first, last) with the interior clipped into it (an empty interior where the bounds cross)."""
    inner_first = jnp.clip(inner_first, first, last)
    return cls(first, inner_first, jnp.clip(inner_last, inner_first, last), last)

  def loop(self, body, init):
    """``body(block, carry, masked)`` over every block: masked edges, unmasked interior."""
    carry = jax.lax.fori_loop(self.first, self.inner_first, lambda i, c: body(i, c, True), init)
    carry = jax.lax.fori_loop(self.inner_first, self.inner_last, lambda i, c: body(i, c, False), carry)
    return jax.lax.fori_loop(self.inner_last, self.last, lambda i, c: body(i, c, True), carry)


def band_scores(q, k, keys, key_lo, key_hi, *, masked: bool, scale: float, precision):
  """The [block_q, block_k] score tile q k^T * scale of a band kernel's query rows against the keys
  ``keys``; on a masked (edge) block, keys outside a row's [key_lo, key_hi) are MASK_VALUE."""
  scores = pltriton.dot(q, k, trans_b=True, precision=precision) * scale
  if not masked:
    return scores
  valid = (keys[None, :] >= key_lo[:, None]) & (keys[None, :] < key_hi[:, None])
  return jnp.where(valid, scores, MASK_VALUE)


def band_block_specs(num_queries: int, head_dim: int):
  """BlockSpecs of the band kernels' (block, batch, head) grid: ``tokens(length)`` gives each
  program the whole [length, D] token axis of its (batch, head) of a [B, length, H, D] operand,
  ``rows`` the [Tq] of a [B, Tq, H] row statistic, ``scalar`` the key floor."""
  tokens = lambda length: pl.BlockSpec((None, length, None, head_dim), lambda i, j, n: (j, 0, n, 0))
  rows = pl.BlockSpec((None, num_queries, None), lambda i, j, n: (j, 0, n))
  scalar = pl.BlockSpec((1,), lambda i, j, n: (0,))
  return tokens, rows, scalar


def load_rows(ref, start, size: int, row_mask=None):
  """Rows [start, start + size) of a [T, ...] ref inside a Triton kernel, zeros where
  ``row_mask`` [size] is False (past the ends: a masked load reads nothing there); None: all
  rows are inside the ref, a plain load."""
  if row_mask is None and ref.shape[0] >= size:
    return ref[pl.ds(start, size)]
  if row_mask is None:  # a ref shorter than one block (tiny test shapes): never read past its end
    row_mask = start + jnp.arange(size) < ref.shape[0]
  mask = row_mask.reshape(row_mask.shape + (1,) * (len(ref.shape) - 1))
  return pltriton.load(ref.at[pl.ds(start, size)], mask=mask, other=0)


def store_rows(ref, start, value, row_mask) -> None:
  """Writes ``value`` to rows [start, start + len(value)) of a [T, ...] ref, where ``row_mask``."""
  mask = row_mask.reshape(row_mask.shape + (1,) * (value.ndim - 1))
  pltriton.store(ref.at[pl.ds(start, value.shape[0])], value, mask=mask)


def kernel_precision(dtype) -> jax.lax.Precision:
  return jax.lax.Precision.HIGHEST if dtype == jnp.float32 else jax.lax.Precision.DEFAULT
