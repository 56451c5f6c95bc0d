"""Where a softmax teacher's attention goes in time: the share of each head's attention mass at each frame
distance |f_query - f_key| (latent frames, after temporal patching).

A chunk-local student sees keys up to Tc + To - 1 frames back (less at a chunk's start); whatever mass a
teacher head puts further away is what the linear term must carry. A histogram that is only local makes
the hybrid trivial; one that is flat (uniform over keys) has no temporal structure at all. The reference
for "flat" is reported with it: the histogram uniform attention over all keys would give.
"""

from __future__ import annotations

import io
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from rehyat_jax.models.wan import WanDiT


def _frame_mass_hook(attn, x, rope, geometry, converted):
  """Attention hook: the softmax output passed on, and per head the mean over query tokens of frame f
  of the attention mass on the key tokens of frame g, [B, H, F, F]."""
  del converted
  q, k, v, _ = attn.qkv(x, rope)
  out = attn.softmax(q, k, v)
  b, n, h, d = q.shape
  f, t = geometry.frames, geometry.tokens_per_frame
  logits = jnp.einsum("bnhd,bmhd->bhnm", q.astype(jnp.float32), k.astype(jnp.float32)) / np.sqrt(d)
  probs = jax.nn.softmax(logits, axis=-1).reshape(b, h, f, t, f, t)
  return attn.output(out), probs.sum(axis=-1).mean(axis=3)


def frame_attention_mass(model: WanDiT, latents, timesteps, text) -> np.ndarray:
  """[L, H, F, F] attention mass per block, head, query frame and key frame, averaged over the batch
  (rows sum to 1). Every block runs the teacher's softmax (whatever the model's converted blocks)."""
  _, mass = jax.jit(lambda x, t, c: model.forward_with_hook(x, t, c, _frame_mass_hook))(latents, timesteps, text)
  return np.asarray(mass).mean(axis=1)


def distance_histogram(mass: np.ndarray) -> np.ndarray:
  """[..., F, F] query-frame x key-frame mass -> [..., F]: mass at distance d, averaged over query frames."""
  f = mass.shape[-1]
  distance = np.abs(np.arange(f)[:, None] - np.arange(f)[None, :])
  return np.stack([(mass * (distance == d)).sum(axis=-1).mean(axis=-1) for d in range(f)], axis=-1)


def uniform_histogram(frames: int) -> np.ndarray:
  """[F]: the distance histogram of attention spread uniformly over every key."""
  return distance_histogram(np.full((frames, frames), 1.0 / frames))


def summarise(histogram: np.ndarray, chunk_frames: int, overlap_frames: int) -> dict[str, np.ndarray]:
  """Per head ([L, H] each): mass in the same frame, at distance 1, and beyond any softmax window
  (>= Tc + To frames away: only the linear term can reach it)."""
  far = chunk_frames + overlap_frames
  return {"same_frame": histogram[..., 0], "next_frame": histogram[..., 1] if histogram.shape[-1] > 1 else 0 * histogram[..., 0],
          "beyond_window": histogram[..., far:].sum(axis=-1)}


def plot_histograms(histogram: np.ndarray, path: str | Path, *, chunk_frames: int, overlap_frames: int,
                    title: str = "") -> Path:
  """Small multiples, one panel per (block, head): attention mass by frame distance, with the uniform
  reference and the softmax-window reach marked."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  layers, heads, frames = histogram.shape
  uniform = uniform_histogram(frames)
  fig, axes = plt.subplots(layers, heads, figsize=(2.2 * heads, 1.6 * layers + 0.6), sharex=True, sharey=True,
                           squeeze=False)
  reach = chunk_frames + overlap_frames
  for layer in range(layers):
    for head in range(heads):
      ax = axes[layer, head]
      ax.bar(np.arange(frames), histogram[layer, head], color="tab:blue")
      ax.plot(np.arange(frames), uniform, "k:", linewidth=1)
      ax.axvspan(reach - 0.5, frames - 0.5, color="tab:orange", alpha=0.12)
      far = histogram[layer, head, reach:].sum()
      ax.set_title(f"block {layer} head {head}: {far:.0%} >= {reach}", fontsize=7)
      ax.tick_params(labelsize=6)
  for ax in axes[-1]:
    ax.set_xlabel("|frame distance|", fontsize=7)
  for ax in axes[:, 0]:
    ax.set_ylabel("attention mass", fontsize=7)
  fig.suptitle(title or "teacher attention by frame distance (dotted: uniform; shaded: beyond the softmax window)",
               fontsize=8)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=110)
  plt.close(fig)
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(buffer.getvalue())
  return path
