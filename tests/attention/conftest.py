"""Shared settings for the attention tests: float32 by default, deterministic hypothesis."""

import jax
from hypothesis import HealthCheck, settings

jax.config.update("jax_enable_x64", False)

# Deterministic examples (same cases every run, no example database) and no per-example deadline:
# each new shape compiles, which hypothesis' timing would otherwise flag.
settings.register_profile(
    "attention", derandomize=True, deadline=None, max_examples=30, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("attention")
