"""The public ReHyAt entry point: one function, three interchangeable forms.

``reference`` (dense masked, O(N^2), the ground truth), ``parallel`` (chunk-parallel, the
training form) and ``scan`` (the causal chunk-wise RNN) compute the same function of
method.md §1–2 to float32 round-off.
"""

from __future__ import annotations

import jax

from rehyat_jax.attention.chunking import validate_hybrid_inputs
from rehyat_jax.attention.parallel import parallel_hybrid_attention
from rehyat_jax.attention.reference import reference_hybrid_attention
from rehyat_jax.attention.scan import scan_hybrid_attention

MODES = ("reference", "parallel", "scan")


def hybrid_attention(q: jax.Array, k: jax.Array, v: jax.Array, phi_q: jax.Array,
                     phi_k: jax.Array, *, tokens_per_frame: int, chunk_frames: int,
                     overlap_frames: int, causal: bool, mode: str = "parallel",
                     backend: str = "auto", chunks_per_step: int | None = None) -> jax.Array:
  """ReHyAt recurrent hybrid attention.

  Args:
    q, k, v: [B, N, H, D], tokens frame-major, N a multiple of ``tokens_per_frame``.
    phi_q, phi_k: feature maps of q and k, [B, N, H, D'] (e.g. from ``FeatureMap``).
    tokens_per_frame: HW, tokens per latent frame.
    chunk_frames: Tc >= 1, latent frames per chunk (the last chunk may be shorter).
    overlap_frames: To >= 0, frames before a chunk that join its softmax window.
    causal: linear set = frames before the window (True) or all frames outside it (False).
    mode: 'reference', 'parallel' or 'scan' (causal only).
    backend: the softmax-window implementation of the parallel and scan forms: 'xla',
      'pallas' (the fused kernel of window.py; interpret mode off GPU) or 'auto' (pallas on
      one GPU, else xla). The reference form ignores it.
    chunks_per_step: parallel form with the XLA window (and its backward pass): process the
      window softmax this many chunks at a time, recomputed group by group in the backward
      pass, so score memory is one group's (``parallel_hybrid_attention``). None: all at once.

  Returns:
    [B, N, H, D] in q.dtype; sums, statistics and the normalisation run in float32.
  """
  if mode not in MODES:
    raise ValueError(f"unknown hybrid attention mode {mode!r}; choose one of {MODES}")
  if mode == "scan" and not causal:
    raise ValueError("mode='scan' with causal=False: the recurrent scan form is causal only; "
                     "use mode='parallel' or 'reference' for non-causal attention")
  validate_hybrid_inputs(q, k, v, phi_q, phi_k, tokens_per_frame=tokens_per_frame,
                         chunk_frames=chunk_frames, overlap_frames=overlap_frames)
  common = dict(tokens_per_frame=tokens_per_frame, chunk_frames=chunk_frames,
                overlap_frames=overlap_frames)
  if mode == "reference":
    return reference_hybrid_attention(q, k, v, phi_q, phi_k, causal=causal, **common)
  if mode == "parallel":
    return parallel_hybrid_attention(q, k, v, phi_q, phi_k, causal=causal, backend=backend,
                                     chunks_per_step=chunks_per_step, **common)
  return scan_hybrid_attention(q, k, v, phi_q, phi_k, backend=backend, **common)
