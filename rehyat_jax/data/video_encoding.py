"""Encoding captioned videos into a ``WanLatentsDataset``: read, resize, sample frames, VAE- and text-encode.

Clip policy (one clip per video, deterministic):

* **Frames**: ``num_frames`` must be ``4k + 1`` (the Wan VAE's causal temporal compression: 1 + 4k frames ->
  1 + k latent frames). The clip is frames ``0, stride, 2 stride, ...`` from the start of the video
  (``frame_stride`` lowers the frame rate, e.g. 2 turns 30 fps into 15); a video with too few frames is an
  error, never padded or looped.
* **Space**: each frame is scaled (bicubic, aspect ratio kept) to the smallest size that covers
  ``width x height``, then centre-cropped to it; frames already at the target size are left untouched.
  ``width`` and ``height`` must be multiples of the VAE's spatial factor (8).
* **Values**: uint8 RGB -> ``x / 127.5 - 1`` in [-1, 1], the range ``WanVAE.encode`` expects.

Latents are ``WanVAE.encode``'s normalised posterior mean, float32. Record keys are the video paths as given
(so they must be unique). Shards, hosts and resuming work as in ``prompt_encoding``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from rehyat_jax.data.builders import LatentShapes, WanLatentsDataset
from rehyat_jax.data.prompt_encoding import EncodingSummary, batches, encode_texts, text_shape, \
    write_host_shards
from rehyat_jax.models.tokenizer import UMT5Tokenizer
from rehyat_jax.models.umt5 import UMT5Encoder
from rehyat_jax.models.wan_vae import WanVAE

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")


@dataclasses.dataclass(frozen=True)
class CaptionedVideo:
  path: Path
  caption: str


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """Target clip: ``width x height`` pixels, ``num_frames`` (4k + 1) frames taken every ``frame_stride``."""

  width: int
  height: int
  num_frames: int
  frame_stride: int = 1

  def check(self, temporal_factor: int = 4, spatial_factor: int = 8) -> None:
    if self.num_frames < 1 or (self.num_frames - 1) % temporal_factor:
      raise ValueError(f"num_frames must be {temporal_factor}k + 1 (1, {temporal_factor + 1}, "
                       f"{2 * temporal_factor + 1}, ..., 81), got {self.num_frames}")
    if self.width < 1 or self.height < 1 or self.width % spatial_factor or self.height % spatial_factor:
      raise ValueError(f"width and height must be positive multiples of {spatial_factor}, got "
                       f"{self.width}x{self.height}")
    if self.frame_stride < 1:
      raise ValueError(f"frame_stride must be positive, got {self.frame_stride}")


# --- listing videos -----------------------------------------------------------------------------------------------


def list_videos_dir(directory: str | os.PathLike) -> list[CaptionedVideo]:
  """The videos in ``directory`` (sorted by name); each caption is the text of ``<stem>.txt`` beside it, if any."""
  directory = Path(directory)
  if not directory.is_dir():
    raise FileNotFoundError(f"video directory {directory} does not exist")
  videos = []
  for path in sorted(p for p in directory.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES):
    caption_file = path.with_suffix(".txt")
    caption = caption_file.read_text(encoding="utf-8").strip() if caption_file.is_file() else ""
    videos.append(CaptionedVideo(path, caption))
  if not videos:
    raise ValueError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) in {directory}")
  return videos


def read_video_list(list_file: str | os.PathLike) -> list[CaptionedVideo]:
  """(path, caption) rows of a ``.csv`` (header with ``path`` and ``caption`` columns) or ``.jsonl`` file.

  Relative paths are taken relative to the list file's folder.
  """
  list_file = Path(list_file)
  if not list_file.is_file():
    raise FileNotFoundError(f"video list {list_file} does not exist")
  text = list_file.read_text(encoding="utf-8")
  if list_file.suffix.lower() == ".csv":
    rows = list(csv.DictReader(text.splitlines()))
  elif list_file.suffix.lower() == ".jsonl":
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
  else:
    raise ValueError(f"video list {list_file}: expected a .csv or .jsonl file")
  videos = []
  for number, row in enumerate(rows, start=1):
    if not isinstance(row, dict) or not row.get("path"):
      raise ValueError(f"video list {list_file}, row {number}: needs a 'path' (and a 'caption'), got {row!r}")
    path = Path(row["path"])
    videos.append(CaptionedVideo(path if path.is_absolute() else list_file.parent / path,
                                 str(row.get("caption") or "")))
  if not videos:
    raise ValueError(f"video list {list_file} lists no videos")
  return videos


def check_videos(videos: Sequence[CaptionedVideo]) -> None:
  """Raises if the list is empty, a file does not exist (naming up to 10) or a path repeats (keys are paths)."""
  if not videos:
    raise ValueError("nothing to encode: the video list is empty")
  missing = [str(video.path) for video in videos if not video.path.is_file()]
  if missing:
    raise FileNotFoundError(f"{len(missing)} of {len(videos)} videos do not exist: " + ", ".join(missing[:10]))
  keys = [str(video.path) for video in videos]
  if len(set(keys)) != len(keys):
    raise ValueError("the video list names some files more than once (record keys must be unique)")


# --- reading clips ------------------------------------------------------------------------------------------------


def resize_and_crop(frame: np.ndarray, width: int, height: int) -> np.ndarray:
  """uint8 ``[h, w, 3]`` -> ``[height, width, 3]``: scale to cover the target (aspect kept), centre crop."""
  h, w = frame.shape[:2]
  if (h, w) == (height, width):
    return frame
  scale = max(width / w, height / h)
  # Rounding up keeps the scaled frame at least as large as the target on both sides.
  scaled_w, scaled_h = max(width, round(w * scale)), max(height, round(h * scale))
  image = Image.fromarray(frame).resize((scaled_w, scaled_h), Image.Resampling.BICUBIC)
  left, top = (scaled_w - width) // 2, (scaled_h - height) // 2
  return np.asarray(image.crop((left, top, left + width, top + height)))


def read_clip(path: str | os.PathLike, spec: ClipSpec) -> np.ndarray:
  """The clip of ``spec`` from one video as float32 ``[3, T, H, W]`` in [-1, 1] (see the module docstring)."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"video {path} does not exist")
  needed = (spec.num_frames - 1) * spec.frame_stride + 1
  frames = []
  # Stream the frames and stop once enough are read: long videos are never decoded whole.
  for index, frame in enumerate(iio.imiter(path, plugin="FFMPEG")):
    if index % spec.frame_stride == 0:
      frames.append(resize_and_crop(np.asarray(frame)[..., :3], spec.width, spec.height))
    if index + 1 == needed:
      break
  if len(frames) < spec.num_frames:
    raise ValueError(f"video {path} is too short: {spec.num_frames} frames at stride {spec.frame_stride} need "
                     f"{needed} frames, it has fewer")
  clip = np.stack(frames).astype(np.float32) / np.float32(127.5) - np.float32(1.0)  # [T, H, W, 3]
  return clip.transpose(3, 0, 1, 2)


