"""What a run keeps on each device between steps (trainable weights, optimizer state, EMA, frozen weights):
counted from the arrays and their shardings, or planned from abstract shapes before anything is allocated, and
checked against the device's memory so that a mesh too small for the model stops with the figures, not with an
allocator error after loading. Activations, gradients and XLA's scratch come on top while a step runs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rehyat_jax.core import sharding as sharding_lib
from rehyat_jax.train.config_checks import runtime_config, stage_of, student_config
from rehyat_jax.train.errors import ConfigError
from rehyat_jax.train.optimizer import make_optimizer
from rehyat_jax.train.setup import TrainState, init_train_state, random_teacher, state_shardings

PARTS = ("trainable", "optimizer", "ema", "frozen")


def bytes_per_device(tree, shardings) -> int:
  """Bytes one device holds of ``tree`` (arrays or ShapeDtypeStructs) placed with ``shardings`` (a matching
  tree of Shardings): each leaf's shard shape under its sharding, so replicated leaves count whole."""
  leaves = jax.tree_util.tree_leaves(tree)
  placements = jax.tree_util.tree_leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
  if len(leaves) != len(placements):
    raise ValueError(f"{len(leaves)} arrays but {len(placements)} shardings")
  return sum(int(np.prod(sharding.shard_shape(leaf.shape))) * _itemsize(leaf)
             for leaf, sharding in zip(leaves, placements))


def _itemsize(leaf) -> int:
  # PRNG key arrays have an extended dtype, which numpy cannot interpret; it states its own bytes per key.
  if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.extended):
    return leaf.dtype.itemsize
  return jnp.dtype(leaf.dtype).itemsize


def state_bytes(state: TrainState, shardings: TrainState, frozen, frozen_shardings) -> dict[str, int]:
  """Per-device bytes of each part of a run's state."""
  return {"trainable": bytes_per_device(state.trainable, shardings.trainable),
          "optimizer": bytes_per_device(state.opt_state, shardings.opt_state),
          "ema": bytes_per_device(state.ema, shardings.ema), "frozen": bytes_per_device(frozen, frozen_shardings)}


def planned_state_bytes(cfg, mesh) -> dict[str, int]:
  """``state_bytes`` of the run ``cfg`` describes, on ``mesh`` (a Mesh or an AbstractMesh), from abstract
  shapes: the model is built with ``nnx.eval_shape`` (no arrays, no checkpoint read) and placed with the
  trainer's own rules, so the figures are the ones the run will have."""
  stage = stage_of(cfg)
  # Under the logical-axis rules: inside the trainer a context mesh is set, and tracing the constructor then
  # resolves each parameter's logical names ('layers', 'heads', ...) against the mesh's axes.
  with nnx.logical_axis_rules(sharding_lib.rules_for_mesh(mesh.axis_names)):
    model = nnx.eval_shape(lambda: random_teacher(cfg, runtime_config(cfg), student_config(cfg)))
  _, trainable, frozen = nnx.split(model, stage.trainable_filter(cfg), ...)
  tx = make_optimizer(cfg.optim, max(cfg.train.steps // cfg.optim.grad_accum_steps, 1))
  state = jax.eval_shape(lambda t: init_train_state(t, tx, cfg.train.ema_decay), trainable)
  return state_bytes(state, state_shardings(state, tx, mesh), frozen, sharding_lib.mesh_shardings(frozen, mesh))


def memory_line(parts: dict[str, int]) -> str:
  listed = ", ".join(f"{name} {readable_bytes(n)}" for name, n in parts.items() if n or name != "ema")
  return (f"state per device: {readable_bytes(sum(parts.values()))} ({listed}); activations and gradients come on "
          "top during a step")


def check_state_fits(parts: dict[str, int], device: jax.Device | None = None) -> None:
  """ConfigError when the state alone exceeds the memory the device offers (backends that report it: GPU,
  TPU); nothing where it is unknown (CPU)."""
  device = device or jax.local_devices()[0]
  limit = (device.memory_stats() or {}).get("bytes_limit")
  total = sum(parts.values())
  if limit and total > limit:
    raise ConfigError(f"{memory_line(parts)}: that is more than the {readable_bytes(limit)} one {device.device_kind} "
                      "offers before a single activation; split the model over more devices (mesh.fsdp) or keep "
                      "less (train.ema_decay=0 drops the EMA); bench/plan_memory.py prints these figures per mesh")


def readable_bytes(n: int) -> str:
  for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if n >= size:
      return f"{n / size:.2f} {unit}"
  return f"{n} B"
