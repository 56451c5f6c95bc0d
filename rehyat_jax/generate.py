"""Text-to-video generation: prompt -> umT5 -> flow sampling with CFG -> streamed VAE decode -> mp4.

  python -m rehyat_jax.generate --dit CKPT/dit --t5 CKPT/t5 --tokenizer WAN_DIR --vae CKPT/vae \\
      --prompt "A cat walks on the grass" --out-dir videos/ [--frames 81] [--size 832*480] [--steps 50]
      [--guidance 5.0] [--shift 5.0] [--solver unipc|euler] [--seed 0] [--precision bf16]
      [--attention softmax|rehyat --phi PHI_DIR --chunk-frames 3 --overlap-frames 1 [--non-causal]]
      [--mode parallel|recurrent] [--save-latents]
  python -m rehyat_jax.generate ... --prompts-file vbench_prompts.txt --seeds-per-prompt 5

``--dit``, ``--t5`` and ``--vae`` are converted checkpoint folders (``convert_wan_checkpoint``,
``convert_umt5_checkpoint``, ``convert_wan_vae``); ``--tokenizer`` is ``spiece.model`` or a folder holding it.
Videos are named VBench style, ``{prompt}-{i}.mp4`` with seed ``seed + i`` for i < seeds per prompt.

Flow per video (Wan2.1's ``WanT2V.generate``): tokenize and umT5-encode the prompt and the negative prompt
(Wan's default), draw seeded noise [1, 16, (frames - 1) / 4 + 1, H / 8, W / 8], run the sampler with
classifier-free guidance (two DiT passes per step: the parallel forward, or ``recurrent_forward`` for a fully
causal ReHyAt student, whose memory does not grow with the video length), then decode latent frame by latent
frame (``WanVAE.decode_stream``) straight into an mp4 writer at 16 fps. Every argument is validated before
any model is loaded or compiled.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import imageio.v2 as imageio
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from rehyat_jax.attention.config import RehyatConfig
from rehyat_jax.attention.feature_maps import ACTIVATIONS, FeatureMapConfig
from rehyat_jax.attention.window import BACKENDS as WINDOW_BACKENDS
from rehyat_jax.convert.loading import load_pretrained
from rehyat_jax.convert.umt5 import load_umt5
from rehyat_jax.convert.wan_dit import read_converted_config
from rehyat_jax.convert.wan_vae import load_wan_vae
from rehyat_jax.models.config import PrecisionPolicy
from rehyat_jax.models.tokenizer import UMT5Tokenizer
from rehyat_jax.models.umt5 import UMT5Encoder, encode_for_wan
from rehyat_jax.models.wan import RuntimeConfig, WanDiT
from rehyat_jax.models.wan_vae import WanVAE
from rehyat_jax.sampling import (SOLVERS, WAN_NEGATIVE_PROMPT, WAN_T2V_GUIDANCE_SCALE, WAN_T2V_SAMPLING_STEPS,
                                 WAN_T2V_SHIFT, FlowSchedule, euler_flow_schedule, sample, unipc_flow_schedule)
from rehyat_jax.train.checkpointing import restore_phi
from rehyat_jax.train.config_checks import ConfigError, converted_blocks_spec

ATTENTIONS = ("softmax", "rehyat")
MODES = ("parallel", "recurrent")
FPS = 16
# Wan2.1's VAE compresses time by 4 and space by 8, and the DiT patches space by 2: sizes checked before any
# model is loaded use these; ``generate`` re-checks against the loaded models' own factors.
WAN_TEMPORAL_FACTOR = 4
WAN_SIZE_MULTIPLE = 16
# Most file systems cap a name at 255 bytes; VBench prompts are far shorter, longer ones are cut.
MAX_NAME_BYTES = 200


class GenerationError(ValueError):
  """An argument that cannot produce a video; raised before any work starts."""


@dataclasses.dataclass
class Pipeline:
  """The four loaded parts of Wan2.1 text-to-video."""

  dit: WanDiT
  text_encoder: UMT5Encoder
  tokenizer: UMT5Tokenizer
  vae: WanVAE


@dataclasses.dataclass(frozen=True)
class VideoResult:
  """One generated video: where it was written, its seed, its final latents and the seconds it took."""

  path: Path
  prompt: str
  seed: int
  latents: np.ndarray
  seconds: float
  # Where the time and the memory go: seconds of prompt encoding + sampling and of decoding +
  # writing, and the device's peak bytes (GiB, None on CPU) after each, so a jump names the phase.
  sampling_seconds: float = 0.0
  decode_seconds: float = 0.0
  peak_gib_after_sampling: float | None = None
  peak_gib_after_decode: float | None = None


# ----------------------------------------------------------------------------------------------------------
# Validation (cheap, before anything is loaded or compiled)
# ----------------------------------------------------------------------------------------------------------

def check_video_shape(frames: int, height: int, width: int, *, temporal_factor: int = WAN_TEMPORAL_FACTOR,
                      size_multiple: int = WAN_SIZE_MULTIPLE) -> None:
  """Frames must be ``temporal_factor * k + 1`` and height / width multiples of ``size_multiple``."""
  if frames < 1 or (frames - 1) % temporal_factor:
    below = (max(frames - 1, 0) // temporal_factor) * temporal_factor + 1
    raise GenerationError(f"frames={frames} is not of the form {temporal_factor}k+1 (the VAE keeps the first frame "
                          f"and compresses the rest by {temporal_factor}); try {below} or "
                          f"{below + temporal_factor}")
  for name, value in (("height", height), ("width", width)):
    if value < size_multiple or value % size_multiple:
      raise GenerationError(f"{name}={value} is not a positive multiple of {size_multiple} (VAE stride x DiT "
                            f"patch size)")


def check_prompts(prompts: Sequence[str], source: str = "prompts") -> list[str]:
  """The prompts as a list; an empty list or a blank prompt is an error."""
  if isinstance(prompts, str):
    prompts = [prompts]
  prompts = list(prompts)
  if not prompts:
    raise GenerationError(f"{source}: no prompts")
  blank = [i for i, p in enumerate(prompts) if not p.strip()]
  if blank:
    raise GenerationError(f"{source}: prompt {blank[0]} is empty")
  return prompts


def read_prompts_file(path: str | os.PathLike) -> list[str]:
  """One prompt per line; blank lines are skipped; a file with no prompt is an error."""
  path = Path(path)
  if not path.is_file():
    raise GenerationError(f"prompts file {path} does not exist")
  prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
  if not prompts:
    raise GenerationError(f"prompts file {path} is empty (one prompt per line expected)")
  return prompts


def check_attention_mode(attention: str, mode: str, rehyat: RehyatConfig | None, num_layers: int) -> None:
  """``attention`` / ``mode`` known, a ReHyAt config exactly when attention is 'rehyat', and for the recurrent
  mode a student whose every block is causal ReHyAt."""
  if attention not in ATTENTIONS:
    raise GenerationError(f"unknown attention {attention!r}; choose one of {ATTENTIONS}")
  if mode not in MODES:
    raise GenerationError(f"unknown mode {mode!r}; choose one of {MODES}")
  if (attention == "rehyat") != (rehyat is not None):
    raise GenerationError(f"attention={attention!r} but the DiT is "
                          f"{'a ReHyAt student' if rehyat is not None else 'the softmax teacher'}")
  if mode != "recurrent":
    return
  if rehyat is None:
    raise GenerationError("mode='recurrent' needs attention='rehyat' (a causal ReHyAt student); the softmax "
                          "teacher runs in mode='parallel' only")
  if not rehyat.causal:
    raise GenerationError("mode='recurrent' needs a causal ReHyAt student; this one is non-causal")
  try:
    mask = rehyat.converted_mask(num_layers)
  except ValueError as e:
    raise GenerationError(str(e)) from None
  softmax_blocks = [i for i, converted in enumerate(mask) if not converted]
  if softmax_blocks:
    raise GenerationError(f"mode='recurrent' needs every block converted to ReHyAt; blocks {softmax_blocks} of "
                          f"{num_layers} keep full softmax (partially converted student): use mode='parallel'")


def _check_pipeline(pipeline: Pipeline, frames: int, height: int, width: int, attention: str, mode: str) -> None:
  dit, vae = pipeline.dit, pipeline.vae
  _, ph, pw = dit.cfg.patch_size
  check_video_shape(frames, height, width, temporal_factor=vae.cfg.temporal_factor,
                    size_multiple=vae.cfg.spatial_factor * max(ph, pw))
  check_attention_mode(attention, mode, dit.rehyat, dit.cfg.num_layers)
  if dit.cfg.in_dim != vae.cfg.z_dim or dit.cfg.out_dim != vae.cfg.z_dim:
    raise GenerationError(f"the DiT's latent channels (in {dit.cfg.in_dim}, out {dit.cfg.out_dim}) differ from the "
                          f"VAE's z_dim={vae.cfg.z_dim}")
  if pipeline.text_encoder.cfg.d_model != dit.cfg.text_dim:
    raise GenerationError(f"the text encoder's width {pipeline.text_encoder.cfg.d_model} differs from the DiT's "
                          f"text_dim={dit.cfg.text_dim}")
  if pipeline.tokenizer.text_len > dit.cfg.text_len:
    raise GenerationError(f"tokenizer text_len={pipeline.tokenizer.text_len} exceeds the DiT's "
                          f"text_len={dit.cfg.text_len}")


# ----------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------

def load_pipeline(dit_path: str | os.PathLike, t5_path: str | os.PathLike, tokenizer_path: str | os.PathLike,
                  vae_path: str | os.PathLike, *, rehyat: RehyatConfig | None = None,
                  phi_path: str | os.PathLike | None = None, precision: str = "bf16",
                  hybrid_backend: str = "auto") -> Pipeline:
  """The converted checkpoints as a ``Pipeline``; with ``rehyat`` the DiT is a student whose phi come from
  ``phi_path`` (an ``export_phi`` folder). ``precision`` applies to the DiT and umT5; the VAE runs in float32.
  ``hybrid_backend``: the student's softmax-window implementation (``RuntimeConfig.hybrid_backend``)."""
  run = RuntimeConfig(precision=precision, hybrid_backend=hybrid_backend)
  dit = load_pretrained(dit_path, run=run, rehyat=rehyat)
  if phi_path is not None:
    restore_phi(phi_path, dit)
  text_encoder = load_umt5(t5_path, PrecisionPolicy.named(precision))
  tokenizer = UMT5Tokenizer(tokenizer_path, text_len=dit.cfg.text_len)
  return Pipeline(dit=dit, text_encoder=text_encoder, tokenizer=tokenizer, vae=load_wan_vae(vae_path))


