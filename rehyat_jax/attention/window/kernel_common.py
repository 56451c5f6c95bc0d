"""What the fused window kernels (triton_forward.py, triton_backward.py, mosaic_tpu.py) share:
tile configuration, the head dims they can tile, padding to tiles, matmul precision and the
score constants."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

LOG2_E = math.log2(math.e)
# A finite mask value: exp2(mask - m) underflows to exactly 0 for any finite row max m, and
# masked-only blocks never occur (every visited key block holds a key of S_t), so no inf - inf.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


@dataclasses.dataclass(frozen=True)
class WindowKernelConfig:
  """Tile sizes and Triton launch parameters of the fused window kernels (every kernel backend
  reads the tile sizes; num_warps / num_stages are Triton's).

  Defaults: the fastest of a 16-point sweep (block_q 64/128, block_k 64/128, 4/8 warps, 2/3
  stages) at Wan2.1-1.3B heads, 21 latent frames, bf16, on an H200 (docs/benchmarks.md).
  Which kernel runs and which backward it uses are the ``window_backend`` and
  ``window_backward`` settings, not part of this tiling.
  """

  block_q: int = 128
  block_k: int = 64
  num_warps: int = 4
  num_stages: int = 2

  def __post_init__(self):
    for name in ("block_q", "block_k"):
      value = getattr(self, name)
      if value < 16 or value & (value - 1):
        raise ValueError(f"WindowKernelConfig.{name} must be a power of two >= 16, got {value}")


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


def kernel_precision(dtype) -> jax.lax.Precision:
  return jax.lax.Precision.HIGHEST if dtype == jnp.float32 else jax.lax.Precision.DEFAULT
