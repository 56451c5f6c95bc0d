"""Checkpoint conversion: PyTorch Wan2.1 checkpoints (DiT, umT5 text encoder, VAE) -> converted checkpoints
``dst/{config.json, conversion.json, params/}`` (an Orbax tree of the JAX parameters), and loading them back.

Core, shared by every converter:

- ``sources``: ``TensorSource``, the one read interface (shapes and dtypes from headers, tensors on demand),
  opened from safetensors (single file, sharded set, directory; memory-mapped) or a torch pickle; ``CheckpointError``.
- ``key_rows``: ``KeyRow`` (source key -> target leaf, layer, transform), the transforms between torch and JAX
  layouts, ``KeyTemplates`` (a layout's keys as literals, per-block templates expanded per layer), layout
  detection, and ``check_source`` (every missing / unexpected / mis-shaped / non-float tensor in one error).
- ``storage``: the converted-checkpoint directory: preallocated buffers filled tensor by tensor, written to a
  temporary directory renamed at the end; reading it back (``restore_params``).

Per model, tables plus the few lines that differ (layout names, config detection, conversion record, loading):

- ``wan_dit_keys`` + ``wan_dit``: the Wan2.1 T2V DiT (original or diffusers layout; ``convert_wan_checkpoint``);
- ``umt5``: the umT5 encoder (transformers or Wan's layout; ``convert_umt5_checkpoint`` / ``load_umt5``);
- ``wan_vae``: the VAE (diffusers or original; ``convert_wan_vae`` / ``load_wan_vae``);
- ``random_checkpoint``: random-weight DiT checkpoints in either layout, for tests and benchmarks.

``loading`` builds a ready ``WanDiT`` (teacher or ReHyAt student) from a converted DiT (``load_pretrained``);
``student`` reads and writes student exports.
"""

from rehyat_jax.convert.key_rows import KeyRow, KeyTemplates
from rehyat_jax.convert.loading import load_pretrained
from rehyat_jax.convert.sources import (
    CheckpointError,
    TensorInfo,
    TensorSource,
    open_safetensors_source,
    open_torch_source,
    read_safetensors_header,
    read_tensor,
)
from rehyat_jax.convert.storage import restore_params, write_converted
from rehyat_jax.convert.wan_dit import (
    check_source,
    convert_wan_checkpoint,
    detect_config,
    detect_layout,
    read_converted,
    read_converted_config,
)
from rehyat_jax.convert.wan_dit_keys import (
    Layout,
    diffusers_to_original_keys,
    expected_source_keys,
    original_key_table,
    original_to_diffusers_keys,
    source_key_table,
    target_shapes,
)

__all__ = [
    "CheckpointError",
    "KeyRow",
    "KeyTemplates",
    "Layout",
    "TensorInfo",
    "TensorSource",
    "check_source",
    "convert_wan_checkpoint",
    "detect_config",
    "detect_layout",
    "diffusers_to_original_keys",
    "expected_source_keys",
    "load_pretrained",
    "open_safetensors_source",
    "open_torch_source",
    "original_key_table",
    "original_to_diffusers_keys",
    "read_converted",
    "read_converted_config",
    "read_safetensors_header",
    "read_tensor",
    "restore_params",
    "source_key_table",
    "target_shapes",
    "write_converted",
]
