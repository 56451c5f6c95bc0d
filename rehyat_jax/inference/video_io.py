"""Video output: decoded frames -> uint8, the streaming VAE decode into an mp4 writer, VBench-style file names,
and the check that an mp4 can be written at all.

``generation.generate`` calls ``write_video`` and ``check_video_writer`` through this module, so a caller
without imageio-ffmpeg (bench/bench_generate.py on a bare GPU host) can swap in another writer here.
"""

from __future__ import annotations

import os
from pathlib import Path

import imageio.v2 as imageio
import jax
import numpy as np

from rehyat_jax.inference.pipeline import GenerationError
from rehyat_jax.models.wan_vae import WanVAE

FPS = 16
# Most file systems cap a name at 255 bytes; VBench prompts are far shorter, longer ones are cut.
MAX_NAME_BYTES = 200


def to_uint8_frames(frames: jax.Array) -> np.ndarray:
  """Decoded frames [1, 3, n, H, W] in [-1, 1] -> uint8 [n, H, W, 3]."""
  frames = np.asarray(frames[0], np.float32).transpose(1, 2, 3, 0)
  return np.clip(np.round((frames + 1.0) * 127.5), 0, 255).astype(np.uint8)


def check_video_writer() -> None:
  """Fail before any work when imageio cannot write mp4 (its ffmpeg plugin ships the binary)."""
  try:
    import imageio_ffmpeg  # noqa: F401  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise GenerationError("writing mp4 needs the imageio-ffmpeg package (pip install imageio-ffmpeg)") from None


def write_video(vae: WanVAE, latents: jax.Array, path: Path, fps: int = FPS) -> int:
  """Decodes ``latents`` frame group by frame group into an mp4 at ``path``; returns the frames written."""
  written = 0
  # macro_block_size=1: sizes are multiples of 16 already, and imageio must never resize silently.
  with imageio.get_writer(path, fps=fps, codec="libx264", quality=8, macro_block_size=1,
                          ffmpeg_log_level="error") as writer:
    for group in vae.decode_stream(latents):
      for frame in to_uint8_frames(group):
        writer.append_data(frame)
        written += 1
  return written


def video_name(prompt: str, index: int) -> str:
  """VBench's ``{prompt}-{index}.mp4``, with path separators replaced and over-long prompts cut."""
  stem = prompt.strip().replace(os.sep, "_").replace("/", "_")
  encoded = stem.encode("utf-8")
  if len(encoded) > MAX_NAME_BYTES:
    stem = encoded[:MAX_NAME_BYTES].decode("utf-8", errors="ignore")
  return f"{stem}-{index}.mp4"
