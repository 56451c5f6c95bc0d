"""Device mesh from config (data, fsdp, sequence, tensor axes) for any device count, single- or multi-process."""

from __future__ import annotations

import math
import os

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from rehyat_jax.core.sharding import BATCH_AXES, MESH_AXES, SEQUENCE_AXIS  # noqa: F401 (re-exported)


def initialize_distributed(mesh_cfg) -> None:
  """``jax.distributed.initialize`` when the config asks for several processes (GPU hosts, or CPU
  processes over gloo for tests), or on a multi-host TPU slice (which describes itself). Must run
  before anything touches a JAX backend."""
  if mesh_cfg.num_processes > 1:
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=mesh_cfg.coordinator_address or None,
                               num_processes=mesh_cfg.num_processes, process_id=mesh_cfg.process_id)
  elif mesh_cfg.auto_distributed:
    jax.distributed.initialize()  # TPU VMs describe the slice themselves; nothing may touch the backend first


def resolve_mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, ...]:
  """Sizes of the ``MESH_AXES`` (data, fsdp, sequence, tensor); one -1 is filled with the remaining
  devices. A config without ``mesh.sequence`` (older configs) has a sequence axis of size 1."""
  sizes = [int(getattr(mesh_cfg, name, 1)) for name in MESH_AXES]
  fields = "/".join(MESH_AXES)
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh: at most one of mesh.{fields} may be -1, got {dict(zip(MESH_AXES, sizes))}")
  for name, size in zip(MESH_AXES, sizes):
    if size == 0 or size < -1:
      raise ValueError(f"mesh.{name} must be a positive size or -1, got {size}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f"mesh: {num_devices} devices are not divisible by the fixed axes "
                       f"{dict(zip(MESH_AXES, sizes))}")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    # The sequence axis is named only when it is in use, so the usual message stays short.
    named = [(name, size) for name, size in zip(MESH_AXES, sizes) if name != SEQUENCE_AXIS or size != 1]
    raise ValueError(f"mesh: {'*'.join(n for n, _ in named)} = {math.prod(sizes)} but there are {num_devices} "
                     f"devices ({', '.join(f'mesh.{n}={v}' for n, v in named)})")
  return tuple(sizes)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  shape = resolve_mesh_shape(mesh_cfg, len(devices))
  if jax.process_count() > 1:
    grid = mesh_utils.create_device_mesh(shape, devices=devices)
  else:
    grid = np.asarray(devices).reshape(shape)
  # Auto axes: the model is annotated (GSPMD style), not written with explicit shardings.
  return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
