"""Logical axis names carried by every parameter, and the helper that attaches them.

Names used by the model and the feature maps:
  embed       model width (dim)                      embed_out  output side of a dim -> dim embedding
  heads       attention width (num_heads * head_dim, or the head axis of per-head weights)
  mlp         FFN hidden width                       text_embed umT5 width (4096)
  modulation  6 * dim time projection output         patch_in   input channels of the patch embedding
  norm        norm scales, biases and modulation tables
  layers      the stacked block axis of the scanned layout
  None        never sharded
Training maps these to mesh axes with logical-axis rules (``train/``).
"""

from __future__ import annotations

from typing import Sequence

from flax import nnx

LOGICAL_AXES = ("embed", "embed_out", "heads", "mlp", "text_embed", "modulation", "patch_in", "norm", "layers")


def logical(init, axes: Sequence[str | None]):
  """Attach logical axis names to an initializer.

  Sharding is applied by the training code under a mesh, never at creation: eager sharding
  would make building a model outside a mesh an error.
  """
  unknown = [a for a in axes if a is not None and a not in LOGICAL_AXES]
  if unknown:
    raise ValueError(f"unknown logical axis names {unknown}; known: {LOGICAL_AXES}")
  return nnx.with_partitioning(init, tuple(axes), eager_sharding=False)
