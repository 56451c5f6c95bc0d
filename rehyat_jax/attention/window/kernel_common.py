"""What the fused window kernels (forward in window.py, backward in window_backward.py) share:
tile configuration, padding to tiles, matmul precision and the score constants."""

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
  """Tile sizes and Triton launch parameters of the fused window kernel.

  Defaults: the fastest of a 16-point sweep (block_q 64/128, block_k 64/128, 4/8 warps, 2/3
  stages) at Wan2.1-1.3B heads, 21 latent frames, bf16, on an H200 (docs/benchmarks.md).

  ``backward``: 'xla' (``jax.vjp`` of the XLA window for dq, dk, dv; scores materialised) or
  'pallas' (the fused flash-style backward of ``window_backward.py``; EXPERIMENTAL: tested in
  interpret mode only, not yet compiled or timed on a GPU). ``platform``: 'gpu' (Triton
  lowering, window.py) or 'tpu' (Mosaic TPU lowering, window_tpu.py; EXPERIMENTAL, forward only).
  """

  block_q: int = 128
  block_k: int = 64
  num_warps: int = 4
  num_stages: int = 2
  backward: str = "xla"
  platform: str = "gpu"

  def __post_init__(self):
    if self.backward not in ("xla", "pallas"):
      raise ValueError(f"WindowKernelConfig.backward must be 'xla' or 'pallas', got {self.backward!r}")
    if self.platform not in ("gpu", "tpu"):
      raise ValueError(f"WindowKernelConfig.platform must be 'gpu' or 'tpu', got {self.platform!r}")
    if self.platform == "tpu" and self.backward == "pallas":
      raise ValueError("WindowKernelConfig: the fused backward kernels exist for platform='gpu' only")
    for name in ("block_q", "block_k"):
      value = getattr(self, name)
      if value < 16 or value & (value - 1):
        raise ValueError(f"WindowKernelConfig.{name} must be a power of two >= 16, got {value}")


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
