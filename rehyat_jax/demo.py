"""The main job: convert a Wan2.1-architecture checkpoint, then distil a teacher into a ReHyAt student and see how
close it comes (CPU, about 3 minutes).

  python -m rehyat_jax.demo [--workdir DIR] [--skip-training]          (./launch/demo.sh sets up and runs this)

Part 1 writes a small Wan2.1-architecture model with RANDOM weights (real Wan2.1 weights cannot ship with the
repository) as a checkpoint in the original PyTorch layout, converts it with the real converter, loads it as the
softmax teacher and as a causal ReHyAt student, and checks that the student's reference / parallel / recurrent
forms and the whole-model recurrent forward agree. Part 2 distils a different, trained teacher: random weights
have no attention structure worth distilling, so it uses the toy teacher shipped in rehyat_jax/toy/teacher_dit
(a Wan-architecture DiT trained here on procedural videos of moving shapes, configs/toy_teacher.py). Through the
training command's own code (configs/demo.py), stage 1 distils phi and stage 2 finetunes the whole student with
flow matching; then the evaluation ladder (python -m rehyat_jax.evaluate) compares teacher, student and the
phi = 0 baseline on held-out clips and draws the frames side by side. Outputs are kept in the work directory
(default runs/demo/; the demo's folders in it are replaced on each run).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import logging as absl_logging
import numpy as np
from flax import nnx

from rehyat_jax.attention import FORMS
from rehyat_jax.attention.config import RehyatConfig
from rehyat_jax.attention.feature_maps import FeatureMapConfig
from rehyat_jax.convert import convert_wan_checkpoint, load_pretrained
from rehyat_jax.convert.random_checkpoint import make_random_checkpoint
from rehyat_jax.core import prng
from rehyat_jax.models.config import WanConfig
from rehyat_jax.models.wan import RuntimeConfig
from rehyat_jax.train import cli as train_cli
from rehyat_jax.toy import SHIPPED_TEACHER

# Small enough that both training stages take about a minute on 2 CPU cores (the chunk structure comes from the
# 9 latent frames, not from the width); head_dim 12 splits RoPE over (frame, height, width) as (4, 4, 4).
DEMO_CONFIG = WanConfig(dim=48, ffn_dim=96, num_heads=4, num_layers=2, in_dim=16, out_dim=16, text_dim=32,
                        text_len=16)
TRAIN_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.py"
DEFAULT_WORKDIR = Path("runs/demo")
# What the demo writes inside the work directory (and removes there before it starts: a kept stage-1 folder
# would make the next run resume at its last step instead of training).
OUTPUTS = ("wan_original_layout", "converted", "toy_data", "stage1", "stage2", "eval")
FORMS_TOLERANCE = 1e-4


def timed(fn, *args):
  """(output, compile+first-run seconds, steady-state seconds)."""
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return out, first, time.perf_counter() - t0


def jitted(model, method: str):
  graphdef, state = nnx.split(model)
  fn = jax.jit(lambda state, *a: getattr(nnx.merge(graphdef, state), method)(*a))
  return lambda *a: fn(state, *a)


def rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / np.abs(b).max())


def shown(path: Path) -> str:
  """A path as the user would type it: relative to the working directory when it is inside it."""
  try:
    return os.path.relpath(path) if Path(path).resolve().is_relative_to(Path.cwd()) else str(path)
  except ValueError:
    return str(path)


def train_args(stage: str, work: Path, steps: int | None) -> list[str]:
  """The training command line of one demo stage: configs/demo.py plus only the overrides that differ from it."""
  spec = shown(TRAIN_CONFIG) + (":finetune" if stage == "finetune" else "")
  defaults = train_cli.parse_config(["--config", spec])
  folder = "stage1" if stage == "distill" else "stage2"
  wanted = {"model.checkpoint": shown(SHIPPED_TEACHER), "workdir": shown(work / folder),
            "data.data_dir": shown(work / "toy_data"), "train.steps": steps}
  if steps is not None:
    wanted["train.checkpoint_every"] = steps
  if stage == "finetune":
    wanted["model.student"] = shown(work / "stage1" / "student_export")
  args = ["--config", spec]
  for field, value in wanted.items():
    group, _, name = field.rpartition(".")
    if value is None or (defaults[group] if group else defaults)[name] == value:
      continue
    args.append(f"--config.{field}={value}")
  return args


def command_line(args: list[str]) -> str:
  return " ".join([train_cli.PROG, *(f"'{a}'" if "(" in a else a for a in args)])


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m rehyat_jax.demo", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--frames", type=int, default=9, help="latent frames of part 1's random input")
  p.add_argument("--height", type=int, default=8, help="latent height of part 1's random input")
  p.add_argument("--width", type=int, default=12, help="latent width of part 1's random input")
  p.add_argument("--chunk-frames", type=int, default=2, help="latent frames per ReHyAt chunk (part 1)")
  p.add_argument("--overlap-frames", type=int, default=1, help="latent frames each chunk also sees before it "
                 "(part 1; part 2's student is configs/demo.py's)")
  p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                 help="where the checkpoint, the converted model and both training runs are written and kept "
                      "(default: %(default)s; the demo's folders in it are replaced on each run)")
  p.add_argument("--skip-training", action="store_true", help="part 1 only")
  p.add_argument("--stage1-steps", type=int, default=None, help="stage-1 steps (default: configs/demo.py's)")
  p.add_argument("--stage2-steps", type=int, default=None, help="stage-2 steps (default: configs/demo.py's)")
  p.add_argument("--train-clips", type=int, default=512, help="procedural training clips written for part 2")
  p.add_argument("--eval-clips", type=int, default=6, help="held-out clips the evaluation ladder compares on")
  p.add_argument("--sample-steps", type=int, default=12, help="sampling steps of the ladder's same-seed samples")
  args = p.parse_args(argv)
  work = args.workdir
  latent_shape = (args.frames, args.height, args.width)
  stage_args = {stage: train_args(stage, work, steps)
                for stage, steps in (("distill", args.stage1_steps), ("finetune", args.stage2_steps))}
  try:
    stage1_cfg = train_cli.parse_config(stage_args["distill"])
    # Part 1's student: causal (so the recurrent forms exist), a phi start large enough that the linear branch
    # visibly changes the output; part 2's is configs/demo.py's.
    rehyat = RehyatConfig(chunk_frames=args.chunk_frames, overlap_frames=args.overlap_frames, causal=True,
                          feature_map=FeatureMapConfig(hidden=32, feature_dim=16, init_scale=0.3))
  except (train_cli.UsageError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2

  print("rehyat-jax demo: a Wan2.1-architecture video diffusion transformer (DiT) becomes a ReHyAt student.\n"
        "NOTE: the model's weights are RANDOM (fixed seed): real Wan2.1 weights cannot ship with the repository.\n"
        "Every step below is the one a real checkpoint goes through (\"On a real model\" at the end).\n"
        f"Outputs are kept in {shown(work)}/ (its demo folders are replaced on each run; --workdir DIR puts them "
        "elsewhere).\n")
  for name in OUTPUTS:
    shutil.rmtree(work / name, ignore_errors=True)
  work.mkdir(parents=True, exist_ok=True)

  print("=== Part 1: convert a checkpoint, load teacher and student, check that the student's forms agree ===")
  src, dst = work / "wan_original_layout", work / "converted"
  make_random_checkpoint(src, DEMO_CONFIG, "original", seed=0, progress=None)
  print(f"wrote a random checkpoint in Wan2.1's original PyTorch layout: {shown(src)}")
  t0 = time.perf_counter()
  convert_wan_checkpoint(src, dst, overwrite=True, progress=lambda *_: None)
  print(f"converted it with the converter of tools/convert_wan_weights.py in {time.perf_counter() - t0:.1f} s: "
        f"{shown(dst)}")
  print(f"loading it as the softmax teacher and as a ReHyAt student in each of its {len(FORMS)} forms "
        "(phi is initialised here, a few seconds) ...", flush=True)
  teacher = load_pretrained(dst)
  students = {form: load_pretrained(dst, run=RuntimeConfig(hybrid_form=form), rehyat=rehyat) for form in FORMS}
  params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(nnx.state(teacher, nnx.Param)))
  c, phi = DEMO_CONFIG, rehyat.feature_map
  print(f"model: {c.num_layers} blocks, width {c.dim}, {c.num_heads} attention heads, {params / 1e6:.2f} M "
        f"parameters (Wan2.1-T2V-1.3B: 30 blocks, width 1536, 1.3 B); jax {jax.__version__} on "
        f"{jax.devices()[0].platform}")
  overlap = f"{rehyat.overlap_frames} frame{'s' if rehyat.overlap_frames != 1 else ''}"
  print(f"student: every block's attention in chunks of {rehyat.chunk_frames} latent frames that also see the "
        f"{overlap} before them, causal: softmax inside the chunk plus a learned linear "
        f"attention over all earlier frames, through feature maps phi ({phi.hidden}-wide MLP, degree-"
        f"{phi.degree} polynomial, {phi.feature_dim} features)")

  key = jax.random.key(0)
  latents = prng.normal(key, (1, c.in_dim, *latent_shape))
  timesteps = jnp.array([700.0])
  text = prng.normal(jax.random.fold_in(key, 1), (1, c.text_len, c.text_dim))
  inputs = (latents, timesteps, text)
  tokens = args.frames * (args.height // c.patch_size[1]) * (args.width // c.patch_size[2])
  print(f"input: one random video latent of {args.frames} frames x {args.height} x {args.width} ({tokens} tokens "
        f"after 2x2 patches), {c.text_len} random text tokens, diffusion timestep 700 of 1000\n")

  print(f"compiling and running {len(FORMS) + 2} forward passes (each compiles on its first call, seconds each; "
        "a row appears as each finishes):")
  print("| forward pass | difference to the student's reference form | first call: compile + run (s) | "
        "compiled run (s) |")
  print("|---|---|---|---|")
  passes = {f"student {form}": (students[form], "__call__") for form in FORMS}
  passes["student recurrent_forward (whole DiT, chunk by chunk)"] = (students["parallel"], "recurrent_forward")
  passes["teacher (full softmax)"] = (teacher, "__call__")
  outputs, reference = {}, None
  for name, (model, method) in passes.items():
    out, first, steady = timed(jitted(model, method), *inputs)
    if not np.isfinite(np.asarray(out)).all():
      print(f"\nERROR: {name} is not finite")
      return 1
    reference = out if reference is None else reference
    outputs[name] = out
    print(f"| {name} | {rel(out, reference):.1e} | {first:.1f} | {steady:.3f} |", flush=True)
  worst = max(rel(out, reference) for name, out in outputs.items() if name.startswith("student"))
  gap = rel(reference, outputs["teacher (full softmax)"])
  print(f"- difference = max |output - reference| / max |reference| over the model's whole output.\n"
        f"- The student rows compute one function in different orders (dense masked, chunked in parallel, "
        f"chunk by chunk with a carried state): they agree to {worst:.1e}, float32 rounding (the check fails "
        f"above {FORMS_TOLERANCE:.0e}).\n"
        f"- The teacher row: before training, the student's output is {gap:.0%} away from the softmax teacher's "
        f"(relative to its size): with random weights there is nothing to distil, hence part 2's trained teacher.\n"
        f"- Compiling is paid once per shape; a compiled pass of this tiny model takes milliseconds.")
  if worst > FORMS_TOLERANCE:
    print("ERROR: student forms disagree")
    return 1
  if args.skip_training:
    print(f"\nskipped part 2 (--skip-training). Kept in {shown(work)}/: wan_original_layout/ (the random "
          "checkpoint), converted/ (the converted model).")
    return 0
  return training_demo(work, stage_args, stage1_cfg, args)


def training_demo(work: Path, stage_args: dict[str, list[str]], stage1_cfg, args) -> int:
  from rehyat_jax.evaluation import cli as evaluate_cli  # pylint: disable=g-import-not-at-top
  from rehyat_jax.toy import video as toy_video  # pylint: disable=g-import-not-at-top
  from rehyat_jax.train.loop import run  # pylint: disable=g-import-not-at-top

  teacher = shown(SHIPPED_TEACHER)
  print(f"\n=== Part 2: distil a trained teacher ({teacher}), then compare teacher and student ===\n"
        "Random weights have no attention structure to distil, so part 2 uses a small Wan-architecture teacher "
        "(4 blocks,\nwidth 96) trained here on procedural videos: coloured shapes that move, bounce and rotate over "
        "a panning\nbackground, 13 frames of 16x16 pixels, conditioned on an embedding of the caption "
        "(configs/toy_teacher.py).")
  absl_logging.set_verbosity(absl_logging.ERROR)  # TFDS's notes about a custom dataset configuration
  toy_video.write_toy_dataset(work / "toy_data", toy_video.ToyVideoSpec(), train_examples=args.train_clips,
                              test_examples=args.eval_clips, seed=0)
  print(f"wrote {args.train_clips} training and {args.eval_clips} held-out clips to {shown(work / 'toy_data')}\n")
  print("The demo runs the training command's own code; the same two runs by hand are:")
  for stage_argv in stage_args.values():
    print(f"  {command_line(stage_argv)}")
  print("(--help lists the configs; configs/common.py documents every field.)\n"
        "Progress lines: step n/total; loss = that step's batch loss; speed in steps and tokens per second, "
        "measured\nafter compiling; ETA = time left at that speed; device-h = device-hours used so far (wall time "
        "x devices).\n")
  print("--- stage 1: distil phi (only phi trains; loss = mean |softmax - ReHyAt| attention output, all blocks) ---")
  s1 = run(stage1_cfg)
  print("\n--- stage 2: flow-matching finetune of the whole student on the training clips, from stage 1's export ---")
  stage2_cfg = train_cli.parse_config(stage_args["finetune"])
  s2 = run(stage2_cfg)

  print("\n--- evaluation ladder: teacher vs students vs the phi = 0 baseline on held-out clips ---")
  ladder = evaluate_cli.run(evaluate_cli.build_parser().parse_args([
      "--teacher", str(SHIPPED_TEACHER), "--student", str(work / "stage1" / "student_export"),
      "--student", str(work / "stage2"), "--name", "stage 1", "--name", "stage 1+2",
      "--data", str(work / "toy_data"), "--num-clips", str(args.eval_clips),
      "--sample-steps", str(args.sample_steps), "--out", str(work / "eval")]))
  rungs = {r["name"]: r for r in ladder["results"]["rungs"]}

  report = s1["block_report"]
  err, base = report["relative_error"], report["baseline_error"]
  h1, h2 = s1["history"], s2["history"]
  k = max(1, len(h2) // 3)
  first2, last2 = np.mean([h["loss"] for h in h2[:k]]), np.mean([h["loss"] for h in h2[-k:]])
  lines = "progress line" if k == 1 else f"{k} progress lines"
  print("\n=== Summary (every number from this run) ===")
  print(f"stage 1 loss: {h1[0]['loss']:.4f} at step {h1[0]['step']} -> {h1[-1]['loss']:.4f} at step "
        f"{h1[-1]['step']}\n"
        "  = mean |teacher softmax - student ReHyAt| attention output over all blocks, on that step's batch.")
  print(f"held-out attention error, mean over the {len(err)} blocks: {err.mean():.3f} with the trained phi, "
        f"{base.mean():.3f} with phi = 0 ({err.mean() / base.mean():.2f}x)\n"
        "  = |softmax - ReHyAt| / |softmax| on clips not trained on; phi = 0 is the student without its linear "
        "branch\n    (softmax inside each chunk only), the baseline stage 1 must beat.")
  print(f"stage 2 loss: {first2:.3f} (mean of the first {lines}) -> {last2:.3f} (mean of the last {lines})\n"
        "  = flow-matching mean squared error of the predicted velocity (noise - clip) on the training clips; "
        "single\n    lines are one batch at random noise levels each, so compare the means.")
  print("ladder (same held-out clips, same noise, same seeds for every row; the table above has every column):")
  for name in ("stage 1", "stage 1 phi=0", "stage 1+2"):
    r = rungs[name]
    print(f"  {name:<14} sample PSNR vs the teacher's sample {r['samples']['psnr']:6.2f} dB, "
          f"velocity error {np.mean(r['velocity_error']):.4f}")
  print("  = PSNR: how close the frames each model generates from the same noise and caption are to the "
        "teacher's\n    (higher is closer); velocity error: |v - v_teacher|^2 / |v_teacher|^2 of the "
        "denoiser's prediction,\n    averaged over noise levels (0 = the teacher).")
  gained = rungs["stage 1+2"]["samples"]["psnr"] - rungs["stage 1"]["samples"]["psnr"]
  if gained < 0:
    print(f"  Stage 2 moved the samples {-gained:.1f} dB away from the teacher's: it fits the training clips by flow "
          "matching,\n    it is not pulled toward the teacher (docs/fidelity.md measures this at full length).")
  picture = shown(work / "eval" / "strip.png")
  print(f"PICTURE: {picture} (rows: teacher | stage-1 student | phi = 0 baseline, per held-out clip; "
        f"animated: {shown(work / 'eval' / 'strip.gif')})")
  kept = [("wan_original_layout/, converted/", "part 1's random checkpoint and its conversion"),
          ("toy_data/", "the procedural clips (TFDS array_record, train and test splits)"),
          ("stage1/, stage2/", "each stage's Orbax checkpoints, metrics.jsonl and TensorBoard events"),
          ("stage1/student_export/", "phi + student.json: the student stage 2 starts from"),
          ("stage2/dit/, stage2/student_export/", "the finetuned student (what generation and evaluation read)"),
          ("eval/", "the ladder: ladder.md / .json, plots, strip.png / .gif, the teacher's attention by distance")]
  width = max(len(name) for name, _ in kept)
  print(f"kept in {shown(work)}/:\n" + "\n".join(f"  {name:<{width}}  {what}" for name, what in kept))
  print("\nOn a real model: convert Wan2.1 (README: tools/convert_wan_weights.py), encode prompts "
        "(tools/encode_prompts.py), then\n"
        f"  {train_cli.PROG} --config configs/distill_wan_1_3b.py --config.model.checkpoint=ckpt/wan2.1-t2v-1.3b "
        "--config.data.data_dir=data/prompts\n"
        f"  {train_cli.PROG} --config configs/finetune_wan_1_3b.py "
        "--config.model.student=runs/distill_wan_1_3b/student_export --config.data.data_dir=data/latents")
  if not err.mean() < base.mean():
    print("ERROR: stage 1 did not reduce the attention error below the phi == 0 baseline")
    return 1
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
