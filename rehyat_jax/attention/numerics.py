"""Numerics shared by every hybrid form: the joint normalisation of docs/method.md §2, its guards,
and the matmul precision.

All three forms (reference, parallel, recurrent) end in ``joint_normalise`` and clamp the feature
maps with ``clamp_features``, so they agree exactly on the guarded regime as well.

**Decision — denominator guard.** With c the row max over S_t, n_S >= 1, but phi_q . z_L is
signed (the degree-1 part of phi is), so n_S + phi_q . z_L could reach zero or go negative.
We use

    den = max(n_S + phi_q . z_L, DENOMINATOR_FLOOR * n_S),   DENOMINATOR_FLOOR = 0.01

(= n_S + max(phi_q . z_L, -0.99 n_S), but the floor is computed without cancellation), i.e. the
linear branch may cancel at most 99 % of the local softmax mass: den >= 0.01 n_S >= 0.01 > 0
always, and den is exactly n_S + phi_q . z_L whenever phi_q . z_L > -0.99 n_S (every ordinary
value; an untrained student has phi_q . z_L ~ 0). On the floored side the gradient w.r.t.
phi_q . z_L is zero and n_S gets DENOMINATOR_FLOOR times the denominator's gradient.

**Decision — feature clamp.** Finite but huge phi (say 1e30) would overflow the float32 sums
phi_k v^T and phi_q . KV_L to Inf (and Inf - Inf to NaN). phi entries are clamped to
[-PHI_LIMIT, PHI_LIMIT] = [-1e4, 1e4] before use: the identity for any sane feature map
(a default map at init gives |phi| ~ 1e-3), and it bounds |phi_q . z_L| by
D' * N * 1e8 ~ 3e15 for D'=256, N=131k, so forward and backward stay far inside float32 range.
Outside the clamp the gradient w.r.t. phi is zero.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

DENOMINATOR_FLOOR = 1e-2
PHI_LIMIT = 1e4


def clamp_features(phi: jax.Array) -> jax.Array:
  """Clamps feature-map values to [-PHI_LIMIT, PHI_LIMIT] (see module docstring)."""
  return jnp.clip(phi, -PHI_LIMIT, PHI_LIMIT)


def guarded_denominator(n_s: jax.Array, lin_den: jax.Array) -> jax.Array:
  """n_S + phi_q . z_L, floored at DENOMINATOR_FLOOR * n_S (see module docstring)."""
  return jnp.maximum(n_s + lin_den, DENOMINATOR_FLOOR * n_s)


def joint_normalise(a_s: jax.Array, n_s: jax.Array, lin_num: jax.Array,
                    lin_den: jax.Array) -> jax.Array:
  """y = (a_S + phi_q . KV_L) / guarded(n_S + phi_q . z_L), in float32.

  a_s, lin_num: [..., D]; n_s, lin_den: [...] (float32). The linear terms are not scaled by
  exp(-c): that is the method's convention (§2).
  """
  den = guarded_denominator(n_s.astype(jnp.float32), lin_den.astype(jnp.float32))
  num = a_s.astype(jnp.float32) + lin_num.astype(jnp.float32)
  return num / den[..., None]


def feature_einsum(subscripts: str, features: jax.Array, other: jax.Array) -> jax.Array:
  """An einsum of feature-map values with another operand, float32 result.

  **Decision — linear-branch precision.** float32 features: float32 arithmetic (HIGHEST), the
  path the forms' equivalence tests hold to float32 round-off. Lower-precision features (bf16 in
  a bf16 model): both operands in the features' dtype, so the products run on tensor cores /
  the MXU, accumulated in float32. The states (sums over up to N tokens) are accumulated in
  float32 this way and rounded to the features' dtype only as an operand of the readout, which
  costs ~2^-9 relative error per state entry, the same order as the bf16 softmax window beside it.
  """
  highest = jax.lax.Precision.HIGHEST
  if features.dtype == jnp.float32:
    return jnp.einsum(subscripts, features, other.astype(jnp.float32), precision=highest)
  other = other.astype(features.dtype)
  if jax.default_backend() == "cpu":
    # XLA:CPU has no BF16 x BF16 -> F32 dot for some shapes. Upcasting is the same function:
    # bf16 values and their products are exact in float32, accumulation is float32 either way.
    return jnp.einsum(subscripts, features.astype(jnp.float32), other.astype(jnp.float32),
                      precision=highest)
  return jnp.einsum(subscripts, features, other, preferred_element_type=jnp.float32)


def matmul_precision(dtype: jnp.dtype) -> jax.lax.Precision:
  """HIGHEST for float32 operands (no TF32 / bf16 passes on GPU, TPU), DEFAULT otherwise.

  float32 inputs mean float32 arithmetic here: the forms are tested against each other to
  float32 round-off, which TF32 (10-bit mantissa) would break on GPU.
  """
  if jnp.dtype(dtype) == jnp.float32:
    return jax.lax.Precision.HIGHEST
  return jax.lax.Precision.DEFAULT
