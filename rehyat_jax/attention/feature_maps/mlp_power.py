"""Feature map kind "mlp_power": the per-head MLP with powered parts of ReHyAt (docs/method.md §3).

Per head (a grouped 1x1 convolution): psi(x) = W2 act(W1 x + b1) + b2, psi split into P equal
parts of Dp, phi = concat(psi_1^1, psi_2^2, ..., psi_P^P), D' = P * Dp. Parameters are float32
``PhiParam``s named w1, b1, w2, b2 (exported student checkpoints hold these names and shapes:
keep them).

**Decision — precision.** float32 input: float32 arithmetic throughout (HIGHEST matmuls), the
path of the equivalence tests. bf16 (or fp16) input, as in a bf16 model: the two matmuls take
their operands and results in the input's dtype (tensor cores / MXU; true float32 matmuls ran
several times slower on an H200 and were a third of a student block's time), accumulating in
float32; bias, activation and powers are float32 elementwise work on the rounded results; phi
is returned in the input's dtype, which halves the bytes of the [B, N, H, D'] features.

**Decision — initialisation.** W1 is LeCun-normal per head (std 1/sqrt(D)), b1 = b2 = 0, and
W2 ~ N(0, (init_scale / sqrt(hidden))^2) with init_scale = 1e-3, i.e. 1e-3 times LeCun.
Then |psi| ~ 1e-3 and |phi| <= ~1e-3, so phi_q . z_L and phi_q . KV_L are tiny next to the
softmax mass n_S >= 1 and an untrained student is close to chunk-local softmax.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from rehyat_jax.attention.feature_maps.mlp_power_triton import PhiKernelSettings, fused_mlp_power, kernel_shapes_ok
from rehyat_jax.attention.feature_maps.registry import (FEATURE_MAP_BACKENDS, FeatureMapConfig, PhiParam,
                                                        register_feature_map)
from rehyat_jax.core.sharding import logical

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # exact erf GELU, as torch's default
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "identity": lambda x: x,
}
MAX_DEGREE = 4


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class MlpPowerOptions:
  """Hyper-parameters of an "mlp_power" map; defaults give ~1.2M parameters for 12 heads x 128."""

  degree: int = 2
  hidden: int = 256
  feature_dim: int = 128
  activation: str = "gelu"
  init_scale: float = 1e-3

  def __post_init__(self):
    if not _is_int(self.degree) or not 1 <= self.degree <= MAX_DEGREE:
      raise ValueError(f"degree must be in 1..{MAX_DEGREE}, got {self.degree!r}")
    if not _is_int(self.hidden) or self.hidden < 1:
      raise ValueError(f"hidden must be >= 1, got {self.hidden!r}")
    if not _is_int(self.feature_dim) or self.feature_dim < 1:
      raise ValueError(f"feature_dim must be >= 1, got {self.feature_dim!r}")
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"unknown activation {self.activation!r}; choose one of {sorted(ACTIVATIONS)}")
    if isinstance(self.init_scale, bool) or not isinstance(self.init_scale, numbers.Real):
      raise ValueError(f"init_scale must be a number, got {self.init_scale!r}")
    # Plain Python numbers (a NumPy int from a sweep would not be JSON-able in ``to_dict``).
    for name, cast in (("degree", int), ("hidden", int), ("feature_dim", int), ("init_scale", float)):
      object.__setattr__(self, name, cast(getattr(self, name)))

  @property
  def output_dim(self) -> int:
    """D' = degree * feature_dim."""
    return self.degree * self.feature_dim


def _lecun_per_head(scale: float = 1.0) -> nnx.Initializer:
  # batch_axis=0 keeps the head axis out of fan-in: fan-in is the per-head input size.
  return jax.nn.initializers.variance_scaling(scale ** 2, "fan_in", "truncated_normal",
                                              in_axis=-2, out_axis=-1, batch_axis=(0,))


@register_feature_map("mlp_power", options=MlpPowerOptions,
                      summary="per-head MLP psi = W2 act(W1 x + b1) + b2, part i of `degree` raised to i")
