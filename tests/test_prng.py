"""``core.prng.normal`` draws exactly what ``jax.random.normal`` draws (it only avoids the slow CPU compile of
multi-dimensional random bits), for every rank, dtype and under vmap. Shapes stay small: the reference draws of
rank >= 3 are the slow compiles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rehyat_jax.core import prng


@pytest.mark.parametrize("shape,dtype", [((), jnp.float32), ((3, 4), jnp.float32), ((2, 3, 4), jnp.float32),
                                         ((1, 2, 1, 2, 3), jnp.float32), ((2, 1, 3), jnp.bfloat16)])
def test_same_values_as_jax_random_normal(shape, dtype):
  key = jax.random.key(7)
  expected = jax.random.normal(key, shape, dtype)
  drawn = prng.normal(key, shape, dtype)
  assert drawn.shape == shape and drawn.dtype == dtype
  np.testing.assert_array_equal(np.asarray(drawn, np.float32), np.asarray(expected, np.float32))


def test_same_values_under_vmap():
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(1), i))(jnp.arange(3))
  expected = jax.vmap(lambda k: jax.random.normal(k, (2, 2, 3)))(keys)
  np.testing.assert_array_equal(jax.vmap(lambda k: prng.normal(k, (2, 2, 3)))(keys), expected)
