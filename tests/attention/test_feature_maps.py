"""Feature map kind "mlp_power": shapes, parameter count, the degree-P powers, PhiParam filtering,
annotations, values for a fixed seed."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hybrid_cases import apply_phi, normal
from rehyat_jax.attention import FeatureMapConfig, PhiParam, build_feature_map


def _make(num_heads: int, head_dim: int, *, rngs=None, **options) -> nnx.Module:
  config = FeatureMapConfig("mlp_power", **options)
  return build_feature_map(config, num_heads, head_dim, rngs=rngs or nnx.Rngs(0))


def _count(state) -> int:
  return sum(x.size for x in jax.tree.leaves(state))


def test_default_parameter_count_is_about_1_2m():
  heads, head_dim, hidden, degree, feature_dim = 12, 128, 256, 2, 128
  phi = nnx.eval_shape(lambda: _make(heads, head_dim))
  expected = heads * (head_dim * hidden + hidden + hidden * degree * feature_dim
                      + degree * feature_dim)
  assert _count(nnx.state(phi, PhiParam)) == expected == 1_185_792
  assert abs(expected - 1.2e6) / 1.2e6 < 0.02


@pytest.mark.parametrize("degree", [1, 4])
def test_shapes_and_dtype(degree):
  phi = _make(3, 8, degree=degree, hidden=16, feature_dim=5)
  (out,) = apply_phi(phi, jnp.ones((2, 7, 3, 8), jnp.bfloat16))
  # bf16 in -> bf16 out (tensor-core matmuls), float32 in -> float32 out (the exact path).
  assert out.shape == (2, 7, 3, degree * 5) and out.dtype == jnp.bfloat16
  (out32,) = apply_phi(phi, jnp.ones((2, 7, 3, 8), jnp.float32))
  assert out32.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(out32), rtol=2e-2, atol=1e-5)
  assert phi.output_dim == degree * 5


@pytest.mark.parametrize("activation", ["gelu", "relu", "silu", "identity"])
def test_degree_powers_match_manual_computation(activation):
  phi = _make(2, 4, degree=3, hidden=6, feature_dim=2, activation=activation, init_scale=1.0)
  x = normal(1, (1, 5, 2, 4))
  act = {"gelu": lambda h: jax.nn.gelu(h, approximate=False), "relu": jax.nn.relu,
         "silu": jax.nn.silu, "identity": lambda h: h}[activation]
  w1, b1, w2, b2 = (np.asarray(p[...], np.float64) for p in (phi.w1, phi.b1, phi.w2, phi.b2))
  x64 = np.asarray(x, np.float64)
  expected = np.zeros((1, 5, 2, 6))
  for head in range(2):
    hidden = np.asarray(act(x64[:, :, head] @ w1[head] + b1[head]), np.float64)
    psi = hidden @ w2[head] + b2[head]
    expected[:, :, head] = np.concatenate([psi[..., 0:2], psi[..., 2:4] ** 2, psi[..., 4:6] ** 3], -1)
  np.testing.assert_allclose(apply_phi(phi, x)[0], expected, rtol=1e-5, atol=1e-6)


def test_small_last_layer_init():
  phi = _make(12, 128)
  std = float(jnp.std(phi.w2[...]))
  assert 0.3e-3 / 16 < std < 1.5e-3 / 16  # init_scale 1e-3 times LeCun 1/sqrt(256)
  (out,) = apply_phi(phi, normal(0, (1, 4, 12, 128)))
  assert float(np.max(np.abs(out))) < 1e-2


def test_phi_param_filter_selects_exactly_the_feature_maps():
  class Block(nnx.Module):
    def __init__(self, rngs):
      self.proj = nnx.Linear(4, 4, rngs=rngs)
      self.phi_q = _make(2, 2, hidden=3, feature_dim=2, rngs=rngs)
      self.phi_k = _make(2, 2, hidden=3, feature_dim=2, rngs=rngs)

  block = Block(nnx.Rngs(0))
  selected = nnx.state(block, PhiParam)
  paths = {tuple(str(p) for p in path) for path, _ in nnx.to_flat_state(selected)}
  assert paths == {(m, w) for m in ("phi_q", "phi_k") for w in ("w1", "b1", "w2", "b2")}
  assert _count(nnx.state(block, nnx.Not(PhiParam))) == 4 * 4 + 4


def test_parameters_carry_sharding_annotations():
  specs = nnx.get_partition_spec(nnx.state(_make(2, 4, hidden=3, feature_dim=2)))
  assert specs["w1"].get_value() == jax.P("heads", None, None)
  assert specs["b1"].get_value() == jax.P("heads", None)
  assert specs["w2"].get_value() == jax.P("heads", None, None)
  assert specs["b2"].get_value() == jax.P("heads", None)


def test_config_validation():
  with pytest.raises(ValueError, match="degree must be in 1..4"):
    FeatureMapConfig(degree=5)
  with pytest.raises(ValueError, match="unknown activation 'tanh'"):
    FeatureMapConfig(activation="tanh")
  with pytest.raises(ValueError, match="feature map expects"):
    _make(2, 4, hidden=3, feature_dim=2)(jnp.ones((1, 3, 2, 5)))
  assert FeatureMapConfig().output_dim == 256


def test_values_for_a_seed_do_not_change():
  """Exported students and seeded runs rely on these exact initial values (pinned from the
  implementation before the feature-map registry existed)."""
  phi = _make(3, 16, rngs=nnx.Rngs(7), degree=3, hidden=6, feature_dim=2, activation="silu", init_scale=0.5)
  assert {name: getattr(phi, name).shape for name in ("w1", "b1", "w2", "b2")} == {
      "w1": (3, 16, 6), "b1": (3, 6), "w2": (3, 6, 6), "b2": (3, 6)}
  w1, w2 = (np.asarray(getattr(phi, name)[...], np.float64) for name in ("w1", "w2"))
  np.testing.assert_allclose(w1.reshape(-1)[:3], [0.29536622762680054, 0.03841026872396469, -0.1411309540271759],
                             rtol=1e-6)
  np.testing.assert_allclose(w2.reshape(-1)[:3], [-0.17968371510505676, -0.14260677993297577,
                                                  -0.36657342314720154], rtol=1e-6)
  np.testing.assert_allclose([w1.sum(), np.abs(w1).sum()], [3.2354142948170193, 59.19841286371229], rtol=1e-5)
  np.testing.assert_allclose([w2.sum(), np.abs(w2).sum()], [-0.6290125208906829, 19.11632657935843], rtol=1e-5)
  x = np.random.default_rng(0).standard_normal((1, 5, 3, 16)).astype(np.float32)
  np.testing.assert_allclose(float(np.abs(np.asarray(phi(x), np.float64)).sum()), 14.02169849040935, rtol=1e-5)
