"""Text-to-video generation: prompt -> umT5 -> flow sampling with CFG -> streamed VAE decode -> mp4.

  python -m rehyat_jax.generate --dit ckpt/dit --t5 ckpt/t5 --tokenizer WAN_DIR --vae ckpt/vae \\
      --prompt "A cat walks on the grass" --out-dir videos/
  python -m rehyat_jax.generate ... --student runs/distill_wan_1_3b/student_export --forward recurrent
  python -m rehyat_jax.generate ... --prompts-file vbench_prompts.txt --seeds-per-prompt 5

The model folders are converted checkpoints, written from a Wan2.1 release (e.g. Wan2.1-T2V-1.3B/) by
  python tools/convert_wan_weights.py WAN_DIR ckpt/dit
  python tools/convert_wan_weights.py WAN_DIR/models_t5_umt5-xxl-enc-bf16.pth ckpt/t5 --component umt5
  python tools/convert_wan_weights.py WAN_DIR/Wan2.1_VAE.pth ckpt/vae --component vae
and --tokenizer is WAN_DIR itself (its google/umt5-xxl/spiece.model is found there).

--student is a student export written by training stage 1 (student.json + adapters): it says what the student
is (chunking, causality, feature map, converted blocks), so no ReHyAt setting is typed here, and it must have
been distilled from the --dit teacher. Without it the DiT is the softmax teacher. --hybrid-form and
--window-backend only choose how the student's attention runs inside a whole-sequence forward.
Videos are named VBench style, {prompt}-{i}.mp4, with seed + i for the i-th video of a prompt.

Per video (Wan2.1's WanT2V.generate): tokenize and umT5-encode the prompt and the negative prompt, draw seeded
noise [1, 16, (frames - 1) / 4 + 1, height / 8, width / 8], run the sampler with classifier-free guidance (two
DiT passes per step: the parallel forward, or with --forward recurrent the chunk-by-chunk forward of a fully
causal ReHyAt student, whose memory does not grow with the video length), then decode latent frame by latent
frame straight into an mp4 at 16 fps. Every argument is checked before any model is loaded or compiled.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Iterable

from rehyat_jax.attention import FORMS, WINDOW_BACKENDS
from rehyat_jax.convert.student import StudentExportError, read_student_config
from rehyat_jax.convert.wan_dit import read_converted_config
from rehyat_jax.inference.generation import generate, summary
from rehyat_jax.inference.pipeline import (FORWARDS, GenerationError, check_forward, check_prompts,
                                           check_video_shape, load_pipeline, read_prompts_file)
from rehyat_jax.inference.sampler import branch_mesh, make_schedule
from rehyat_jax.models.wan import RuntimeConfig
from rehyat_jax.sampling import (SOLVERS, WAN_NEGATIVE_PROMPT, WAN_T2V_GUIDANCE_SCALE, WAN_T2V_SAMPLING_STEPS,
                                 WAN_T2V_SHIFT)

# "auto" picks the fused kernel where one runs (RuntimeConfig's default); the rest is the registry's.
WINDOW_CHOICES = tuple(dict.fromkeys(("auto", *WINDOW_BACKENDS)))


def parse_size(text: str) -> tuple[int, int]:
  """'WxH' or Wan's 'W*H' -> (width, height)."""
  match = re.fullmatch(r"\s*(\d+)\s*[x*X]\s*(\d+)\s*", text)
  if not match:
    raise argparse.ArgumentTypeError(f"size {text!r} is not WIDTHxHEIGHT (or Wan's WIDTH*HEIGHT), e.g. 832x480")
  return int(match.group(1)), int(match.group(2))


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
  """Keeps the description's line breaks (its example commands); defaults are written into each help text."""