# ----------------------------------------------------------------------------------------------------------
# The pieces of one generation
# ----------------------------------------------------------------------------------------------------------

def make_schedule(solver: str, steps: int, shift: float) -> FlowSchedule:
  if solver not in SOLVERS:
    raise GenerationError(f"unknown solver {solver!r}; choose one of {SOLVERS}")
  try:
    return unipc_flow_schedule(steps, shift) if solver == "unipc" else euler_flow_schedule(steps, shift)
  except (TypeError, ValueError) as e:
    raise GenerationError(str(e)) from None


def make_text_encoder(pipeline: Pipeline) -> Callable[[Sequence[str]], jax.Array]:
  """texts -> Wan's text embeddings [B, text_len, d_model] (padding zeroed), one compiled program."""
  graphdef, state = nnx.split(pipeline.text_encoder)
  text_len = pipeline.dit.cfg.text_len

  @jax.jit
  def encode(state, ids, mask):
    hidden = nnx.merge(graphdef, state)(ids, mask)
    return encode_for_wan(hidden, mask, text_len)

  def encode_texts(texts: Sequence[str]) -> jax.Array:
    ids, mask = pipeline.tokenizer(list(texts))
    return encode(state, jnp.asarray(ids), jnp.asarray(mask))

  return encode_texts


