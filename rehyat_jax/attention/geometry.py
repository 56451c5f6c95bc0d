"""Chunk geometry of the ReHyAt sets (docs/method.md §1) and validation of hybrid-attention inputs.

Frames are latent frames; token j belongs to frame j // tokens_per_frame (frame-major order).
Chunk t holds frames [t*Tc, min((t+1)*Tc, F)); its softmax set is
S_t = [max(t*Tc - To, 0), min((t+1)*Tc, F)); its linear set L_t is every frame before S_t
(causal) or every frame outside S_t (non-causal). Everything here is static Python / NumPy,
so the masks it returns become compile-time constants under jit.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class ChunkGeometry:
  """Static layout of a video of ``num_frames`` latent frames split into chunks."""

  num_frames: int
  tokens_per_frame: int
  chunk_frames: int
  overlap_frames: int

  @property
  def num_tokens(self) -> int:
    return self.num_frames * self.tokens_per_frame

  @property
  def num_chunks(self) -> int:
    return -(-self.num_frames // self.chunk_frames)

  @property
  def num_full_chunks(self) -> int:
    return self.num_frames // self.chunk_frames

  @property
  def remainder_frames(self) -> int:
    """Frames in the shorter last chunk; 0 when ``chunk_frames`` divides ``num_frames``."""
    return self.num_frames % self.chunk_frames

  @property
  def padded_frames(self) -> int:
    return self.num_chunks * self.chunk_frames

  @property
  def window_frames(self) -> int:
    """Frames in a softmax window buffer: the overlap followed by a whole chunk."""
    return self.overlap_frames + self.chunk_frames

  def softmax_frames(self, chunk: int) -> tuple[int, int]:
    """Half-open frame range of S_t."""
    lo = max(chunk * self.chunk_frames - self.overlap_frames, 0)
    hi = min((chunk + 1) * self.chunk_frames, self.num_frames)
    return lo, hi

  def window_valid(self) -> np.ndarray:
    """bool [num_chunks, window_frames]: which window slots hold a real frame of S_t.

    Slot w of chunk t is frame t*Tc - To + w; slots before the video start or past its end
    (the padding of a shorter last chunk) are invalid.
    """
    t = np.arange(self.num_chunks)[:, None]
    w = np.arange(self.window_frames)[None, :]
    frame = t * self.chunk_frames - self.overlap_frames + w
    return (frame >= 0) & (frame < self.num_frames)

  def linear_membership(self, causal: bool, halo_frames: int = 0) -> np.ndarray:
    """float32 [num_chunks, halo_frames + num_frames]: 1 where frame f belongs to L_t.

    ``halo_frames``: the columns start that many frames before frame 0. A sequence shard
    (``sequence_parallel.py``) is this geometry preceded by the real frames of earlier shards,
    so S_t there starts at t*Tc - To unclipped down to -halo_frames, and the halo frames before
    it belong to L_t (halo frames before the video start carry zero features).
    """
    member = np.zeros((self.num_chunks, halo_frames + self.num_frames), np.float32)
    for t in range(self.num_chunks):
      _, hi = self.softmax_frames(t)
      lo = max(t * self.chunk_frames - self.overlap_frames, -halo_frames)
      member[t, :halo_frames + lo] = 1.0
      if not causal:
        member[t, halo_frames + hi:] = 1.0
    return member


def _as_int(name: str, value: Any, minimum: int) -> int:
  """value as a Python int >= minimum, else ValueError naming the argument."""
  try:
    as_int = operator.index(value)
  except TypeError:
    raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}") from None
  if isinstance(value, bool) or as_int < minimum:
    raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
  return as_int


def make_geometry(num_tokens: int, *, tokens_per_frame: int, chunk_frames: int,
                  overlap_frames: int) -> ChunkGeometry:
  """Validates the chunking arguments and returns the geometry for ``num_tokens`` tokens."""
  tokens_per_frame = _as_int("tokens_per_frame", tokens_per_frame, 1)
  chunk_frames = _as_int("chunk_frames", chunk_frames, 1)
  overlap_frames = _as_int("overlap_frames", overlap_frames, 0)
  if num_tokens < 1 or num_tokens % tokens_per_frame:
    raise ValueError(
        f"sequence length N={num_tokens} is not a positive multiple of "
        f"tokens_per_frame={tokens_per_frame}")
  return ChunkGeometry(num_tokens // tokens_per_frame, tokens_per_frame, chunk_frames,
                       overlap_frames)


def validate_qkv_phi(q: Any, k: Any, v: Any, phi_q: Any, phi_k: Any) -> None:
  """Checks q, k, v [B, N, H, D] and phi_q, phi_k [B, N, H, D'] agree; raises ValueError."""
  for name, x in (("q", q), ("k", k), ("v", v), ("phi_q", phi_q), ("phi_k", phi_k)):
    if x.ndim != 4:
      raise ValueError(f"{name} must have rank 4 [B, N, H, dim], got shape {tuple(x.shape)}")
  if k.shape != q.shape or v.shape != q.shape:
    raise ValueError(
        f"q, k, v shapes must match: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
  if phi_q.shape != phi_k.shape:
    raise ValueError(
        f"phi_q and phi_k shapes must match: {tuple(phi_q.shape)} vs {tuple(phi_k.shape)}")
  if phi_q.shape[:3] != q.shape[:3]:
    raise ValueError(
        f"phi_q/phi_k leading dims [B, N, H] {tuple(phi_q.shape[:3])} do not match q "
        f"{tuple(q.shape[:3])}")


def validate_hybrid_inputs(q: Any, k: Any, v: Any, phi_q: Any, phi_k: Any, *,
                           tokens_per_frame: int, chunk_frames: int,
                           overlap_frames: int) -> ChunkGeometry:
  """Validates everything a hybrid-attention form needs and returns its chunk geometry."""
  validate_qkv_phi(q, k, v, phi_q, phi_k)
  return make_geometry(q.shape[1], tokens_per_frame=tokens_per_frame, chunk_frames=chunk_frames,
                       overlap_frames=overlap_frames)