def build_parser() -> argparse.ArgumentParser:
  # Names are checked by validate_args, not argparse choices: a bad one is a one-line error and exit 2
  # from main (argparse would raise SystemExit instead of returning).
  p = argparse.ArgumentParser(prog="python -m rehyat_jax.generate", description=__doc__.split("\n\n")[0],
                              formatter_class=HelpFormatter,
                              epilog="examples:\n" + __doc__.split("\n\n", 1)[1])
  p.add_argument("--dit", required=True, metavar="DIR",
                 help="converted DiT folder (tools/convert_wan_weights.py WAN_DIR DIR): the teacher")
  p.add_argument("--t5", required=True, metavar="DIR",
                 help="converted umT5 text encoder folder (tools/convert_wan_weights.py ... --component umt5)")
  p.add_argument("--tokenizer", required=True, metavar="PATH",
                 help="umT5's spiece.model, a folder holding it, or the Wan2.1 release folder (google/umt5-xxl/)")
  p.add_argument("--vae", required=True, metavar="DIR",
                 help="converted VAE folder (tools/convert_wan_weights.py ... --component vae)")
  prompts = p.add_mutually_exclusive_group(required=True)
  prompts.add_argument("--prompt", help="one prompt")
  prompts.add_argument("--prompts-file", metavar="FILE", help="one prompt per line (a VBench-style batch)")
  p.add_argument("--seeds-per-prompt", type=int, default=None, metavar="N",
                 help="videos per prompt, with seeds seed .. seed+N-1 (default: 5 with --prompts-file, else 1)")
  p.add_argument("--negative-prompt", default=WAN_NEGATIVE_PROMPT, metavar="TEXT",
                 help="what guidance steers away from (default, also when empty: Wan2.1's standard negative "
                      "prompt, a Chinese list of artefacts)")
  p.add_argument("--out-dir", default="videos", metavar="DIR", help="where the videos go (default: %(default)s)")
  p.add_argument("--frames", type=int, default=81, help="video frames, of the form 4k+1 (default: %(default)s)")
  p.add_argument("--size", type=parse_size, default=(832, 480), metavar="WxH",
                 help="WIDTHxHEIGHT (or Wan's W*H), multiples of 16 (default: 832x480)")
  p.add_argument("--steps", type=int, default=WAN_T2V_SAMPLING_STEPS,
                 help="sampler steps; each runs the DiT twice with guidance (default: %(default)s)")
  p.add_argument("--guidance", type=float, default=WAN_T2V_GUIDANCE_SCALE,
                 help="classifier-free guidance scale; 1 turns guidance off (default: %(default)s)")
  p.add_argument("--shift", type=float, default=WAN_T2V_SHIFT,
                 help="timestep shift of the noise schedule: larger spends more steps at high noise "
                      "(default: %(default)s, Wan2.1 T2V's)")
  p.add_argument("--solver", default="unipc", help=f"sampler, one of {', '.join(SOLVERS)} (default: %(default)s)")
  p.add_argument("--seed", type=int, default=0, help="noise seed of each prompt's first video (default: %(default)s)")
  p.add_argument("--precision", default="bf16",
                 help="DiT and umT5 precision: fp32 | bf16 (bf16 matmuls, fp32 weights) | bf16_params "
                      "(default: %(default)s)")
  p.add_argument("--save-latents", action="store_true", help="also write each video's final latents (.npy)")
  p.add_argument("--cfg-devices", type=int, default=1, choices=(1, 2),
                 help="1: the prompt's and the negative prompt's DiT passes one after the other; 2: both at once, "
                      "one per device, on the first two devices (default: %(default)s)")
  s = p.add_argument_group("ReHyAt student (its settings come from the export's student.json)")
  s.add_argument("--student", default=None, metavar="EXPORT_DIR",
                 help="student export written by stage 1 (<workdir>/student_export); without it the DiT is the "
                      "softmax teacher")
  s.add_argument("--forward", default="parallel",
                 help=f"one of {', '.join(FORWARDS)}: the whole DiT at once, or chunk by chunk with flat memory "
                      "(recurrent needs every block of the student causal ReHyAt) (default: %(default)s)")
  s.add_argument("--hybrid-form", default="parallel",
                 help=f"how the student's attention runs inside a parallel forward, one of {', '.join(FORMS)} "
                      "(default: %(default)s)")
  s.add_argument("--window-backend", default="auto",
                 help=f"softmax window of the student, one of {', '.join(WINDOW_CHOICES)} (default: %(default)s: "
                      "the fused kernel on GPU, XLA elsewhere)")
  return p


def runtime_from_args(args: argparse.Namespace) -> RuntimeConfig:
  """How the DiT runs (never what it is): precision, hybrid form, window backend (RuntimeConfig checks them)."""
  try:
    return RuntimeConfig(precision=args.precision, hybrid_form=args.hybrid_form, window_backend=args.window_backend)
  except ValueError as e:
    raise GenerationError(f"--precision / --hybrid-form / --window-backend: {e}") from None


def validate_args(args: argparse.Namespace) -> tuple[list[str], RuntimeConfig]:
  """Every check that needs no model: (prompts, runtime config). Raises GenerationError."""
  prompts = read_prompts_file(args.prompts_file) if args.prompts_file else check_prompts([args.prompt], "--prompt")
  width, height = args.size
  check_video_shape(args.frames, height, width)
  if args.seeds_per_prompt is not None and args.seeds_per_prompt < 1:
    raise GenerationError(f"--seeds-per-prompt must be >= 1; got {args.seeds_per_prompt}")
  make_schedule(args.solver, args.steps, args.shift)
  if args.guidance != 1.0:
    branch_mesh(args.cfg_devices)
  run = runtime_from_args(args)
  for flag, path in (("--dit", args.dit), ("--t5", args.t5), ("--tokenizer", args.tokenizer),
                     ("--vae", args.vae), ("--student", args.student)):
    if path is not None and not Path(path).exists():
      raise GenerationError(f"{flag} {path}: no such file or directory")
  # student.json and the DiT's config.json are tiny: reading them lets the recurrent-forward check see the
  # real student and depth before anything is loaded.
  try:
    rehyat = read_student_config(args.student) if args.student is not None else None
  except StudentExportError as e:
    raise GenerationError(f"--student: {e}") from None
  check_forward(args.forward, rehyat, read_converted_config(args.dit).num_layers)
  return prompts, run


def main(argv: Iterable[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    prompts, run = validate_args(args)
    # A student distilled from another teacher (or a broken export) fails here, before umT5 is read.
    pipeline = load_pipeline(args.dit, args.t5, args.tokenizer, args.vae, student=args.student, run=run)
    seeds_per_prompt = args.seeds_per_prompt or (5 if args.prompts_file else 1)
    width, height = args.size
    results = generate(pipeline, prompts, out_dir=args.out_dir, frames=args.frames, height=height, width=width,
                       steps=args.steps, guidance=args.guidance, shift=args.shift, solver=args.solver,
                       seed=args.seed, seeds_per_prompt=seeds_per_prompt, forward=args.forward,
                       negative_prompt=args.negative_prompt, save_latents=args.save_latents,
                       cfg_devices=args.cfg_devices)
  except (GenerationError, StudentExportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(summary(results, args.out_dir))
  return 0


if __name__ == "__main__":
  sys.exit(main())
