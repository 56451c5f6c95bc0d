"""The window-backend registry: entries, 'auto' resolution and validation of the two settings
``window_backend`` ('auto' or a ``WINDOW_BACKENDS`` name) and ``window_backward`` ('auto' = the
running entry's default backward, or a backward some entry offers).

An entry says how the softmax window of docs/method.md §2 runs forward, which backward passes
(dq, dk, dv) it offers, where it compiles, whether it is experimental, and what it is in one
line. A backend module registers its entry at import (``register_window_backend``); the
package ``__init__`` imports every backend module once.

Two kinds of entry:

- plain XLA (``platforms=None``): ``forward(q_chunks, k_windows, v_windows, lin_num, lin_den,
  key_bounds, window_chunks_per_step)`` is the differentiable window function itself; JAX
  differentiates it, so its one backward has no implementation (``WindowBackward(None, ...)``).
- Pallas kernel (``platforms`` = the ``jax.default_backend()`` names where it compiles;
  elsewhere it runs in Pallas interpret mode): ``forward(q_chunks, k_windows, v_windows,
  lin_num, lin_den, key_bounds, config, interpret)`` returns (output, row max in log2 units,
  n_S), and each backward's ``fn`` computes dq, dk, dv for the shared ``jax.custom_vjp`` of
  ``fused.py`` (the linear branch's cotangents are row-wise and common to all kernels).
"""

from __future__ import annotations

import dataclasses
import types
from typing import Callable, Mapping

import jax

from rehyat_jax.attention.kernel_sharding import context_mesh_size
from rehyat_jax.attention.window.kernel_common import tileable_head_dim

AUTO = "auto"


@dataclasses.dataclass(frozen=True)
class WindowBackward:
  """One backward pass an entry offers: ``fn`` computes dq, dk, dv (None: JAX autodiff)."""

  fn: Callable | None
  summary: str
  experimental: bool = False


@dataclasses.dataclass(frozen=True, eq=False)
class WindowBackend:
  """A registered window backend (module docstring). ``backwards``: name -> ``WindowBackward``,
  the first one being the default."""

  name: str
  summary: str
  forward: Callable
  backwards: Mapping[str, WindowBackward]
  platforms: tuple[str, ...] | None
  experimental: bool = False

  def __post_init__(self):
    if not self.backwards:
      raise ValueError(f"window backend {self.name!r} offers no backward")
    object.__setattr__(self, "backwards", types.MappingProxyType(dict(self.backwards)))
    if self.platforms is not None:
      object.__setattr__(self, "platforms", tuple(self.platforms))

  @property
  def is_kernel(self) -> bool:
    """A Pallas kernel (compiled on ``platforms``, interpreted elsewhere) rather than plain XLA."""
    return self.platforms is not None

  @property
  def default_backward(self) -> str:
    return next(iter(self.backwards))

  def compiles_here(self) -> bool:
    """True where the forward is compiled code: plain XLA anywhere, a kernel on its platforms."""
    return self.platforms is None or jax.default_backend() in self.platforms


# name -> entry, in registration order ('auto' considers kernels in this order).
WINDOW_BACKENDS: dict[str, WindowBackend] = {}


def register_window_backend(entry: WindowBackend) -> WindowBackend:
  """Adds ``entry`` to ``WINDOW_BACKENDS``; ValueError for a taken name or the reserved 'auto'."""
  if entry.name == AUTO or entry.name in WINDOW_BACKENDS:
    raise ValueError(f"window backend name {entry.name!r} is reserved or already registered")
  WINDOW_BACKENDS[entry.name] = entry
  return entry


def window_backend_names() -> tuple[str, ...]:
  """Every valid ``window_backend`` value: 'auto' then the registered names."""
  return (AUTO, *WINDOW_BACKENDS)


def window_backward_names() -> tuple[str, ...]:
  """Every valid ``window_backward`` value: 'auto' (the running entry's default backward) then
  every backward some entry offers, in registration order."""
  return (AUTO, *dict.fromkeys(b for entry in WINDOW_BACKENDS.values() for b in entry.backwards))


def auto_backward_names() -> tuple[str, ...]:
  """The backwards window_backend 'auto' accepts: 'auto' and every non-experimental backward some
  entry offers."""
  return (AUTO, *dict.fromkeys(name for entry in WINDOW_BACKENDS.values()
                               for name, backward in entry.backwards.items() if not backward.experimental))


def check_window_settings(window_backend: str, window_backward: str) -> None:
  """ValueError naming the bad value and the valid ones, else None.

  ``window_backend`` must be 'auto' or a registered name. ``window_backward`` must be offered by
  the named backend. **Decision:** 'auto' never runs experimental code, so with 'auto' only the
  non-experimental backwards are accepted (``auto_backward_names``; an experimental one must be
  asked for together with the backend that offers it). The backend is only known per call
  (platform, head dim, mesh): when the resolved backend does not offer the requested backward,
  its default backward runs instead (``effective_backward``).
  """
  if window_backend not in WINDOW_BACKENDS and window_backend != AUTO:
    raise ValueError(f"unknown window_backend {window_backend!r}; choose one of {window_backend_names()}")
  if window_backward == AUTO:  # the running entry's default backward: valid with any backend
    return
  if window_backend == AUTO and window_backward not in auto_backward_names():
    owners = [name for name, entry in WINDOW_BACKENDS.items() if window_backward in entry.backwards]
    if owners:
      raise ValueError(f"window_backward {window_backward!r} is experimental: window_backend 'auto' never picks "
                       f"experimental code; name the backend that offers it ({' or '.join(map(repr, owners))})")
  offered = auto_backward_names() if window_backend == AUTO else (AUTO, *WINDOW_BACKENDS[window_backend].backwards)
  if window_backward not in offered:
    raise ValueError(f"window_backward {window_backward!r} is not offered by window_backend "
                     f"{window_backend!r}; choose one of {offered}")


def resolve_window_backend(window_backend: str, head_dim: int) -> str:
  """The registered name that runs: ``window_backend`` itself, or what 'auto' picks.

  'auto': the first non-experimental kernel entry that compiles on this platform (today: the
  fused Triton kernel on GPU), for a tileable head dim (``kernel_common.tileable_head_dim``),
  when there is one device or a context mesh (``jax.set_mesh``) covers them all (the kernel then
  runs per batch/head shard, ``kernel_sharding``; without one GSPMD would gather its operands
  onto every device); else 'xla'. 'auto' never picks an experimental entry. Naming a kernel
  forces it. ValueError for an unknown name.
  """
  if window_backend != AUTO:
    check_window_settings(window_backend, WINDOW_BACKENDS[window_backend].default_backward
                          if window_backend in WINDOW_BACKENDS else "")
    return window_backend
  sharded_or_single = jax.device_count() in (1, context_mesh_size())
  if sharded_or_single and tileable_head_dim(head_dim):
    for name, entry in WINDOW_BACKENDS.items():
      if entry.is_kernel and not entry.experimental and entry.compiles_here():
        return name
  return "xla"


def effective_backward(entry: WindowBackend, window_backward: str) -> str:
  """``window_backward`` if ``entry`` offers it, else (and for 'auto') the entry's default."""
  return window_backward if window_backward in entry.backwards else entry.default_backward
