"""Random arrays of any rank at the compile cost of one dimension.

With JAX's partitionable threefry (the default since jax 0.5) XLA on CPU compiles the random bits of a
3-D or higher shape very slowly: ``jax.random.normal(key, (1, 16, 9, 8, 12))`` took 45 s to compile on
2 CPU cores with jax 0.10.2, the same draw as a flat vector under 1 s. The partitionable generator makes
element i of a shape from i's row-major index alone, so drawing ``prod(shape)`` values and reshaping
gives exactly the same array (tests/test_prng.py checks it); ``normal`` here does that.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp


def normal(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
  """``jax.random.normal(key, shape, dtype)``, drawn flat and reshaped (same values, fast to compile)."""
  shape = tuple(int(n) for n in shape)
  if len(shape) <= 2:
    return jax.random.normal(key, shape, dtype)
  return jax.random.normal(key, (math.prod(shape),), dtype).reshape(shape)