def make_sampler(dit: WanDiT, schedule: FlowSchedule, *, solver: str, guidance: float | None,
                 mode: str) -> Callable[[jax.Array, jax.Array, jax.Array], jax.Array]:
  """(noise, text, negative text) -> final latents, the whole sampling loop as one compiled program.

  With guidance (any scale but None and 1) the DiT runs twice per step, on the prompt and on the negative
  prompt; two passes rather than a batch of two keep peak activation memory at one video's.
  """
  graphdef, state = nnx.split(dit)
  guided = guidance is not None and guidance != 1.0

  @jax.jit
  def run(state, noise, text, negative_text):
    def denoise(x, timesteps):
      # Merged inside the traced loop: the weights are the jit's arguments, never baked-in constants.
      model = nnx.merge(graphdef, state)
      forward = model.recurrent_forward if mode == "recurrent" else model
      cond = forward(x, timesteps, text)
      return (cond, forward(x, timesteps, negative_text)) if guided else cond

    return sample(denoise, noise, schedule=schedule, solver=solver, guidance_scale=guidance if guided else None)

  return lambda noise, text, negative_text: run(state, noise, text, negative_text)


def latent_shape(pipeline: Pipeline, frames: int, height: int, width: int) -> tuple[int, ...]:
  vae = pipeline.vae.cfg
  return (1, vae.z_dim, (frames - 1) // vae.temporal_factor + 1, height // vae.spatial_factor,
          width // vae.spatial_factor)


def to_uint8_frames(frames: jax.Array) -> np.ndarray:
  """Decoded frames [1, 3, n, H, W] in [-1, 1] -> uint8 [n, H, W, 3]."""
  frames = np.asarray(frames[0], np.float32).transpose(1, 2, 3, 0)
  return np.clip(np.round((frames + 1.0) * 127.5), 0, 255).astype(np.uint8)


def check_video_writer() -> None:
  """Fail before any work when imageio cannot write mp4 (its ffmpeg plugin ships the binary)."""
  try:
    import imageio_ffmpeg  # pylint: disable=g-import-not-at-top,unused-import
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


# ----------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------

def generate(pipeline: Pipeline, prompts: str | Sequence[str], *, out_dir: str | os.PathLike, frames: int = 81,
             height: int = 480, width: int = 832, steps: int = WAN_T2V_SAMPLING_STEPS,
             guidance: float | None = WAN_T2V_GUIDANCE_SCALE, shift: float = WAN_T2V_SHIFT,
             solver: str = "unipc", seed: int = 0, seeds_per_prompt: int = 1, attention: str = "softmax",
             mode: str = "parallel", negative_prompt: str = WAN_NEGATIVE_PROMPT, save_latents: bool = False,
             show_progress: bool = True) -> list[VideoResult]:
  """Generates ``seeds_per_prompt`` videos per prompt into ``out_dir`` (see the module docstring).

  ``attention`` must say what the DiT is ('rehyat' for a student), ``mode='recurrent'`` runs the DiT chunk by
  chunk (every block causal ReHyAt). ``guidance=None`` or 1 skips the negative prompt's pass. Everything is
  validated before any work; returns one ``VideoResult`` per video, in order.
  """
  prompts = check_prompts(prompts)
  _check_pipeline(pipeline, frames, height, width, attention, mode)
  check_video_writer()
  schedule = make_schedule(solver, steps, shift)
  if seeds_per_prompt < 1:
    raise GenerationError(f"seeds_per_prompt must be >= 1; got {seeds_per_prompt}")
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)

  encode = make_text_encoder(pipeline)
  sampler = make_sampler(pipeline.dit, schedule, solver=solver, guidance=guidance, mode=mode)
  # As Wan: an empty negative prompt means the default one.
  negative_text = encode([negative_prompt or WAN_NEGATIVE_PROMPT])
  shape = latent_shape(pipeline, frames, height, width)
  jobs = [(prompt, i) for prompt in prompts for i in range(seeds_per_prompt)]
  results = []
  for prompt, index in tqdm(jobs, desc="videos", unit="video", disable=not show_progress):
    start = time.perf_counter()
    video_seed = seed + index
    noise = jax.random.normal(jax.random.key(video_seed), shape, jnp.float32)
    latents = jax.block_until_ready(sampler(noise, encode([prompt]), negative_text))
    sampled, peak_after_sampling = time.perf_counter(), peak_gib()
    path = out_dir / video_name(prompt, index)
    write_video(pipeline.vae, latents, path)
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


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------