# --- encoding -----------------------------------------------------------------------------------------------------


@nnx.jit
def _encode_videos(vae: WanVAE, videos: jax.Array) -> jax.Array:
  return vae.encode(videos)


def latent_shapes(vae: WanVAE, spec: ClipSpec, tokenizer: UMT5Tokenizer, encoder: UMT5Encoder) -> LatentShapes:
  cfg = vae.cfg
  return LatentShapes(
      latents=(cfg.z_dim, 1 + (spec.num_frames - 1) // cfg.temporal_factor, spec.height // cfg.spatial_factor,
               spec.width // cfg.spatial_factor),
      text=text_shape(tokenizer, encoder))


def encode_videos(videos: Sequence[CaptionedVideo], vae: WanVAE, tokenizer: UMT5Tokenizer, encoder: UMT5Encoder,
                  out_dir: str | os.PathLike, spec: ClipSpec, *, host_index: int = 0, num_hosts: int = 1,
                  examples_per_shard: int = 64, batch_size: int = 1,
                  finalize: bool | None = None) -> EncodingSummary:
  """Writes this host's shards of the ``WanLatentsDataset`` of ``videos`` under ``out_dir``.

  Every listed file is checked (``check_videos``) before anything is encoded. VAE batches are padded to
  ``batch_size`` (with copies of the last clip) so the VAE compiles once.
  """
  videos = list(videos)
  spec.check(vae.cfg.temporal_factor, vae.cfg.spatial_factor)
  check_videos(videos)
  builder = WanLatentsDataset(data_dir=out_dir, shapes=latent_shapes(vae, spec, tokenizer, encoder))

  def make_examples(indices: range) -> Iterator[dict[str, Any]]:
    shard_videos = [videos[i] for i in indices]
    texts = encode_texts([video.caption for video in shard_videos], tokenizer, encoder, batch_size)
    latents = []
    for batch in batches(shard_videos, batch_size):
      clips = [read_clip(video.path, spec) for video in batch]
      clips += [clips[-1]] * (batch_size - len(clips))
      latents.extend(np.asarray(_encode_videos(vae, jnp.asarray(np.stack(clips))), np.float32)[:len(batch)])
    for video, (embedding, length), video_latents in zip(shard_videos, texts, latents):
      yield {"key": str(video.path), "caption": video.caption, "latents": video_latents,
             "text_embedding": embedding, "text_length": length}

  return write_host_shards(builder, len(videos), make_examples, host_index=host_index, num_hosts=num_hosts,
                           examples_per_shard=examples_per_shard, finalize=finalize,
                           description="video shards")
