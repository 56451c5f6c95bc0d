"""Run a Pallas attention kernel per device shard under the context mesh.

A ``pallas_call`` carries no sharding rule: under a multi-device ``jit`` GSPMD would gather its
operands onto every device and run the whole kernel everywhere. Attention is independent per
sample and per head, so the kernels here (the fused ReHyAt window, TPU splash) are wrapped in
``jax.shard_map`` over the batch axes (data, fsdp) and the head axis (tensor) of the mesh set
with ``jax.set_mesh`` (the training loop sets it). Without a context mesh, when neither the
batch nor the head count divides over its axes, or inside a ``shard_map`` that made those axes
manual already (the sequence-parallel form, ``sequence_parallel.py``), the kernel runs as is.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
from jax.sharding import PartitionSpec as P

from rehyat_jax.core.sharding import BATCH_AXES, HEAD_AXIS

# (batch dim, head dim) of an operand, or None for an operand every shard needs whole.
Layout = tuple[int, int] | None


def context_mesh_size() -> int:
  """Devices of the mesh set with ``jax.set_mesh`` (1 when none is set)."""
  mesh = jax.sharding.get_abstract_mesh()
  return 1 if mesh.empty else math.prod(mesh.shape.values())


def batch_and_head_axes(mesh, batch: int, heads: int) -> tuple[tuple[str, ...], str | None]:
  """The batch and head mesh axes that divide ``batch`` and ``heads`` (size-1 axes dropped, and
  axes already manual: inside a ``shard_map`` over them, e.g. the sequence-parallel form's, the
  operands are per-shard already)."""
  manual = set(getattr(mesh, "manual_axes", ()))
  sizes = {name: size for name, size in mesh.shape.items() if name not in manual}
  batch_axes = tuple(a for a in BATCH_AXES if sizes.get(a, 1) > 1)
  if batch % math.prod(sizes[a] for a in batch_axes):
    batch_axes = ()
  head_axis = HEAD_AXIS if sizes.get(HEAD_AXIS, 1) > 1 and heads % sizes[HEAD_AXIS] == 0 else None
  return batch_axes, head_axis


def _spec(ndim: int, layout: Layout, batch_axes: tuple[str, ...], head_axis: str | None) -> P:
  entries: list = [None] * ndim
  if layout is not None:
    batch_dim, head_dim = layout
    entries[batch_dim] = batch_axes or None
    entries[head_dim] = head_axis
  return P(*entries)


def map_over_batch_and_heads(fn: Callable[..., jax.Array], args: Sequence[jax.Array],
                             layouts: Sequence[Layout]) -> jax.Array:
  """``fn(*args)``, run per (batch, head) shard of the context mesh when one is set.

  ``layouts[i]`` names the batch and head dims of ``args[i]`` (None: replicated operand). The
  single output must be shaped like the first operand with a layout (attention: like q), whose
  batch and head sizes decide the sharding.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or context_mesh_size() == 1:
    return fn(*args)
  first = next(i for i, layout in enumerate(layouts) if layout is not None)
  batch_dim, head_dim = layouts[first]
  batch_axes, head_axis = batch_and_head_axes(mesh, args[first].shape[batch_dim],
                                         args[first].shape[head_dim])
  if not batch_axes and head_axis is None:
    return fn(*args)
  in_specs = tuple(_spec(x.ndim, layout, batch_axes, head_axis) for x, layout in zip(args, layouts))
  return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=in_specs[first],
                       check_vma=False)(*args)
