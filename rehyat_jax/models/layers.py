"""Small NNX layers shared by the DiT: annotated dense layers, Wan's norms, time/patch embeddings.

Every parameter is created through ``sharding.logical`` so it carries logical axis names
(replicated ones too: an unannotated parameter gets a propagated sharding after step 0 and forces
a recompile). Logical names are listed in ``rehyat_jax.core.sharding``.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rehyat_jax.core.sharding import logical

Axes = Sequence[str | None]

xavier_uniform = nnx.initializers.xavier_uniform()
zeros = nnx.initializers.zeros_init()
ones = nnx.initializers.ones_init()


def annotated_param(init, axes: Axes, rngs: nnx.Rngs, shape, dtype=jnp.float32) -> nnx.Param:
  return nnx.Param(logical(init, axes)(rngs.params(), shape, dtype))


def dense(in_features: int, out_features: int, axes: tuple[str | None, str | None], *, rngs: nnx.Rngs,
          param_dtype: Any = jnp.float32, dtype: Any = jnp.float32, kernel_init=xavier_uniform) -> nnx.Linear:
  """``nnx.Linear`` with logical axes on kernel and bias; computes in ``dtype``."""
  return nnx.Linear(in_features, out_features, dtype=dtype, param_dtype=param_dtype,
                    kernel_init=logical(kernel_init, axes), bias_init=logical(zeros, (axes[1],)), rngs=rngs)


def _normalize_f32(x: jnp.ndarray, eps: float, center: bool) -> jnp.ndarray:
  x = x.astype(jnp.float32)
  if center:
    x = x - jnp.mean(x, axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


def layer_norm(x: jnp.ndarray, eps: float) -> jnp.ndarray:
  """Wan's parameter-free LayerNorm, float32 output (callers decide when to cast)."""
  return _normalize_f32(x, eps, center=True)


class RMSNorm(nnx.Module):
  """WanRMSNorm: normalise in float32, cast back to the input dtype, then scale."""

  def __init__(self, dim: int, eps: float, *, rngs: nnx.Rngs):
    self.eps = eps
    self.scale = annotated_param(ones, ("norm",), rngs, (dim,))

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    y = _normalize_f32(x, self.eps, center=False).astype(x.dtype)
    return y * self.scale[...].astype(x.dtype)


class AffineLayerNorm(nnx.Module):
  """LayerNorm with weight and bias, float32 math (Wan's cross-attention ``norm3``)."""

  def __init__(self, dim: int, eps: float, *, rngs: nnx.Rngs):
    self.eps = eps
    self.scale = annotated_param(ones, ("norm",), rngs, (dim,))
    self.bias = annotated_param(zeros, ("norm",), rngs, (dim,))

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    return layer_norm(x, self.eps) * self.scale[...] + self.bias[...]


def sinusoidal_embedding(t: jnp.ndarray, dim: int) -> jnp.ndarray:
  """[cos, sin] timestep embedding (cos first) with the accuracy of the original's float64 math.

  Wan computes ``t * 10000**(-i/half)`` in float64. A float32 product has an absolute angle
  error up to ~3e-5 for t near 1000 (diffusers' float32 version differs from the original by
  that much). Each frequency is split on the host into ``hi`` (12 significant bits) + ``lo``,
  so ``t * hi`` is exact for integer t < 4096 and the rest enters through the angle-addition
  formula; the result matches float64 to ~1e-7.
  """
  half = dim // 2
  freqs = np.power(10000.0, -np.arange(half, dtype=np.float64) / half)
  mantissa, exponent = np.frexp(freqs)
  hi = np.ldexp(np.round(mantissa * 4096.0) / 4096.0, exponent)
  lo = freqs - hi
  t = t.astype(jnp.float32)[:, None]
  a = t * jnp.asarray(hi.astype(np.float32))[None, :]
  b = t * jnp.asarray(lo.astype(np.float32))[None, :]
  cos_a, sin_a, cos_b, sin_b = jnp.cos(a), jnp.sin(a), jnp.cos(b), jnp.sin(b)
  return jnp.concatenate([cos_a * cos_b - sin_a * sin_b, sin_a * cos_b + cos_a * sin_b], axis=-1)


class MLP2(nnx.Module):
  """Linear -> activation -> Linear (Wan's text and time embeddings)."""

  def __init__(self, in_dim: int, dim: int, activation, *, in_axis: str, rngs: nnx.Rngs,
               param_dtype: Any = jnp.float32, dtype: Any = jnp.float32, kernel_init=xavier_uniform):
    self.activation = activation
    self.linear_1 = dense(in_dim, dim, (in_axis, "embed"), rngs=rngs, param_dtype=param_dtype, dtype=dtype,
                          kernel_init=kernel_init)
    self.linear_2 = dense(dim, dim, ("embed", "embed_out"), rngs=rngs, param_dtype=param_dtype, dtype=dtype,
                          kernel_init=kernel_init)

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    return self.linear_2(self.activation(self.linear_1(x)))


class PatchEmbed(nnx.Module):
  """Conv3d with kernel = stride = patch, as a reshape and one matmul; kernel kept DHWIO."""

  def __init__(self, in_dim: int, dim: int, patch: tuple[int, int, int], *, rngs: nnx.Rngs,
               param_dtype: Any = jnp.float32, dtype: Any = jnp.float32):
    self.patch = tuple(patch)
    self.dtype = dtype
    # xavier over the flattened [in*kt*kh*kw, out] matrix, as Wan's init_weights.
    init = nnx.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=(0, 1, 2, 3), out_axis=4)
    self.kernel = annotated_param(init, (None, None, None, "patch_in", "embed"), rngs,
                                  (*patch, in_dim, dim), param_dtype)
    self.bias = annotated_param(zeros, ("embed",), rngs, (dim,), param_dtype)

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """[B, C, F, H, W] -> [B, F'*H'*W', dim] tokens, frame-major."""
    b, c, f, h, w = x.shape
    pt, ph, pw = self.patch
    if f % pt or h % ph or w % pw:
      raise ValueError(f"latent shape (F={f}, H={h}, W={w}) is not divisible by the patch size {self.patch}")
    x = x.reshape(b, c, f // pt, pt, h // ph, ph, w // pw, pw)
    x = x.transpose(0, 2, 4, 6, 3, 5, 7, 1)  # [B, F', H', W', pt, ph, pw, C]
    x = x.reshape(b, (f // pt) * (h // ph) * (w // pw), pt * ph * pw * c).astype(self.dtype)
    kernel = self.kernel[...].reshape(-1, self.kernel.shape[-1]).astype(self.dtype)
    return x @ kernel + self.bias[...].astype(self.dtype)
