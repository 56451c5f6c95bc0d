"""The fused "mlp_power" kernel (``feature_maps/mlp_power_triton.py``, Pallas interpret mode here) against
the XLA map it replaces: forward within bf16 rounding, gradients exactly the XLA map's (its backward is the
XLA map's VJP), every activation and degree, and a clear error where it cannot run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rehyat_jax.attention import FeatureMapConfig, build_feature_map
from rehyat_jax.attention.feature_maps.mlp_power_triton import KERNEL_ACTIVATIONS, _erf


def test_kernel_erf_matches_lax_erf():
  x = jnp.linspace(-6.0, 6.0, 20001, dtype=jnp.float32)
  np.testing.assert_allclose(_erf(x), jax.lax.erf(x), atol=5e-7, rtol=0)


@pytest.mark.parametrize("activation", sorted(KERNEL_ACTIVATIONS))
@pytest.mark.parametrize("degree", [1, 2, 4])
def test_kernel_matches_xla_map(activation, degree):
  """rows not a multiple of the kernel's row block (2 x 37 tokens), 3 heads; a trained-looking scale."""
  config = FeatureMapConfig(degree=degree, hidden=32, feature_dim=64 // degree, activation=activation,
                            init_scale=0.5)
  phi = build_feature_map(config, 3, 16, rngs=nnx.Rngs(degree))
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 37, 3, 16)), jnp.bfloat16)
  xla, fused = phi(x), phi(x, backend="pallas")
  assert fused.dtype == xla.dtype == jnp.bfloat16 and fused.shape == xla.shape
  # The kernel keeps the first matmul's result in float32 where the XLA einsum rounds it to bf16:
  # they agree to a few bf16 ulps of phi.
  scale = float(jnp.max(jnp.abs(xla.astype(jnp.float32))))
  np.testing.assert_allclose(fused.astype(jnp.float32), xla.astype(jnp.float32), atol=3e-2 * scale, rtol=0)

  # A loss linear in phi: the same cotangent for both, so the gradients (the XLA map's VJP at the same
  # inputs) must be identical whatever the forwards' round-off.
  weights = jnp.asarray(np.random.default_rng(1).standard_normal(xla.shape), jnp.float32)

  def loss(model, x, backend):
    return jnp.sum(model(x, backend=backend).astype(jnp.float32) * weights)

  grads = [nnx.grad(loss, argnums=(0, 1))(phi, x, backend) for backend in ("xla", "pallas")]
  for got, want in zip(jax.tree.leaves(grads[1]), jax.tree.leaves(grads[0])):
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))


def test_kernel_refuses_what_it_cannot_tile():
  phi = build_feature_map(FeatureMapConfig(hidden=24, feature_dim=16), 2, 16, rngs=nnx.Rngs(0))
  x = jnp.zeros((1, 4, 2, 16), jnp.bfloat16)
  with pytest.raises(ValueError, match="feature_map_backend 'pallas'"):
    phi(x, backend="pallas")
  with pytest.raises(ValueError, match="feature_map_backend 'pallas'"):
    build_feature_map(FeatureMapConfig(hidden=32, feature_dim=16), 2, 16, rngs=nnx.Rngs(0))(
        x.astype(jnp.float32), backend="pallas")
  with pytest.raises(ValueError, match="unknown feature_map_backend"):
    phi(x, backend="cuda")
