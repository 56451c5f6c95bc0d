"""Which keys each query's softmax window holds, in the token layout the forms already have.

Every form hands ``window_attention`` q [B, Tq, H, D] and k, v [B, Tk, H, D] as they are (no
per-chunk window copies), with a static ``WindowBand`` and a key floor:

    query token i is in chunk t = i // (Tc*HW) and sees the key tokens
    [max((t*Tc - To + s) * HW, key_floor), min(((t+1)*Tc + s) * HW, Tk)),

s = ``key_shift_frames``, the frames k holds before q's first frame. The parallel form passes
its whole video (s = 0, floor 0: slots before the video start are the negative ones the max
clips); the recurrent step passes [overlap cache ; chunk] (s = To, floor = the first valid cache
slot); a sequence shard passes [halo ; own frames] (s = To, floor = where the video starts in
its halo). These are exactly S_t of docs/method.md §1 in each layout.

The fused GPU kernels read that band directly (the range is a function of the row). The XLA
window and the TPU kernel work on per-chunk windows, which ``band_windows`` builds from it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class WindowBand:
  """Static layout of the softmax windows over flat tokens (module docstring)."""

  tokens_per_frame: int
  chunk_frames: int
  overlap_frames: int
  key_shift_frames: int = 0

  def __post_init__(self):
    for name, minimum in (("tokens_per_frame", 1), ("chunk_frames", 1), ("overlap_frames", 0),
                          ("key_shift_frames", 0)):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"WindowBand.{name} must be an int >= {minimum}, got {value!r}")
    if self.key_shift_frames > self.overlap_frames:
      # Keys before the first chunk's window would belong to no window.
      raise ValueError(f"WindowBand.key_shift_frames ({self.key_shift_frames}) must be <= "
                       f"overlap_frames ({self.overlap_frames})")

  @property
  def chunk_tokens(self) -> int:
    return self.chunk_frames * self.tokens_per_frame

  @property
  def window_tokens(self) -> int:
    """Tokens of one per-chunk window: the overlap frames then the chunk."""
    return (self.overlap_frames + self.chunk_frames) * self.tokens_per_frame

  def window_start(self, chunk):
    """Key token where chunk ``chunk``'s window begins (negative before the video start)."""
    return (chunk * self.chunk_frames - self.overlap_frames + self.key_shift_frames) * self.tokens_per_frame

  def key_range(self, chunk, key_floor, num_keys: int):
    """[lo, hi) of the key tokens chunk ``chunk`` sees (ints or int arrays, broadcast)."""
    lo = jnp.maximum(self.window_start(chunk), key_floor)
    hi = jnp.minimum(self.window_start(chunk) + self.window_tokens, num_keys)
    return lo, hi

  def num_chunks(self, num_queries: int) -> int:
    return -(-num_queries // self.chunk_tokens)


def check_band_operands(q, k, v, lin_num, lin_den, band: WindowBand) -> None:
  """ValueError naming the first operand whose shape does not fit ``window_attention``."""
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(f"q, k, v must be [B, T, H, D]; got {q.shape}, {k.shape}, {v.shape}")
  if k.shape != v.shape or k.shape[0] != q.shape[0] or k.shape[2:] != q.shape[2:]:
    raise ValueError(f"k and v must be [B, Tk, H, D] matching q {tuple(q.shape)}; got "
                     f"{tuple(k.shape)}, {tuple(v.shape)}")
  if lin_num.shape != q.shape or lin_den.shape != q.shape[:3]:
    raise ValueError(f"lin_num must be shaped like q {tuple(q.shape)} and lin_den like q without "
                     f"its last dim; got {tuple(lin_num.shape)}, {tuple(lin_den.shape)}")
  hw = band.tokens_per_frame
  if q.shape[1] % hw or k.shape[1] % hw:
    raise ValueError(f"query length {q.shape[1]} and key length {k.shape[1]} must be multiples of "
                     f"tokens_per_frame={hw}")


def to_chunks(x: jax.Array, chunk_tokens: int) -> jax.Array:
  """[B, T, ...] -> [B, C, chunk_tokens, ...], zero tokens appended to fill the last chunk."""
  extra = -x.shape[1] % chunk_tokens
  if extra:
    x = jnp.pad(x, ((0, 0), (0, extra)) + ((0, 0),) * (x.ndim - 2))
  return x.reshape(x.shape[0], x.shape[1] // chunk_tokens, chunk_tokens, *x.shape[2:])


def from_chunks(x: jax.Array, num_tokens: int) -> jax.Array:
  """[B, C, chunk_tokens, ...] -> [B, num_tokens, ...]: the inverse of ``to_chunks``."""
  return x.reshape(x.shape[0], -1, *x.shape[3:])[:, :num_tokens]


def chunk_windows(x_chunks: jax.Array, before: jax.Array, overlap_tokens: int) -> jax.Array:
  """[B, C, Tc*HW, ...] -> [B, C, overlap_tokens + Tc*HW, ...]: the ``overlap_tokens`` before
  each chunk (from as many earlier chunks as they span, ``before`` playing the ones before chunk
  0: [B, overlap_tokens, ...]), then the chunk. Static slices of one concatenation."""
  if overlap_tokens == 0:
    return x_chunks
  b, n, chunk_tokens = x_chunks.shape[:3]
  earlier = -(-overlap_tokens // chunk_tokens)
  before = jnp.pad(before.astype(x_chunks.dtype),
                   ((0, 0), (earlier * chunk_tokens - overlap_tokens, 0)) + ((0, 0),) * (before.ndim - 2))
  padded = jnp.concatenate([before.reshape(b, earlier, chunk_tokens, *before.shape[2:]), x_chunks], axis=1)
  pieces = [padded[:, earlier - back:earlier - back + n] for back in range(earlier, -1, -1)]
  stacked = jnp.concatenate(pieces, axis=2)  # chunks t-earlier .. t, tokens in order
  return stacked[:, :, earlier * chunk_tokens - overlap_tokens:]


def band_windows(q: jax.Array, k: jax.Array, v: jax.Array, band: WindowBand, key_floor
                 ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Per-chunk windows of the band: q_chunks [B, C, Tc*HW, H, D], k/v_windows [B, C, (To+Tc)*HW,
  H, D] (slot j of chunk t is key token ``band.window_start(t) + j``, zeros outside k) and the
  valid slots of each window, int32 [C, 2] = [lo, hi) (traced when ``key_floor`` is)."""
  chunk_tokens, num_keys = band.chunk_tokens, k.shape[1]
  num_chunks = band.num_chunks(q.shape[1])
  shift = band.key_shift_frames * band.tokens_per_frame
  overlap = band.overlap_frames * band.tokens_per_frame

  def windows(x):
    own = x[:, shift:shift + num_chunks * chunk_tokens]
    own = jnp.pad(own, ((0, 0), (0, num_chunks * chunk_tokens - own.shape[1]), (0, 0), (0, 0)))
    before = jnp.pad(x[:, :shift], ((0, 0), (overlap - shift, 0), (0, 0), (0, 0)))
    return chunk_windows(to_chunks(own, chunk_tokens), before, overlap)

  chunk = jnp.arange(num_chunks)
  lo, hi = band.key_range(chunk, key_floor, num_keys)
  key_bounds = jnp.stack([lo, hi], axis=1) - band.window_start(chunk)[:, None]
  return to_chunks(q, chunk_tokens), windows(k), windows(v), key_bounds.astype(jnp.int32)
