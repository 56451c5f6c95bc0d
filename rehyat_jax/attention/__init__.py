"""Attention: full softmax attention and ReHyAt (softmax inside temporal chunks + learned linear
attention across chunks, one joint normalisation; docs/method.md) as its own package.

What lives where:

  hybrid.py           ``hybrid_attention``, the entry point, and ``FORMS``
  reference.py        form "reference": dense masked, O(N^2), the ground truth (§1–2 literally)
  parallel.py         form "parallel": chunk-parallel, the training form
  recurrent.py        form "recurrent": the causal chunk-wise RNN (§4), its step and state
  geometry.py         chunk geometry of the key sets (§1) and input validation
  numerics.py         joint normalisation, denominator guard, feature clamp (§2)
  feature_maps/       phi_q, phi_k (§3): ``FeatureMapConfig``, registry, one file per kind
  window/             the softmax window + joint normalisation of the parallel and recurrent
                      forms, one file per backend (XLA, fused Pallas kernels), registry
  sequence_parallel.py  the parallel form with the frames split over the mesh's "sequence" axis
  kernel_sharding.py  running a Pallas kernel per batch/head shard of the context mesh
  softmax.py          full softmax attention (XLA, cuDNN, TPU splash)
  config.py           ``RehyatConfig``: what a student is (imported from its module, not here)

Only ``rehyat_jax.core`` is imported from outside this package.
"""

from rehyat_jax.attention.feature_maps import (FEATURE_MAP_BACKENDS, FEATURE_MAPS, FeatureMapConfig, PhiParam,
                                              build_feature_map)
from rehyat_jax.attention.feature_maps import register_feature_map
from rehyat_jax.attention.geometry import ChunkGeometry, make_geometry, validate_hybrid_inputs
from rehyat_jax.attention.hybrid import FORMS, hybrid_attention
from rehyat_jax.attention.numerics import DENOMINATOR_FLOOR, PHI_LIMIT, joint_normalise
from rehyat_jax.attention.parallel import parallel_hybrid_attention
from rehyat_jax.attention.recurrent import (RecurrentState, init_recurrent_state, recurrent_chunk_step,
                                            recurrent_hybrid_attention)
from rehyat_jax.attention.reference import reference_hybrid_attention
from rehyat_jax.attention.sequence_parallel import (check_sequence_split, linear_state_bytes,
                                                    sequence_parallel_hybrid_attention)
from rehyat_jax.attention.softmax import SOFTMAX_BACKENDS, softmax_attention
from rehyat_jax.attention.window import (WINDOW_BACKENDS, WindowKernelConfig, check_window_chunks_per_step,
                                         check_window_settings, register_window_backend, window_attention)

__all__ = [
    "FEATURE_MAP_BACKENDS",
    "ChunkGeometry", "DENOMINATOR_FLOOR", "FEATURE_MAPS", "FORMS", "FeatureMapConfig", "PHI_LIMIT",
    "PhiParam", "RecurrentState", "SOFTMAX_BACKENDS", "WINDOW_BACKENDS", "WindowKernelConfig",
    "build_feature_map", "check_window_chunks_per_step", "check_window_settings", "hybrid_attention",
    "init_recurrent_state",
    "joint_normalise", "make_geometry", "parallel_hybrid_attention", "recurrent_chunk_step",
    "recurrent_hybrid_attention", "reference_hybrid_attention", "register_feature_map",
    "register_window_backend", "softmax_attention", "validate_hybrid_inputs", "window_attention",
    "check_sequence_split", "linear_state_bytes", "sequence_parallel_hybrid_attention",
]
