"""Sequence (context) parallel ReHyAt: the parallel form with the latent frames split over a mesh
axis (``core.sharding.SEQUENCE_AXIS``, "sequence"), whole chunks per device.

Device i of P holds frames [i*Fd, (i+1)*Fd), Fd = F / P, and computes its own queries with the
parallel form's pieces (``parallel.py``: ``geometry_band``, ``frame_sums``, ``mix_frames``,
``linear_readout``; ``window.window_attention`` with any backend, the Pallas kernels included,
which then run per shard as they are). What crosses devices (docs/method.md §1-§2):

- **Softmax halo.** A chunk's window reaches To frames back, across the device boundary for a
  device's first chunks. Each device receives the To frames before its first frame (k, v, and
  phi_k for the linear part) from the devices before it with ``lax.ppermute``: one hop when
  To <= Fd, ceil(To / Fd) hops otherwise. Frames before the video start arrive as zeros; the
  global geometry's key bounds mask them in the softmax, and their zero features add nothing to
  the linear sums.
- **Linear state.** With the halo in front, device i's buffer covers frames [i*Fd - To, (i+1)*Fd).
  For its chunk t, causal L_t = [0, i*Fd - To) (everything before the buffer) plus the buffer's
  frames before S_t (``ChunkGeometry.linear_membership(halo_frames=To)``). The part before the
  buffer is an exclusive prefix over devices of each device's *leaving* sum: phi_k v^T and phi_k
  summed over its buffer's first Fd frames, [j*Fd - To, (j+1)*Fd - To), i.e. the frames that
  leave every window within device j (the recurrent update of §4, for a whole shard). Those
  ranges tile [0, i*Fd - To) for j < i. One ``all_gather`` of the fixed-size [B, H, D', D] and
  [B, H, D'] sums, then a masked sum over the earlier devices.
- **Non-causal** adds the frames after the buffer: the exclusive suffix over later devices of
  each device's sum over its own Fd frames (a second summary in the same ``all_gather``). Both
  sides are direct sums, never total minus window, as in the parallel form (no cancellation).

The bytes a device receives per layer for the linear state do not depend on the length
(``linear_state_bytes``); the halo's grow with To * HW only (``halo_bytes``).

Backward: JAX differentiates through the ``shard_map`` (ppermute transposes to the reverse
ppermute, all_gather to a reduce-scatter); a kernel window backend keeps its own custom_vjp per
shard. No custom_vjp is needed here.

Allowed shapes: F a multiple of P * Tc (every device holds the same number of whole chunks, so
no chunk straddles two devices and the parallel form's shorter last chunk cannot occur; a
``ValueError`` names the numbers otherwise); any To >= 0; any HW. Batch and heads are split over
the data / fsdp and tensor axes too where they divide, as ``kernel_sharding`` does.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from rehyat_jax.attention.geometry import ChunkGeometry, validate_hybrid_inputs
from rehyat_jax.attention.kernel_sharding import batch_and_head_axes
from rehyat_jax.attention.numerics import clamp_features
from rehyat_jax.attention.parallel import (frame_sums, geometry_band, linear_readout, mix_frames,
                                           parallel_hybrid_attention)
from rehyat_jax.attention.window import (WindowKernelConfig, check_window_chunks_per_step, check_window_settings,
                                         window_attention)
from rehyat_jax.attention.window.band import from_chunks
from rehyat_jax.core.sharding import SEQUENCE_AXIS, context_axis_size

_HIGHEST = jax.lax.Precision.HIGHEST
_FLOAT32_BYTES = 4


def check_sequence_split(num_frames: int, chunk_frames: int, num_devices: int) -> int:
  """Frames per device; ValueError unless the frames split into whole chunks per device."""
  if num_frames % (num_devices * chunk_frames):
    working = [p for p in range(2, num_frames + 1) if num_frames % (p * chunk_frames) == 0]
    raise ValueError(
        f"sequence parallelism over {num_devices} devices needs whole chunks on every device: the "
        f"{num_frames} latent frames must be a multiple of devices x chunk_frames = {num_devices} x "
        f"{chunk_frames} = {num_devices * chunk_frames}. Sequence sizes that fit {num_frames} frames "
        f"with chunk_frames={chunk_frames}: {working or 'none'}; or change the frame count or chunk_frames")
  return num_frames // num_devices


def linear_state_bytes(*, batch: int, heads: int, head_dim: int, phi_dim: int, num_devices: int,
                       causal: bool) -> int:
  """Bytes one device receives per layer, forward, for the linear state: the float32 [B, H, D', D]
  and [B, H, D'] summaries of the other devices (one for causal, two for non-causal). ``batch``
  and ``heads`` per shard. No length in it: it does not depend on the frame count. The backward
  pass's reduce-scatter moves the same amount."""
  summaries = 1 if causal else 2
  return (num_devices - 1) * summaries * batch * heads * phi_dim * (head_dim + 1) * _FLOAT32_BYTES


def halo_bytes(*, batch: int, heads: int, head_dim: int, phi_dim: int, overlap_frames: int,
               tokens_per_frame: int, itemsize: int) -> int:
  """Bytes one device receives per layer, forward, for the softmax halo: k, v and phi_k of the
  To frames before it (``itemsize``: bytes per element of k, v and phi_k)."""
  return overlap_frames * tokens_per_frame * batch * heads * (2 * head_dim + phi_dim) * itemsize


def _frames_before(xs: tuple[jax.Array, ...], frames: int, *, tokens_per_frame: int, num_devices: int,
                   axis: str) -> tuple[jax.Array, ...]:
  """The ``frames`` frames before this device's first one, [B, frames*HW, ...] for each of ``xs``,
  from the devices before it (hop h brings device i-h's last frames); zeros before the video start."""
  tokens = xs[0].shape[1]
  if frames == 0:
    return tuple(x[:, :0] for x in xs)
  local_frames = tokens // tokens_per_frame
  pieces, hop, remaining = [], 1, frames
  while remaining:
    take = min(local_frames, remaining)
    tails = tuple(x[:, tokens - take * tokens_per_frame:] for x in xs)
    if hop < num_devices:
      # Device j sends to j + hop; device i receives from i - hop, and zeros when i < hop.
      pieces.append(jax.lax.ppermute(tails, axis, [(j, j + hop) for j in range(num_devices - hop)]))
    else:  # no device is that far back from anyone: before the video start everywhere
      pieces.append(tuple(jnp.zeros_like(t) for t in tails))
    remaining -= take
    hop += 1
  return tuple(jnp.concatenate(parts[::-1], axis=1) for parts in zip(*pieces))


def _shard_hybrid(q, k, v, phi_q, phi_k, *, geometry: ChunkGeometry, shard: ChunkGeometry, causal: bool,
                  num_devices: int, axis: str, window: dict) -> jax.Array:
  """One device's queries: ``shard`` is its frames' geometry, ``geometry`` the whole video's."""
  device = jax.lax.axis_index(axis)
  to, hw = geometry.overlap_frames, geometry.tokens_per_frame
  phi_q, phi_k = clamp_features(phi_q), clamp_features(phi_k)
  k_halo, v_halo, phi_k_halo = _frames_before((k, v, phi_k), to, tokens_per_frame=hw,
                                              num_devices=num_devices, axis=axis)

  # The window sees [halo ; own frames]; the halo's frames before the video start are not keys.
  k_buf, v_buf = jnp.concatenate([k_halo, k], axis=1), jnp.concatenate([v_halo, v], axis=1)
  key_floor = jnp.maximum(to - device * shard.num_frames, 0) * hw

  # Per-frame sums over the buffer [halo ; own frames], then this device's summaries.
  kv_frames, z_frames = frame_sums(jnp.concatenate([phi_k_halo, phi_k], axis=1),
                                   jnp.concatenate([v_halo, v], axis=1), hw)
  buffer = np.arange(to + shard.num_frames)
  summaries = [buffer < shard.num_frames]         # leaving: tiles [0, i*Fd - To) over earlier devices
  others = jnp.arange(num_devices)
  take = [others < device]
  if not causal:
    summaries.append(buffer >= to)                # own frames: tiles [(i+1)*Fd, F) over later devices
    take.append(others > device)
  kv_sums, z_sums = mix_frames(np.stack(summaries), kv_frames, z_frames)   # [B, R, H, D', D], [B, R, H, D']
  kv_all, z_all = jax.lax.all_gather((kv_sums, z_sums), axis)              # [P, B, R, ...]
  take = jnp.stack(take, axis=1).astype(jnp.float32)                       # [P, R]
  kv_outside = jnp.einsum("jr,jbrhpd->bhpd", take, kv_all, precision=_HIGHEST)
  z_outside = jnp.einsum("jr,jbrhp->bhp", take, z_all, precision=_HIGHEST)

  kv_l, z_l = mix_frames(shard.linear_membership(causal, halo_frames=to), kv_frames, z_frames)
  lin_num, lin_den = linear_readout(phi_q, kv_l + kv_outside[:, None], z_l + z_outside[:, None], shard)
  n = q.shape[1]
  return window_attention(q, k_buf, v_buf, from_chunks(lin_num, n), from_chunks(lin_den, n),
                          geometry_band(shard, key_shift_frames=to), key_floor, **window)


def sequence_parallel_hybrid_attention(q: jax.Array, k: jax.Array, v: jax.Array, phi_q: jax.Array,
                                       phi_k: jax.Array, *, tokens_per_frame: int, chunk_frames: int,
                                       overlap_frames: int, causal: bool, window_backend: str = "auto",
                                       window_backward: str = "auto",
                                       window_chunks_per_step: int | None = None,
                                       kernel_config: WindowKernelConfig = WindowKernelConfig(),
                                       axis: str = SEQUENCE_AXIS) -> jax.Array:
  """ReHyAt, parallel form, with the frames split over the context mesh's ``axis`` (module
  docstring). Same contract and arguments as ``parallel_hybrid_attention``; without such an axis
  of size > 1 (no ``jax.set_mesh``, or already inside a shard_map over it) it is that function.

  ValueError unless the latent frames are a multiple of (``axis`` size) x ``chunk_frames``.
  """
  geometry = validate_hybrid_inputs(q, k, v, phi_q, phi_k, tokens_per_frame=tokens_per_frame,
                                    chunk_frames=chunk_frames, overlap_frames=overlap_frames)
  check_window_settings(window_backend, window_backward)
  check_window_chunks_per_step(window_chunks_per_step)
  window = dict(window_backend=window_backend, window_backward=window_backward,
                window_chunks_per_step=window_chunks_per_step, kernel_config=kernel_config)
  num_devices = context_axis_size(axis)
  if num_devices == 1:
    return parallel_hybrid_attention(q, k, v, phi_q, phi_k, tokens_per_frame=tokens_per_frame,
                                     chunk_frames=chunk_frames, overlap_frames=overlap_frames,
                                     causal=causal, **window)
  frames_per_device = check_sequence_split(geometry.num_frames, chunk_frames, num_devices)
  shard = ChunkGeometry(frames_per_device, tokens_per_frame, chunk_frames, overlap_frames)
  mesh = jax.sharding.get_abstract_mesh()
  batch_axes, head_axis = batch_and_head_axes(mesh, q.shape[0], q.shape[2])
  spec = P(batch_axes or None, axis, head_axis, None)
  local = functools.partial(_shard_hybrid, geometry=geometry, shard=shard, causal=causal,
                            num_devices=num_devices, axis=axis, window=window)
  # check_vma=False: the Pallas kernels inside carry no varying-axes types (as in kernel_sharding).
  return jax.shard_map(local, mesh=mesh, in_specs=(spec,) * 5, out_specs=spec,
                       check_vma=False)(q, k, v, phi_q, phi_k)
