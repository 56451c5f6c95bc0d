"""The denominator guard and the feature clamp shared by every form (numerics.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rehyat_jax.attention.numerics import (DENOMINATOR_FLOOR, PHI_LIMIT, clamp_features,
                                           guarded_denominator, joint_normalise)


def test_guard_is_identity_for_ordinary_values():
  n_s = jnp.array([1.0, 3.0, 50.0, 1.0])
  lin_den = jnp.array([0.0, 2.5, -40.0, -0.98])
  np.testing.assert_array_equal(guarded_denominator(n_s, lin_den), n_s + lin_den)


def test_guard_floors_at_a_fraction_of_n_s():
  n_s = jnp.array([1.0, 1.0, 7.0, 7.0, 1.0])
  lin_den = jnp.array([-1.0, -1e30, -7.0, -100.0, -np.finfo(np.float32).max])
  den = guarded_denominator(n_s, lin_den)
  np.testing.assert_allclose(den, DENOMINATOR_FLOOR * n_s, rtol=1e-6)


def test_guard_never_reaches_zero_or_changes_sign():
  n_s = jnp.asarray(np.geomspace(1.0, 1e6, 25, dtype=np.float32))[:, None]
  lin_den = jnp.asarray(np.concatenate([-np.geomspace(1e-3, 1e30, 40), np.geomspace(1e-3, 1e30, 40)]),
                        jnp.float32)[None, :]
  den = guarded_denominator(n_s, lin_den)
  assert bool(jnp.all(den >= DENOMINATOR_FLOOR * n_s * (1 - 1e-6)))
  grads = jax.grad(lambda a, b: jnp.sum(1.0 / guarded_denominator(a, b)), argnums=(0, 1))(n_s, lin_den)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


def test_joint_normalise_formula():
  a_s = jnp.array([[2.0, 4.0]])
  n_s = jnp.array([2.0])
  lin_num = jnp.array([[1.0, -1.0]])
  lin_den = jnp.array([1.0])
  np.testing.assert_allclose(joint_normalise(a_s, n_s, lin_num, lin_den), [[1.0, 1.0]])


def test_clamp_features():
  phi = jnp.array([-1e30, -PHI_LIMIT * 2, -3.0, 0.0, 5.0, 1e30])
  np.testing.assert_array_equal(clamp_features(phi), [-PHI_LIMIT, -PHI_LIMIT, -3.0, 0.0, 5.0, PHI_LIMIT])