def parse_size(text: str) -> tuple[int, int]:
  """'WxH' or Wan's 'W*H' -> (width, height)."""
  match = re.fullmatch(r"\s*(\d+)\s*[x*X]\s*(\d+)\s*", text)
  if not match:
    raise argparse.ArgumentTypeError(f"size {text!r} is not WIDTHxHEIGHT (or Wan's WIDTH*HEIGHT), e.g. 832x480")
  return int(match.group(1)), int(match.group(2))


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m rehyat_jax.generate", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n\n", 1)[1])
  p.add_argument("--dit", required=True, help="converted DiT folder (convert_wan_checkpoint)")
  p.add_argument("--t5", required=True, help="converted umT5 folder (convert_umt5_checkpoint)")
  p.add_argument("--tokenizer", required=True, help="spiece.model, or a folder holding it")
  p.add_argument("--vae", required=True, help="converted VAE folder (convert_wan_vae)")
  prompts = p.add_mutually_exclusive_group(required=True)
  prompts.add_argument("--prompt", help="one prompt")
  prompts.add_argument("--prompts-file", help="one prompt per line (VBench style batch)")
  p.add_argument("--seeds-per-prompt", type=int, default=None,
                 help="videos per prompt, seeds seed..seed+n-1 (default: 5 with --prompts-file, else 1)")
  p.add_argument("--negative-prompt", default=WAN_NEGATIVE_PROMPT, help="default (or when empty): Wan2.1's")
  p.add_argument("--out-dir", default="videos")
  p.add_argument("--frames", type=int, default=81, help="video frames, 4k+1")
  p.add_argument("--size", type=parse_size, default=(832, 480), help="WIDTHxHEIGHT or W*H, multiples of 16")
  p.add_argument("--steps", type=int, default=WAN_T2V_SAMPLING_STEPS)
  p.add_argument("--guidance", type=float, default=WAN_T2V_GUIDANCE_SCALE, help="CFG scale; 1 turns CFG off")
  p.add_argument("--shift", type=float, default=WAN_T2V_SHIFT)
  p.add_argument("--solver", default="unipc", help=f"one of {SOLVERS}")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--precision", default="bf16", help="DiT and umT5 precision: fp32 | bf16 | bf16_params")
  p.add_argument("--attention", default="softmax", help=f"one of {ATTENTIONS}")
  p.add_argument("--mode", default="parallel", help=f"one of {MODES}; recurrent needs an all-causal student")
  p.add_argument("--save-latents", action="store_true", help="also write each video's final latents (.npy)")
  r = p.add_argument_group("ReHyAt student (--attention rehyat); must match the exported phi")
  r.add_argument("--phi", default=None, help="exported phi folder (train/checkpointing.export_phi)")
  r.add_argument("--chunk-frames", type=int, default=3, help="latent frames per chunk")
  r.add_argument("--overlap-frames", type=int, default=1)
  r.add_argument("--non-causal", action="store_true", help="a non-causal student (parallel mode only)")
  r.add_argument("--hybrid-form", default="parallel", help="reference | parallel | scan")
  r.add_argument("--window-backend", default="auto",
                 help=f"softmax window of the student: one of {WINDOW_BACKENDS} (auto: the fused kernel on GPU)")
  r.add_argument("--phi-input", default="post_rope", help="post_rope | pre_rope")
  r.add_argument("--converted-blocks", default="all", help="'all', a count, or comma-separated block ids")
  r.add_argument("--phi-degree", type=int, default=2)
  r.add_argument("--phi-hidden", type=int, default=256)
  r.add_argument("--phi-feature-dim", type=int, default=128)
  r.add_argument("--phi-activation", default="gelu", help=f"one of {sorted(ACTIVATIONS)}")
  return p


