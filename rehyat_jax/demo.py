"""The main job: a small Wan2.1-architecture model becomes a trained ReHyAt student (CPU, about 3 minutes).

  python -m rehyat_jax.demo [--workdir DIR] [--skip-training]          (./launch/demo.sh sets up and runs this)

The model's weights are random (fixed seed): real Wan2.1 weights cannot ship with the repository. Every step
is the one a real checkpoint goes through. Part 1 writes the model as a checkpoint in the original Wan2.1
PyTorch layout, converts it with the real converter, loads it as the softmax teacher and as a causal ReHyAt
student, and checks that the student's reference / parallel / recurrent forms and the whole-model recurrent
forward agree. Part 2 trains the student of that converted model through the training command's own code
(configs/demo.py): stage 1 distils phi (the held-out attention error falls below the phi = 0 baseline), stage 2
finetunes the whole student with flow matching from stage 1's student export. Outputs are kept in the work
directory (default runs/demo/; the demo's folders in it are replaced on each run).
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
import numpy as np
from flax import nnx

from rehyat_jax.attention import FORMS
from rehyat_jax.convert import convert_wan_checkpoint, load_pretrained
from rehyat_jax.convert.random_checkpoint import make_random_checkpoint
from rehyat_jax.core import prng
from rehyat_jax.models.config import WanConfig
from rehyat_jax.models.wan import RuntimeConfig
from rehyat_jax.train import cli as train_cli
from rehyat_jax.train.config_checks import student_config

# Small enough that both training stages take about a minute on 2 CPU cores (the chunk structure comes from the
# 9 latent frames, not from the width); head_dim 12 splits RoPE over (frame, height, width) as (4, 4, 4).
DEMO_CONFIG = WanConfig(dim=48, ffn_dim=96, num_heads=4, num_layers=2, in_dim=16, out_dim=16, text_dim=32,
                        text_len=16)
TRAIN_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.py"
DEFAULT_WORKDIR = Path("runs/demo")
# What the demo writes inside the work directory (and removes there before it starts: a kept stage-1 folder
# would make the next run resume at its last step instead of training).
OUTPUTS = ("wan_original_layout", "converted", "stage1", "stage2")
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


def train_args(stage: str, work: Path, latent_shape, chunk_frames: int, overlap_frames: int,
               steps: int | None) -> list[str]:
  """The training command line of one demo stage: configs/demo.py plus only the overrides that differ from it."""
  spec = shown(TRAIN_CONFIG) + (":finetune" if stage == "finetune" else "")
  defaults = train_cli.parse_config(["--config", spec])
  folder = "stage1" if stage == "distill" else "stage2"
  wanted = {"model.checkpoint": shown(work / "converted"), "workdir": shown(work / folder),
            "data.latent_shape": tuple(latent_shape), "rehyat.chunk_frames": chunk_frames,
            "rehyat.overlap_frames": overlap_frames, "train.steps": steps}
  if stage == "finetune":
    wanted["model.student"] = shown(work / "stage1" / "student_export")
  args = ["--config", spec]
  for field, value in wanted.items():
    group, _, name = field.rpartition(".")
    current = (defaults[group] if group else defaults)[name]
    if value is None or (tuple(current) if isinstance(current, (list, tuple)) else current) == value:
      continue
    text = "(" + ",".join(map(str, value)) + ")" if isinstance(value, tuple) else value
    args.append(f"--config.{field}={text}")
  return args


def command_line(args: list[str]) -> str:
  return " ".join([train_cli.PROG, *(f"'{a}'" if "(" in a else a for a in args)])


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m rehyat_jax.demo", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--frames", type=int, default=9, help="latent frames of the demo's video inputs (part 1 and 2)")
  p.add_argument("--height", type=int, default=8, help="latent height")
  p.add_argument("--width", type=int, default=12, help="latent width")
  p.add_argument("--chunk-frames", type=int, default=2, help="latent frames per ReHyAt chunk")
  p.add_argument("--overlap-frames", type=int, default=1, help="latent frames each chunk also sees before it")
  p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                 help="where the checkpoint, the converted model and both training runs are written and kept "
                      "(default: %(default)s; the demo's folders in it are replaced on each run)")
  p.add_argument("--skip-training", action="store_true", help="part 1 only")
  p.add_argument("--stage1-steps", type=int, default=None, help="stage-1 steps (default: configs/demo.py's)")
  p.add_argument("--stage2-steps", type=int, default=None, help="stage-2 steps (default: configs/demo.py's)")
  args = p.parse_args(argv)
  work = args.workdir
  latent_shape = (args.frames, args.height, args.width)
  stage_args = {stage: train_args(stage, work, latent_shape, args.chunk_frames, args.overlap_frames, steps)
                for stage, steps in (("distill", args.stage1_steps), ("finetune", args.stage2_steps))}
  try:
    stage1_cfg = train_cli.parse_config(stage_args["distill"])
    rehyat = student_config(stage1_cfg)  # the student part 1 checks is the one part 2 trains
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
        f"(relative to its size); stage 1 trains phi to close part of that gap.\n"
        f"- Compiling is paid once per shape; a compiled pass of this tiny model takes milliseconds.")
  if worst > FORMS_TOLERANCE:
    print("ERROR: student forms disagree")
    return 1
  if args.skip_training:
    print(f"\nskipped part 2 (--skip-training). Kept in {shown(work)}/: wan_original_layout/ (the random "
          "checkpoint), converted/ (the converted model).")
    return 0
  return training_demo(work, stage_args, stage1_cfg)


def training_demo(work: Path, stage_args: dict[str, list[str]], stage1_cfg) -> int:
  from rehyat_jax.train.loop import run  # pylint: disable=g-import-not-at-top

  print(f"\n=== Part 2: train the student of {shown(work / 'converted')}: stage 1, then stage 2 ===\n"
        "The demo runs the training command's own code; the same two runs by hand (e.g. after the demo) are:")
  for args in stage_args.values():
    print(f"  {command_line(args)}")
  print("(--help lists the configs; configs/common.py documents every field.)\n"
        "Progress lines: step n/total; loss = that step's batch loss; speed in steps and tokens per second, "
        "measured\nafter compiling; ETA = time left at that speed; device-h = device-hours used so far (wall time "
        "x devices).\n")
  print("--- stage 1: distil phi (only phi trains; loss = mean |softmax - ReHyAt| attention output, all blocks) ---")
  s1 = run(stage1_cfg)
  print("\n--- stage 2: flow-matching finetune of the whole student, starting from stage 1's student export ---")
  stage2_cfg = train_cli.parse_config(stage_args["finetune"])
  s2 = run(stage2_cfg)

  report = s1["block_report"]
  err, base = report["relative_error"], report["baseline_error"]
  h1, h2 = s1["history"], s2["history"]
  k = max(1, len(h2) // 3)
  first2, last2 = np.mean([h["loss"] for h in h2[:k]]), np.mean([h["loss"] for h in h2[-k:]])
  print("\n=== Summary (every number from this run) ===")
  print(f"stage 1 loss: {h1[0]['loss']:.4f} at step {h1[0]['step']} -> {h1[-1]['loss']:.4f} at step "
        f"{h1[-1]['step']}\n"
        "  = mean |teacher softmax - student ReHyAt| attention output over all blocks, on that step's batch.")
  print(f"held-out attention error, mean over the {len(err)} blocks: {err.mean():.3f} with the trained phi, "
        f"{base.mean():.3f} with phi = 0 ({err.mean() / base.mean():.2f}x: {1 - err.mean() / base.mean():.0%} "
        "closer to the teacher)\n"
        "  = |softmax - ReHyAt| / |softmax| on batches not trained on; phi = 0 is the student without its linear "
        "branch\n    (softmax inside each chunk only), the baseline stage 1 must beat. Per block: the table above, "
        f"{shown(work / 'stage1' / 'per_block_error.png')}.")
  losses2 = [h["loss"] for h in h2]
  lines = "progress line" if k == 1 else f"{k} progress lines"
  print(f"stage 2 loss: {first2:.3f} (mean of the first {lines}) -> {last2:.3f} (mean of the last {lines})\n"
        "  = flow-matching mean squared error of the predicted velocity (noise - latent). The demo's latents are "
        "random\n    noise, so there is no video to learn: a model predicting zero scores 2.0, and only a rough "
        "denoising rule\n    brings it lower. Single lines ranged "
        f"{min(losses2):.2f}-{max(losses2):.2f}: each is one batch of {stage2_cfg.train.global_batch_size} "
        "random clips at random noise levels, so compare the means.")
  kept = [("converted/", "the converted model (stage 1's teacher)"),
          ("stage1/, stage2/", "each stage's Orbax checkpoints, metrics.jsonl and TensorBoard events"),
          ("stage1/student_export/", "phi + student.json: the student stage 2 starts from")]
  if s2.get("dit") or s2.get("student_export"):
    kept.append(("stage2/dit/, stage2/student_export/" if s2.get("dit") else "stage2/student_export/",
                 "the finetuned model, what generation reads (--dit, --student)"))
  width = max(len(name) for name, _ in kept)
  print(f"kept in {shown(work)}/:\n" + "\n".join(f"  {name:<{width}}  {what}" for name, what in kept))
  print("\nOn a real model: convert Wan2.1 (README: tools/convert_wan_weights.py), then\n"
        f"  {train_cli.PROG} --config configs/distill_wan_1_3b.py --config.model.checkpoint=ckpt/wan2.1-t2v-1.3b\n"
        f"  {train_cli.PROG} --config configs/finetune_wan_1_3b.py "
        "--config.model.student=runs/distill_wan_1_3b/student_export")
  if not err.mean() < base.mean():
    print("ERROR: stage 1 did not reduce the attention error below the phi == 0 baseline")
    return 1
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
