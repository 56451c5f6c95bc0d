"""The softmax window of the parallel and recurrent forms, with the joint normalisation
(docs/method.md §2), behind a registry of backends.

``window_attention`` computes, for every query of every chunk,

    y = (a_S + lin_num) / guard(n_S + lin_den),

a_S, n_S the softmax over the chunk's window with c = the exact row max, lin_num = phi_q . KV_L
and lin_den = phi_q . z_L precomputed by the form. Operands stay in the forms' token layout; a
``WindowBand`` says which keys each query's window holds (``band.py``). Settings: ``window_backend`` ('auto' or a
``WINDOW_BACKENDS`` name), ``window_backward`` (which dq/dk/dv pass a kernel backend uses),
``window_chunks_per_step`` (group size of the XLA window, forward and "xla" backward).

band.py             the band layout: which keys each query sees; per-chunk windows built from it
registry.py         entries, 'auto' resolution, ``check_window_settings``
xla.py              "xla": plain XLA, scores materialised
fused.py            shared by the kernel backends: custom_vjp, row-wise backward, "xla" backward,
                    per-shard dispatch
triton_forward.py   "pallas": fused Triton forward kernel (GPU)
triton_backward.py  its "pallas" backward (the default): fused dq and dk/dv kernels
mosaic_tpu.py       "pallas_tpu": fused Mosaic TPU forward kernel (experimental)
kernel_common.py    tiling (``WindowKernelConfig``), padding, precision, constants of the kernels

A new backend is one new file that defines its forward (and any backward) and calls
``register_window_backend``, plus one import line below; tests and benchmarks iterate the
registry.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

# One import per backend module: importing it registers it (this order is 'auto's order).
from rehyat_jax.attention.window import xla as _xla  # noqa: F401
from rehyat_jax.attention.window import triton_forward as _triton_forward  # noqa: F401
from rehyat_jax.attention.window import mosaic_tpu as _mosaic_tpu  # noqa: F401
from rehyat_jax.attention.window.band import WindowBand, check_band_operands
from rehyat_jax.attention.window.fused import run_kernel_backend
from rehyat_jax.attention.window.kernel_common import BackwardTiles, WindowKernelConfig, tileable_head_dim
from rehyat_jax.attention.window.registry import (AUTO, WINDOW_BACKENDS, WindowBackend, WindowBackward,
                                                  auto_backward_names, check_window_settings, effective_backward,
                                                  register_window_backend, resolve_window_backend,
                                                  window_backend_names, window_backward_names)


def check_window_chunks_per_step(window_chunks_per_step: int | None) -> None:
  """ValueError unless None or an int >= 1."""
  value = window_chunks_per_step
  if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
    raise ValueError(f"window_chunks_per_step must be None or >= 1, got {value!r}")


def window_attention(q: jax.Array, k: jax.Array, v: jax.Array, lin_num: jax.Array,
                     lin_den: jax.Array, band: WindowBand, key_floor=0, *,
                     window_backend: str = AUTO, window_backward: str = AUTO,
                     window_chunks_per_step: int | None = None,
                     kernel_config: WindowKernelConfig = WindowKernelConfig()) -> jax.Array:
  """y = (a_S + lin_num) / guard(n_S + lin_den) for every query, [B, Tq, H, D] in q's dtype.

  q [B, Tq, H, D] and k, v [B, Tk, H, D] in the forms' own token layout; ``band`` and
  ``key_floor`` (an int, or a traced int32 scalar) say which keys each query's window holds
  (``band.py``); lin_num [B, Tq, H, D] and lin_den [B, Tq, H] float32.

  ``window_backend``: 'auto' (``registry.resolve_window_backend``) or an entry of
  ``WINDOW_BACKENDS``; a kernel entry runs per batch/head shard of the context mesh, compiled
  on its platforms and in Pallas interpret mode elsewhere. ``window_backward``: a backward the
  entry offers (``check_window_settings``; with 'auto', one the resolved entry lacks falls back
  to its default). ``window_chunks_per_step``: the XLA window's group size (``xla.py``).
  ``kernel_config``: tiles of the kernel entries.
  """
  check_window_settings(window_backend, window_backward)
  check_window_chunks_per_step(window_chunks_per_step)
  check_band_operands(q, k, v, lin_num, lin_den, band)
  entry = WINDOW_BACKENDS[resolve_window_backend(window_backend, q.shape[-1])]
  window_backward = effective_backward(entry, window_backward)
  key_floor = jnp.asarray(key_floor, jnp.int32)
  lin_num, lin_den = lin_num.astype(jnp.float32), lin_den.astype(jnp.float32)
  if not entry.is_kernel:
    return entry.forward(q, k, v, lin_num, lin_den, key_floor, band, window_chunks_per_step)
  return run_kernel_backend(entry, window_backward, q, k, v, lin_num, lin_den, key_floor, band,
                            window_chunks_per_step=window_chunks_per_step, kernel_config=kernel_config)


__all__ = [
    "AUTO", "WINDOW_BACKENDS", "BackwardTiles", "WindowBackend", "WindowBackward", "WindowKernelConfig",
    "WindowBand", "auto_backward_names", "check_window_chunks_per_step", "check_window_settings", "effective_backward",
    "register_window_backend", "resolve_window_backend", "tileable_head_dim", "window_attention",
    "window_backend_names", "window_backward_names",
]