def rehyat_from_args(args: argparse.Namespace) -> RehyatConfig | None:
  if args.attention != "rehyat":
    return None
  try:
    feature_map = FeatureMapConfig(degree=args.phi_degree, hidden=args.phi_hidden, feature_dim=args.phi_feature_dim,
                                   activation=args.phi_activation)
    return RehyatConfig(chunk_frames=args.chunk_frames, overlap_frames=args.overlap_frames,
                        causal=not args.non_causal, mode=args.hybrid_form, phi_input=args.phi_input,
                        converted_blocks=converted_blocks_spec(args.converted_blocks), feature_map=feature_map)
  except (ConfigError, ValueError) as e:
    raise GenerationError(f"ReHyAt flags: {e}") from None


def validate_args(args: argparse.Namespace) -> tuple[list[str], RehyatConfig | None]:
  """Every check that needs no model: (prompts, ReHyAt config). Raises GenerationError."""
  prompts = read_prompts_file(args.prompts_file) if args.prompts_file else check_prompts([args.prompt], "--prompt")
  width, height = args.size
  check_video_shape(args.frames, height, width)
  if args.seeds_per_prompt is not None and args.seeds_per_prompt < 1:
    raise GenerationError(f"--seeds-per-prompt must be >= 1; got {args.seeds_per_prompt}")
  make_schedule(args.solver, args.steps, args.shift)
  try:
    PrecisionPolicy.named(args.precision)
  except ValueError as e:
    raise GenerationError(str(e)) from None
  if args.attention not in ATTENTIONS:
    raise GenerationError(f"unknown --attention {args.attention!r}; choose one of {ATTENTIONS}")
  if args.window_backend not in WINDOW_BACKENDS:
    raise GenerationError(f"unknown --window-backend {args.window_backend!r}; choose one of {WINDOW_BACKENDS}")
  rehyat = rehyat_from_args(args)
  for flag, path in (("--dit", args.dit), ("--t5", args.t5), ("--tokenizer", args.tokenizer),
                     ("--vae", args.vae), ("--phi", args.phi)):
    if path is not None and not Path(path).exists():
      raise GenerationError(f"{flag} {path}: no such file or directory")
  if args.phi is not None and rehyat is None:
    raise GenerationError("--phi is given but --attention is 'softmax'; pass --attention rehyat")
  # The DiT's config.json is tiny: reading it lets the recurrent-mode check see the real depth.
  check_attention_mode(args.attention, args.mode, rehyat, read_converted_config(args.dit).num_layers)
  return prompts, rehyat


