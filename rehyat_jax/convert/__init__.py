"""Checkpoint conversion: PyTorch Wan2.1 checkpoints → Orbax checkpoints of the scanned JAX parameter tree.

``convert_wan_checkpoint(src, dst)`` reads a Wan2.1 T2V DiT in the original (``Wan-AI/Wan2.1-T2V-*``) or
diffusers (``WanTransformer3DModel``) layout from safetensors (single file, sharded set, or directory; fp32 /
bf16 / fp16) and writes ``dst/{config.json, conversion.json, params/}``; ``read_converted`` /
``restore_params`` load it back (optionally straight into sharded ``jax.Array``s).

Modules: ``key_table`` (the explicit source key → target leaf table and the target shapes),
``safetensors_source`` (header-only listing and memory-mapped streaming of safetensors), ``wan_dit``
(layout / config detection, validation, conversion, Orbax I/O), ``loading`` (``load_pretrained``: a
converted checkpoint -> a teacher or ReHyAt-student ``WanDiT``, optionally sharded on a mesh).
"""

from rehyat_jax.convert.key_table import (
    Layout,
    TargetSlot,
    diffusers_to_original_keys,
    expected_source_keys,
    original_key_table,
    original_to_diffusers_keys,
    source_key_table,
    target_shapes,
)
from rehyat_jax.convert.loading import load_pretrained
from rehyat_jax.convert.safetensors_source import (
    CheckpointError,
    SafetensorsSource,
    TensorInfo,
    open_safetensors_source,
    read_safetensors_header,
    read_tensor,
)
from rehyat_jax.convert.wan_dit import (
    check_source,
    convert_wan_checkpoint,
    detect_config,
    detect_layout,
    read_converted,
    read_converted_config,
    restore_params,
)

__all__ = [
    "CheckpointError",
    "Layout",
    "SafetensorsSource",
    "TargetSlot",
    "TensorInfo",
    "check_source",
    "convert_wan_checkpoint",
    "detect_config",
    "detect_layout",
    "diffusers_to_original_keys",
    "expected_source_keys",
    "load_pretrained",
    "open_safetensors_source",
    "original_key_table",
    "original_to_diffusers_keys",
    "read_converted",
    "read_converted_config",
    "read_safetensors_header",
    "read_tensor",
    "restore_params",
    "source_key_table",
    "target_shapes",
]
