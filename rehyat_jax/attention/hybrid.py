"""The public ReHyAt entry point: one function, three interchangeable forms.

``reference`` (dense masked, O(N^2), the ground truth), ``parallel`` (chunk-parallel, the
training form) and ``recurrent`` (the causal chunk-wise RNN, docs/method.md §4) compute the same
function of docs/method.md §1–2 to float32 round-off. Under a context mesh (``jax.set_mesh``) with
a "sequence" axis of size > 1, the parallel form runs sequence-parallel (``sequence_parallel.py``).
"""

from __future__ import annotations

import jax

from rehyat_jax.attention.geometry import validate_hybrid_inputs
from rehyat_jax.attention.parallel import parallel_hybrid_attention
from rehyat_jax.attention.recurrent import recurrent_hybrid_attention
from rehyat_jax.attention.reference import reference_hybrid_attention
from rehyat_jax.attention.sequence_parallel import sequence_parallel_hybrid_attention
from rehyat_jax.attention.window import (WindowKernelConfig, check_window_chunks_per_step,
                                         check_window_settings)
from rehyat_jax.core.sharding import SEQUENCE_AXIS, context_axis_size

FORMS = ("reference", "parallel", "recurrent")


def hybrid_attention(q: jax.Array, k: jax.Array, v: jax.Array, phi_q: jax.Array,
                     phi_k: jax.Array, *, tokens_per_frame: int, chunk_frames: int,
                     overlap_frames: int, causal: bool, form: str = "parallel",
                     window_backend: str = "auto", window_backward: str = "auto",
                     window_chunks_per_step: int | None = None,
                     kernel_config: WindowKernelConfig = WindowKernelConfig()) -> jax.Array:
  """ReHyAt recurrent hybrid attention.

  Args:
    q, k, v: [B, N, H, D], tokens frame-major, N a multiple of ``tokens_per_frame``.
    phi_q, phi_k: feature maps of q and k, [B, N, H, D'] (e.g. from ``build_feature_map``).
    tokens_per_frame: HW, tokens per latent frame.
    chunk_frames: Tc >= 1, latent frames per chunk (the last chunk may be shorter).
    overlap_frames: To >= 0, frames before a chunk that join its softmax window.
    causal: linear set = frames before the window (True) or all frames outside it (False).
    form: one of ``FORMS``: 'reference', 'parallel' or 'recurrent' (causal only). 'parallel'
      under a context mesh whose "sequence" axis has size > 1 splits the frames over that axis
      (``sequence_parallel_hybrid_attention``; the frames must be a multiple of its size x Tc).
    window_backend: the softmax-window implementation of the parallel and recurrent forms:
      'auto' or a ``WINDOW_BACKENDS`` name (``window_attention``). The reference form ignores
      it (the value is still validated).
    window_backward: the dq/dk/dv pass of a kernel window backend, 'xla' or 'pallas'
      (``check_window_settings``).
    window_chunks_per_step: parallel form with the XLA window (and the kernels' 'xla' backward):
      process the window softmax this many chunks at a time, recomputed group by group in the
      backward pass, so score memory is one group's. None: all at once. The other forms ignore it.
    kernel_config: tiles of the kernel window backends.

  Returns:
    [B, N, H, D] in q.dtype; sums, statistics and the normalisation run in float32.
  """
  if form not in FORMS:
    raise ValueError(f"unknown hybrid attention form {form!r}; choose one of {FORMS}")
  if form == "recurrent" and not causal:
    raise ValueError("form='recurrent' with causal=False: the recurrent form is causal only; "
                     "use form='parallel' or 'reference' for non-causal attention")
  check_window_settings(window_backend, window_backward)
  check_window_chunks_per_step(window_chunks_per_step)
  validate_hybrid_inputs(q, k, v, phi_q, phi_k, tokens_per_frame=tokens_per_frame,
                         chunk_frames=chunk_frames, overlap_frames=overlap_frames)
  common = dict(tokens_per_frame=tokens_per_frame, chunk_frames=chunk_frames,
                overlap_frames=overlap_frames)
  if form == "reference":
    return reference_hybrid_attention(q, k, v, phi_q, phi_k, causal=causal, **common)
  window = dict(window_backend=window_backend, window_backward=window_backward,
                kernel_config=kernel_config)
  if form == "parallel":
    if context_axis_size(SEQUENCE_AXIS) > 1:
      return sequence_parallel_hybrid_attention(q, k, v, phi_q, phi_k, causal=causal,
                                                window_chunks_per_step=window_chunks_per_step, **window,
                                                **common)
    return parallel_hybrid_attention(q, k, v, phi_q, phi_k, causal=causal,
                                     window_chunks_per_step=window_chunks_per_step, **window, **common)
  return recurrent_hybrid_attention(q, k, v, phi_q, phi_k, **window, **common)
