"""Learned feature maps phi_q, phi_k of ReHyAt's linear branch (docs/method.md §3), by kind.

registry.py           ``FeatureMapConfig`` (kind + options), ``FEATURE_MAPS``, ``register_feature_map``,
                      ``build_feature_map``, ``PhiParam``, ``FEATURE_MAP_BACKENDS``
mlp_power.py          kind "mlp_power": per-head MLP, part i of ``degree`` raised to the power i
mlp_power_triton.py   its fused Pallas Triton kernel (backend 'pallas', experimental)

A new kind is one new file (options dataclass + module, registered with
``@register_feature_map``), one import line below, and its test.
"""

from rehyat_jax.attention.feature_maps.registry import (FEATURE_MAP_BACKENDS, FEATURE_MAPS, FeatureMapConfig,
                                                        FeatureMapEntry, PhiParam, build_feature_map,
                                                        register_feature_map)
# One import per kind: importing a kind's module registers it.
from rehyat_jax.attention.feature_maps.mlp_power import (ACTIVATIONS, MAX_DEGREE, MlpPowerFeatureMap,
                                                         MlpPowerOptions)

__all__ = [
    "ACTIVATIONS", "FEATURE_MAP_BACKENDS", "FEATURE_MAPS", "FeatureMapConfig", "FeatureMapEntry", "MAX_DEGREE",
    "MlpPowerFeatureMap", "MlpPowerOptions", "PhiParam", "build_feature_map", "register_feature_map",
]