def main(argv: Iterable[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    prompts, rehyat = validate_args(args)
  except GenerationError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if rehyat is not None and args.phi is None:
    print("warning: --attention rehyat without --phi: the feature maps are freshly initialised (untrained)",
          file=sys.stderr)
  pipeline = load_pipeline(args.dit, args.t5, args.tokenizer, args.vae, rehyat=rehyat, phi_path=args.phi,
                           precision=args.precision, hybrid_backend=args.window_backend)
  seeds_per_prompt = args.seeds_per_prompt or (5 if args.prompts_file else 1)
  width, height = args.size
  try:
    results = generate(pipeline, prompts, out_dir=args.out_dir, frames=args.frames, height=height, width=width,
                       steps=args.steps, guidance=args.guidance, shift=args.shift, solver=args.solver,
                       seed=args.seed, seeds_per_prompt=seeds_per_prompt, attention=args.attention,
                       mode=args.mode, negative_prompt=args.negative_prompt, save_latents=args.save_latents)
  except GenerationError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(summary(results, args.out_dir))
  return 0


def summary(results: Sequence[VideoResult], out_dir: str | os.PathLike) -> str:
  """Seconds per video (the first one includes compilation, so it is shown apart) and peak device memory."""
  seconds = [r.seconds for r in results]
  timing = f"{seconds[0]:.2f} s per video (including compilation)"
  if len(seconds) > 1:
    timing = (f"{np.mean(seconds[1:]):.2f} s per video after the first ({seconds[0]:.2f} s, including "
              "compilation)")
  return f"wrote {len(results)} video(s) to {out_dir}: {timing}; peak device memory {peak_memory()}"


if __name__ == "__main__":
  sys.exit(main())
