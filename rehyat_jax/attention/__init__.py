"""Attention: softmax backends and the ReHyAt hybrid (reference / parallel / scan forms), with the
softmax window of the parallel and scan forms in XLA or in fused Pallas kernels (window*.py).

``hybrid_attention`` is the entry point; ``recurrent_chunk_step`` and ``init_recurrent_state``
are the chunk-wise RNN step the recurrent DiT reuses; ``FeatureMap`` builds phi_q / phi_k.
"""

from rehyat_jax.attention.chunking import ChunkGeometry, make_geometry, validate_hybrid_inputs
from rehyat_jax.attention.feature_maps import FeatureMap, FeatureMapConfig, PhiParam
from rehyat_jax.attention.hybrid import MODES, hybrid_attention
from rehyat_jax.attention.numerics import DENOMINATOR_FLOOR, PHI_LIMIT, joint_normalise
from rehyat_jax.attention.parallel import parallel_hybrid_attention
from rehyat_jax.attention.reference import reference_hybrid_attention
from rehyat_jax.attention.scan import (RecurrentState, init_recurrent_state, recurrent_chunk_step,
                                       scan_hybrid_attention)

__all__ = [
    "ChunkGeometry", "DENOMINATOR_FLOOR", "FeatureMap", "FeatureMapConfig", "MODES", "PHI_LIMIT",
    "PhiParam", "RecurrentState", "hybrid_attention", "init_recurrent_state", "joint_normalise",
    "make_geometry", "parallel_hybrid_attention", "recurrent_chunk_step",
    "reference_hybrid_attention", "scan_hybrid_attention", "validate_hybrid_inputs",
]
