"""Video output: decoded frames -> uint8, the streaming VAE decode into an mp4 writer, VBench-style file names,
and the check that an mp4 can be written at all.

``generation.generate`` calls ``write_video`` and ``check_video_writer`` through this module, so a caller
without imageio-ffmpeg (bench/bench_generate.py on a bare GPU host) can swap in another writer here.

The mp4 writer pipes raw RGB frames into the ffmpeg binary that imageio-ffmpeg ships, started here rather than
by imageio's writer: imageio-ffmpeg starts ffmpeg with ``preexec_fn=os.setpgrp`` (so that Ctrl-C does not
reach ffmpeg), and a ``preexec_fn`` makes Python fork the whole multithreaded JAX process and run Python code
in the child before exec, which is what JAX's "os.fork() was called ... JAX is multithreaded" warning is about.
``process_group=0`` (Python >= 3.11) gives ffmpeg the same process group of its own without any Python code in
the child, so subprocess can use vfork/posix_spawn and no fork handler runs.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import jax
import numpy as np

from rehyat_jax.inference.pipeline import GenerationError
from rehyat_jax.models.wan_vae import WanVAE

FPS = 16
# libx264's constant rate factor (0 lossless .. 51 worst); 10 is imageio's quality=8, near-lossless.
CRF = 10
# Most file systems cap a name at 255 bytes; VBench prompts are far shorter, longer ones are cut.
MAX_NAME_BYTES = 200


def to_uint8_frames(frames: jax.Array) -> np.ndarray:
  """Decoded frames [1, 3, n, H, W] in [-1, 1] -> uint8 [n, H, W, 3]."""
  frames = np.asarray(frames[0], np.float32).transpose(1, 2, 3, 0)
  return np.clip(np.round((frames + 1.0) * 127.5), 0, 255).astype(np.uint8)


def check_video_writer() -> None:
  """Fail before any work when mp4 cannot be written (imageio-ffmpeg ships the ffmpeg binary)."""
  try:
    import imageio_ffmpeg  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise GenerationError("writing mp4 needs the imageio-ffmpeg package (pip install imageio-ffmpeg)") from None
  try:
    imageio_ffmpeg.get_ffmpeg_exe()
  except RuntimeError as e:
    raise GenerationError(f"writing mp4 needs an ffmpeg binary: {e}") from None


class Mp4Writer:
  """uint8 [H, W, 3] frames -> an H.264 mp4 (yuv420p, plays everywhere) through an ffmpeg process.

  The frame size comes from the first frame; sizes are never changed (generation checks they are multiples of
  16). Leaving the ``with`` block normally waits for ffmpeg and raises GenerationError with its message if it
  failed; leaving it by an exception stops ffmpeg.
  """

  def __init__(self, path: Path, fps: int = FPS):
    self.path, self.fps = Path(path), fps
    self.process = None
    self.errors = tempfile.TemporaryFile()  # ffmpeg's stderr: a pipe nobody reads could fill and block it

  def _start(self, height: int, width: int) -> None:
    import imageio_ffmpeg  # pylint: disable=g-import-not-at-top
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(self.fps), "-i", "-",
               "-an", "-vcodec", "libx264", "-pix_fmt", "yuv420p", "-crf", str(CRF), str(self.path)]
    self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self.errors,
                                    process_group=0)

  def append(self, frame: np.ndarray) -> None:
    if self.process is None:
      self._start(*frame.shape[:2])
    try:
      self.process.stdin.write(np.ascontiguousarray(frame, np.uint8).tobytes())
    except BrokenPipeError:
      self._finish()  # ffmpeg exited early: report its own message
      raise GenerationError(f"ffmpeg stopped while writing {self.path}") from None

  def _finish(self) -> None:
    if self.process is None:
      return
    process, self.process = self.process, None
    try:
      process.stdin.close()
    except BrokenPipeError:
      pass  # ffmpeg already exited: its status and message say why
    if process.wait() != 0:
      self.errors.seek(0)
      message = self.errors.read().decode(errors="replace").strip().splitlines()
      raise GenerationError(f"ffmpeg could not write {self.path} (exit status {process.returncode})"
                            + (f": {message[-1]}" if message else ""))

  def __enter__(self) -> "Mp4Writer":
    return self

  def __exit__(self, exc_type, exc, traceback) -> None:
    try:
      if exc_type is None:
        self._finish()
      elif self.process is not None:
        self.process.kill()
        self.process.wait()
        self.process = None
    finally:
      self.errors.close()


def write_video(vae: WanVAE, latents: jax.Array, path: Path, fps: int = FPS) -> int:
  """Decodes ``latents`` frame group by frame group into an mp4 at ``path``; returns the frames written."""
  written = 0
  with Mp4Writer(path, fps) as writer:
    for group in vae.decode_stream(latents):
      for frame in to_uint8_frames(group):
        writer.append(frame)
        written += 1
  return written


def video_name(prompt: str, index: int) -> str:
  """VBench's ``{prompt}-{index}.mp4``, with path separators replaced and over-long prompts cut."""
  stem = prompt.strip().replace(os.sep, "_").replace("/", "_")
  encoded = stem.encode("utf-8")
  if len(encoded) > MAX_NAME_BYTES:
    stem = encoded[:MAX_NAME_BYTES].decode("utf-8", errors="ignore")
  return f"{stem}-{index}.mp4"
