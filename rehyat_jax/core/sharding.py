"""Mesh axes, the logical axis names carried by every parameter and the helper that attaches them,
and helpers that read the context mesh (``jax.set_mesh``) for activations.

Names used by the model and the feature maps:
  embed       model width (dim)                      embed_out  output side of a dim -> dim embedding
  heads       attention width (num_heads * head_dim, or the head axis of per-head weights)
  mlp         FFN hidden width                       text_embed umT5 width (4096)
  modulation  6 * dim time projection output         patch_in   input channels of the patch embedding
  norm        norm scales, biases and modulation tables
  layers      the stacked block axis of the scanned layout
  vocab       token vocabulary (umT5 embedding rows)  relpos_buckets  umT5 relative-position buckets
  conv_in     input channels of a VAE conv kernel     conv_out   its output channels
  None        never sharded
Training maps these to mesh axes with the rules below (``DEFAULT_RULES``). Parameters never
split over the sequence axis; activations do (``shard_tokens``).
"""

from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx
from jax.sharding import PartitionSpec as P

# Mesh axes of every run (train/mesh.py builds the mesh): batch over data and fsdp, the tokens
# (latent frames, in whole chunks) over sequence, attention heads and FFN width over tensor.
# Kernels without sharding rules (Pallas) map over the same axes. Later axes vary fastest over
# the device list, so tensor (most traffic) and then sequence get the nearest devices.
MESH_AXES = ("data", "fsdp", "sequence", "tensor")
BATCH_AXES = ("data", "fsdp")
SEQUENCE_AXIS = "sequence"
HEAD_AXIS = "tensor"

LOGICAL_AXES = ("embed", "embed_out", "heads", "mlp", "text_embed", "modulation", "patch_in", "norm", "layers",
                "vocab", "relpos_buckets", "conv_in", "conv_out")


def logical(init, axes: Sequence[str | None]):
  """Attach logical axis names to an initializer.

  Sharding is applied by the training code under a mesh, never at creation: eager sharding
  would make building a model outside a mesh an error.
  """
  unknown = [a for a in axes if a is not None and a not in LOGICAL_AXES]
  if unknown:
    raise ValueError(f"unknown logical axis names {unknown}; known: {LOGICAL_AXES}")
  return nnx.with_partitioning(init, tuple(axes), eager_sharding=False)


# Logical name -> mesh axis. FSDP shards the model width, tensor parallelism the attention and
# FFN widths; names mapped to an axis the mesh lacks fall back to replication.
DEFAULT_RULES: tuple[tuple[str, str | None], ...] = (
    ("embed", "fsdp"), ("heads", "tensor"), ("mlp", "tensor"), ("modulation", "tensor"), ("embed_out", None),
    ("text_embed", None), ("patch_in", None), ("norm", None), ("layers", None),
    # umT5's embedding is already sharded along its width ("embed"); its 32-row bias tables are tiny.
    ("vocab", None), ("relpos_buckets", None),
    # The VAE is small (~127M parameters) and runs replicated: conv kernels' input / output channels.
    ("conv_in", None), ("conv_out", None))


def rules_for_mesh(axis_names: Sequence[str], rules=DEFAULT_RULES) -> list[tuple[str, str | None]]:
  """``rules`` with every mesh axis that ``axis_names`` lacks replaced by None (replication)."""
  known = {name for name, _ in rules}
  missing = [name for name in LOGICAL_AXES if name not in known]
  if missing:
    raise ValueError(f"sharding rules do not map the logical axes {missing}")
  return [(name, axis if axis is None or axis in axis_names else None) for name, axis in rules]


def mesh_shardings(state, mesh, rules=DEFAULT_RULES):
  """``NamedSharding`` per Variable of an (abstract) NNX state under logical ``rules``."""
  with nnx.logical_axis_rules(rules_for_mesh(mesh.axis_names, rules)):
    return nnx.get_named_sharding(state, mesh)


def context_axis_size(axis: str) -> int:
  """Size of ``axis`` in the mesh set with ``jax.set_mesh``; 1 without a mesh, without that axis,
  or inside a ``shard_map`` that made it manual (the operands there are its shards already)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or axis not in mesh.axis_names or axis in getattr(mesh, "manual_axes", ()):
    return 1
  return dict(mesh.shape)[axis]


def shard_tokens(x: jax.Array, token_dim: int = 1) -> jax.Array:
  """``x`` constrained to split its token dim over the sequence axis of the context mesh (other
  dims left to the partitioner); ``x`` unchanged when there is no sequence axis > 1. Keeps the
  token-wise parts of a block (modulation, FFN, cross-attention) token-sharded around the
  sequence-parallel self-attention instead of gathered."""
  if context_axis_size(SEQUENCE_AXIS) == 1:
    return x
  spec = [P.UNCONSTRAINED] * x.ndim
  spec[token_dim] = SEQUENCE_AXIS
  return jax.lax.with_sharding_constraint(x, P(*spec))