class MlpPowerFeatureMap(nnx.Module):
  """phi: [B, N, H, D] -> [B, N, H, degree * feature_dim], independent weights per head; float32
  unless the input is bf16/fp16 (then in the input's dtype: module docstring)."""

  def __init__(self, config: FeatureMapConfig, num_heads: int, head_dim: int, *, rngs: nnx.Rngs):
    if config.kind != "mlp_power":
      raise ValueError(f"MlpPowerFeatureMap needs a config of kind 'mlp_power', got {config.kind!r}")
    self.config = config
    self.num_heads = num_heads
    self.head_dim = head_dim
    out = config.output_dim
    matrix_names, vector_names = ("heads", None, None), ("heads", None)
    w1_init = logical(_lecun_per_head(), matrix_names)
    w2_init = logical(_lecun_per_head(config.init_scale), matrix_names)
    zeros = logical(nnx.initializers.zeros_init(), vector_names)
    # Keys drawn in this order (w1, b1, w2, b2): a given seed must keep giving the same values.
    self.w1 = PhiParam(w1_init(rngs.params(), (num_heads, head_dim, config.hidden), jnp.float32))
    self.b1 = PhiParam(zeros(rngs.params(), (num_heads, config.hidden), jnp.float32))
    self.w2 = PhiParam(w2_init(rngs.params(), (num_heads, config.hidden, out), jnp.float32))
    self.b2 = PhiParam(zeros(rngs.params(), (num_heads, out), jnp.float32))

  @property
  def output_dim(self) -> int:
    return self.config.output_dim

  def __call__(self, x: jax.Array, *, backend: str = "xla") -> jax.Array:
    """phi of x. ``backend``: 'xla', or 'pallas' for the fused kernel of ``mlp_power_triton.py``
    (bf16/fp16 input, power-of-two sizes >= 16; experimental, measured on no GPU yet)."""
    if x.ndim != 4 or x.shape[2:] != (self.num_heads, self.head_dim):
      raise ValueError(f"feature map expects [B, N, {self.num_heads}, {self.head_dim}], "
                       f"got {tuple(x.shape)}")
    options = self.config.options
    weights = (self.w1[...], self.b1[...], self.w2[...], self.b2[...])
    if backend == "xla":
      return _mlp_power(x, *weights, degree=options.degree, activation=options.activation)
    if backend != "pallas":
      raise ValueError(f"unknown feature_map_backend {backend!r}; choose one of {FEATURE_MAP_BACKENDS}")
    if x.dtype not in (jnp.bfloat16, jnp.float16) or not kernel_shapes_ok(self.head_dim, options.hidden,
                                                                          self.output_dim):
      raise ValueError(f"feature_map_backend 'pallas' needs bf16/fp16 input and power-of-two head dim, hidden "
                       f"and output dim >= 16; got {x.dtype}, {self.head_dim}, {options.hidden}, "
                       f"{self.output_dim}: use 'xla'")
    settings = PhiKernelSettings(options.degree, options.feature_dim, options.activation)
    return fused_mlp_power(x, *weights, settings, _mlp_power)


def _mlp_power(x: jax.Array, w1: jax.Array, b1: jax.Array, w2: jax.Array, b2: jax.Array, *, degree: int,
               activation: str) -> jax.Array:
  """The map in XLA (module docstring's precision decision): the 'xla' backend and the kernel's backward."""
  out_dtype = x.dtype if x.dtype in (jnp.bfloat16, jnp.float16) else jnp.float32
  x = x.astype(out_dtype)
  hidden = _per_head_matmul("bnhd,hdk->bnhk", x, w1) + b1
  hidden = ACTIVATIONS[activation](hidden)
  psi = _per_head_matmul("bnhk,hkp->bnhp", hidden.astype(out_dtype), w2) + b2
  parts = jnp.split(psi, degree, axis=-1)
  phi = jnp.concatenate([part ** power for power, part in enumerate(parts, start=1)], axis=-1)
  return phi.astype(out_dtype)


def _per_head_matmul(subscripts: str, x: jax.Array, weights: jax.Array) -> jax.Array:
  """float32 x: float32 arithmetic (HIGHEST). bf16/fp16 x: operands and result in x's dtype,
  float32 accumulation inside the matmul (module docstring); the result is upcast for the
  float32 elementwise work that follows, which XLA fuses into one pass."""
  if x.dtype == jnp.float32:
    return jnp.einsum(subscripts, x, weights, precision=jax.lax.Precision.HIGHEST)
  return jnp.einsum(subscripts, x, weights.astype(x.dtype)).astype(jnp.float32)
