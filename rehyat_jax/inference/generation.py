"""``generate``: prompts -> umT5 -> flow sampling with CFG -> streamed VAE decode -> mp4 per video, with its
per-video record (``VideoResult``), the device peak-memory helpers and the printed summary.

First every distinct prompt and the negative prompt (Wan's default) are tokenized and umT5-encoded, with the
encoder's weights on the accelerator only for that (``text_encoder_on_device``); then, per video (Wan2.1's
``WanT2V.generate``): draw seeded noise [1, 16, (frames - 1) / 4 + 1, H / 8, W / 8], run the sampler with
classifier-free guidance (two DiT passes per step: the parallel forward, or ``recurrent_forward`` for a fully
causal ReHyAt student, whose memory does not grow with the video length), then decode latent frame by latent
frame (``WanVAE.decode_stream``) straight into an mp4 writer at 16 fps. Videos are named VBench style,
``{prompt}-{i}.mp4`` with seed ``seed + i``. Every argument is validated before any work.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from rehyat_jax.core import prng
from rehyat_jax.inference import video_io
from rehyat_jax.inference.pipeline import GenerationError, Pipeline, check_pipeline, check_prompts
from rehyat_jax.inference.sampler import (branch_mesh, latent_shape, make_sampler, make_schedule,
                                         text_encoder_on_device)
from rehyat_jax.sampling import WAN_NEGATIVE_PROMPT, WAN_T2V_GUIDANCE_SCALE, WAN_T2V_SAMPLING_STEPS, WAN_T2V_SHIFT


@dataclasses.dataclass(frozen=True)
class VideoResult:
  """One generated video: where it was written, its seed, its final latents and the seconds it took."""

  path: Path
  prompt: str
  seed: int
  latents: np.ndarray
  seconds: float
  # Where the time and the memory go: seconds of sampling (the prompts are encoded before the first
  # video) and of decoding + writing, and the device's peak bytes (GiB, None on CPU) after each, so a
  # jump names the phase.
  sampling_seconds: float = 0.0
  decode_seconds: float = 0.0
  peak_gib_after_sampling: float | None = None
  peak_gib_after_decode: float | None = None


def peak_gib() -> float | None:
  """Peak GiB in use on the first local device so far; None where the backend keeps no statistics (CPU)."""
  stats = jax.local_devices()[0].memory_stats()
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return stats["peak_bytes_in_use"] / 2**30


def peak_memory() -> str:
  """``peak_gib`` for printing ('n/a' on CPU)."""
  peak = peak_gib()
  return "n/a" if peak is None else f"{peak:.2f} GiB"


def generate(pipeline: Pipeline, prompts: str | Sequence[str], *, out_dir: str | os.PathLike, frames: int = 81,
             height: int = 480, width: int = 832, steps: int = WAN_T2V_SAMPLING_STEPS,
             guidance: float | None = WAN_T2V_GUIDANCE_SCALE, shift: float = WAN_T2V_SHIFT,
             solver: str = "unipc", seed: int = 0, seeds_per_prompt: int = 1, forward: str = "parallel",
             negative_prompt: str = WAN_NEGATIVE_PROMPT, save_latents: bool = False,
             show_progress: bool = True, cfg_devices: int = 1) -> list[VideoResult]:
  """Generates ``seeds_per_prompt`` videos per prompt into ``out_dir`` (see the module docstring).

  Whether the DiT is a student is read from it (``pipeline.dit.rehyat``); ``forward='recurrent'`` runs it
  chunk by chunk (every block causal ReHyAt). ``guidance=None`` or 1 skips the negative prompt's pass;
  ``cfg_devices=2`` runs the prompt's and the negative prompt's passes at once on two devices.
  Everything is validated before any work; returns one ``VideoResult`` per video, in order.

  The text encoder's weights are moved to host memory before sampling, always, and stay there after the call
  (the next call copies them back to encode): umT5-XXL is ~11 GiB in bf16, the DiT 1.3B ~2.6 GiB, so keeping
  it on the device would use most of a ~20 GiB generation budget while it does nothing. It is not an option
  because it costs one host -> device copy per call (~0.6 s at ~20 GB/s from pinned memory), negligible next
  to a video, and a switch would be a second memory path to test. The embeddings wait in host memory too (a
  few MiB per prompt, so a long prompt file does not fill the device); each goes to the device for its videos.
  """
  prompts = check_prompts(prompts)
  check_pipeline(pipeline, frames, height, width, forward)
  video_io.check_video_writer()
  schedule = make_schedule(solver, steps, shift)
  if guidance is not None and guidance != 1.0:
    branch_mesh(cfg_devices)  # a device count that cannot work fails here, before anything is written
  if seeds_per_prompt < 1:
    raise GenerationError(f"seeds_per_prompt must be >= 1; got {seeds_per_prompt}")
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)

  with text_encoder_on_device(pipeline) as encode:
    # As Wan: an empty negative prompt means the default one.
    negative_text = encode([negative_prompt or WAN_NEGATIVE_PROMPT])  # used by every video: stays on device
    texts = {prompt: np.asarray(encode([prompt])) for prompt in dict.fromkeys(prompts)}
  sampler = make_sampler(pipeline.dit, schedule, solver=solver, guidance=guidance, forward=forward,
                         cfg_devices=cfg_devices)
  shape = latent_shape(pipeline, frames, height, width)
  jobs = [(prompt, i) for prompt in prompts for i in range(seeds_per_prompt)]
  results = []
  for prompt, index in tqdm(jobs, desc="videos", unit="video", disable=not show_progress):
    start = time.perf_counter()
    video_seed = seed + index
    noise = prng.normal(jax.random.key(video_seed), shape, jnp.float32)  # same values, compiles in ~1 s not ~45
    latents = jax.block_until_ready(sampler(noise, jnp.asarray(texts[prompt]), negative_text))
    sampled, peak_after_sampling = time.perf_counter(), peak_gib()
    path = out_dir / video_io.video_name(prompt, index)
    video_io.write_video(pipeline.vae, latents, path)
    latents = np.asarray(latents)
    if save_latents:
      np.save(path.with_suffix(".npy"), latents)
    end = time.perf_counter()
    results.append(VideoResult(path=path, prompt=prompt, seed=video_seed, latents=latents,
                               seconds=end - start, sampling_seconds=sampled - start,
                               decode_seconds=end - sampled,
                               peak_gib_after_sampling=peak_after_sampling,
                               peak_gib_after_decode=peak_gib()))
  return results


def summary(results: Sequence[VideoResult], out_dir: str | os.PathLike) -> str:
  """Seconds per video (the first one includes compilation, so it is shown apart) and peak device memory."""
  seconds = [r.seconds for r in results]
  timing = f"{seconds[0]:.2f} s per video (including compilation)"
  if len(seconds) > 1:
    timing = (f"{np.mean(seconds[1:]):.2f} s per video after the first ({seconds[0]:.2f} s, including "
              "compilation)")
  return f"wrote {len(results)} video(s) to {out_dir}: {timing}; peak device memory {peak_memory()}"
