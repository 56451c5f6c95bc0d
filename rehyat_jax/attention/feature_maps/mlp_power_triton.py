"""The "mlp_power" feature map as one fused Pallas Triton kernel (GPU; Pallas interpret mode elsewhere).

Why: in XLA the map is two per-head matmuls with the bias, activation, powers and casts as separate
fusions between them, and the [B, N, H, hidden] activation makes a round trip through device memory in
both dtypes (profile of a 1.3B student forward at 21 latent frames on an H200: ≈ 20 ms of casts around
φ's matmuls per forward, next to ≈ 13 ms of the matmuls themselves; docs/benchmarks.md). Here one program
takes a tile of tokens of one head from x [B, N, H, D] in place, keeps the hidden activation in registers
and writes phi [B, N, H, D'] once.

Same function as ``MlpPowerFeatureMap`` for bf16/fp16 input (docs/method.md §3): matmul operands in the
input's dtype, float32 accumulation, bias / activation / powers in float32, phi in the input's dtype; the
hidden activation is not rounded to the input's dtype before the bias as the XLA path's einsum output is
(it is rounded only as the second matmul's operand). The exact (erf) GELU uses ``_erf`` below (Pallas
Triton has no erf lowering). Backward: ``jax.vjp`` of the XLA map (``custom_vjp``), so training gradients
are exactly the XLA path's.

EXPERIMENTAL: not yet compiled on a GPU; ``RuntimeConfig.feature_map_backend='pallas'`` asks for it, the
default stays 'xla'.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from rehyat_jax.attention.window.kernel_common import load_rows, store_rows

BLOCK_ROWS = 64
NUM_WARPS = 4


def _erf(x: jax.Array) -> jax.Array:
  """float32 erf from exp (W. J. Cody's erfc rational form as in Numerical Recipes' erfcc:
  |error| < 1.2e-7 everywhere), for kernels without an erf lowering."""
  z = jnp.abs(x)
  t = 1.0 / (1.0 + 0.5 * z)
  poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
      -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (
          -0.82215223 + t * 0.17087277))))))))
  erfc = t * jnp.exp(-z * z + poly)
  return jnp.where(x >= 0, 1.0 - erfc, erfc - 1.0)


KERNEL_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: 0.5 * x * (1.0 + _erf(x * 0.7071067811865476)),
    "relu": lambda x: jnp.maximum(x, 0.0),
    "silu": lambda x: x / (1.0 + jnp.exp(-x)),
    "identity": lambda x: x,
}


def _phi_kernel(x_ref, w1_ref, b1_ref, w2_ref, b2_ref, phi_ref, *, rows: int, degree: int, part_dim: int,
                activation: str):
  first = pl.program_id(0) * BLOCK_ROWS
  row_ok = first + jnp.arange(BLOCK_ROWS) < rows
  x = load_rows(x_ref, first, BLOCK_ROWS, row_ok)
  hidden = pltriton.dot(x, w1_ref[...]) + b1_ref[...][None, :]
  hidden = KERNEL_ACTIVATIONS[activation](hidden)
  psi = pltriton.dot(hidden.astype(x.dtype), w2_ref[...]) + b2_ref[...][None, :]
  power = jnp.arange(psi.shape[1]) // part_dim + 1
  phi = psi
  for p in range(2, degree + 1):  # part i raised to i: psi times itself where the column's power reaches p
    phi = phi * jnp.where(power[None, :] >= p, psi, 1.0)
  store_rows(phi_ref, first, phi.astype(phi_ref.dtype), row_ok)


def kernel_shapes_ok(head_dim: int, hidden: int, output_dim: int) -> bool:
  """Triton tiles need power-of-two sizes of at least 16."""
  return all(n >= 16 and n & (n - 1) == 0 for n in (head_dim, hidden, output_dim))


@dataclasses.dataclass(frozen=True)
class PhiKernelSettings:
  """The static part of one map: its degree, the width of each powered part and the activation."""

  degree: int
  part_dim: int
  activation: str


def _fused_forward(x, w1, b1, w2, b2, settings: PhiKernelSettings, interpret: bool):
  b, n, h, d = x.shape
  hidden, out = w1.shape[-1], w2.shape[-1]
  rows = b * n
  dtype = x.dtype
  tokens = lambda width: pl.BlockSpec((rows, None, width), lambda i, j: (0, j, 0))
  per_head = lambda *shape: pl.BlockSpec((None, *shape), lambda i, j: (j,) + (0,) * len(shape))
  phi = pl.pallas_call(
      functools.partial(_phi_kernel, rows=rows, degree=settings.degree, part_dim=settings.part_dim,
                        activation=settings.activation),
      grid=(pl.cdiv(rows, BLOCK_ROWS), h),
      in_specs=[tokens(d), per_head(d, hidden), per_head(hidden), per_head(hidden, out), per_head(out)],
      out_specs=tokens(out),
      out_shape=jax.ShapeDtypeStruct((rows, h, out), dtype),
      compiler_params=pltriton.CompilerParams(num_warps=NUM_WARPS, num_stages=1),
      interpret=interpret, name="rehyat_phi_mlp_power",
  )(x.reshape(rows, h, d), w1.astype(dtype), b1.astype(jnp.float32), w2.astype(dtype), b2.astype(jnp.float32))
  return phi.reshape(b, n, h, out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def fused_mlp_power(x, w1, b1, w2, b2, settings: PhiKernelSettings, reference: Callable):
  """phi of ``x`` [B, N, H, D] (bf16/fp16) with per-head weights w1 [H, D, K], b1 [H, K], w2 [H, K, D'],
  b2 [H, D'], by the kernel (compiled on GPU, interpreted elsewhere). ``reference(x, w1, b1, w2, b2, *,
  degree, activation)`` is the XLA map (a module-level function, so jit caches see one object), whose VJP
  is the backward."""
  return _fused_forward(x, w1, b1, w2, b2, settings, jax.default_backend() != "gpu")


def _fwd(x, w1, b1, w2, b2, settings, reference):
  return fused_mlp_power(x, w1, b1, w2, b2, settings, reference), (x, w1, b1, w2, b2)


def _bwd(settings, reference, residuals, cotangent):
  xla_map = functools.partial(reference, degree=settings.degree, activation=settings.activation)
  _, vjp = jax.vjp(xla_map, *residuals)
  return vjp(cotangent)


fused_mlp_power.defvjp(_fwd, _bwd)
