"""The main job on the embedded tiny default (CPU, a few minutes).

  python -m rehyat_jax.demo [--workdir DIR] [--skip-training]

The teacher's weights are random (fixed seed): real Wan2.1 weights cannot ship with the
repository. Part 1 writes a tiny checkpoint in the original Wan2.1 layout, converts it with the
real converter, loads a softmax teacher and a causal ReHyAt student, and checks that the
student's reference / parallel / recurrent forms and the whole-model recurrent forward agree.
Part 2 runs the two training stages on configs/tiny.py: stage 1 distils phi (the per-block
attention error falls below the phi == 0 baseline), stage 2 finetunes the whole student with
flow matching from the stage-1 phi; both write Orbax checkpoints; a summary table ends the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rehyat_jax.attention import FORMS
from rehyat_jax.attention.config import RehyatConfig
from rehyat_jax.attention.feature_maps import FeatureMapConfig
from rehyat_jax.convert import convert_wan_checkpoint, load_pretrained
from rehyat_jax.convert.random_checkpoint import make_random_checkpoint
from rehyat_jax.models.config import WanConfig
from rehyat_jax.models.wan import RuntimeConfig

# Small enough for 2 CPU cores in seconds, large enough to have real chunk structure.
DEMO_CONFIG = WanConfig(dim=96, ffn_dim=192, num_heads=4, num_layers=4, in_dim=16, out_dim=16, text_dim=64,
                        text_len=32)
DEMO_PHI = FeatureMapConfig(degree=2, hidden=32, feature_dim=16)


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


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--frames", type=int, default=9, help="latent frames")
  p.add_argument("--height", type=int, default=8, help="latent height")
  p.add_argument("--width", type=int, default=12, help="latent width")
  p.add_argument("--chunk-frames", type=int, default=2)
  p.add_argument("--overlap-frames", type=int, default=1)
  p.add_argument("--workdir", type=Path, default=None, help="keep checkpoints and logs here (default: a temp dir)")
  p.add_argument("--skip-training", action="store_true", help="part 1 only")
  args = p.parse_args(argv)

  print("rehyat-jax demo — NOTE: the teacher has RANDOM weights (fixed seed); real Wan2.1 weights cannot ship\n"
        "with the repository. For a real model: tools/convert_wan_weights.py /path/to/Wan2.1-T2V-1.3B ckpt/ and\n"
        "rehyat_jax.convert.load_pretrained('ckpt/', rehyat=RehyatConfig(...)).\n")
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; model {dataclasses.asdict(DEMO_CONFIG)}")
  with tempfile.TemporaryDirectory() as tmp:
    work = args.workdir or Path(tmp)
    src, dst = work / "wan_original_layout", work / "converted"
    make_random_checkpoint(src, DEMO_CONFIG, "original", seed=0, progress=None)
    t0 = time.perf_counter()
    convert_wan_checkpoint(src, dst, overwrite=True, progress=lambda *_: None)
    print(f"converted {src} -> {dst} in {time.perf_counter() - t0:.2f}s")

    rehyat = RehyatConfig(chunk_frames=args.chunk_frames, overlap_frames=args.overlap_frames, causal=True,
                          feature_map=dataclasses.replace(DEMO_PHI, init_scale=0.3))
    teacher = load_pretrained(dst)
    students = {form: load_pretrained(dst, run=RuntimeConfig(hybrid_form=form), rehyat=rehyat) for form in FORMS}

    key = jax.random.key(0)
    latents = jax.random.normal(key, (1, DEMO_CONFIG.in_dim, args.frames, args.height, args.width))
    timesteps = jnp.array([700.0])
    text = jax.random.normal(jax.random.fold_in(key, 1), (1, DEMO_CONFIG.text_len, DEMO_CONFIG.text_dim))
    inputs = (latents, timesteps, text)

    runs = {"teacher (full softmax)": timed(jitted(teacher, "__call__"), *inputs)}
    for form, model in students.items():
      runs[f"student {form}"] = timed(jitted(model, "__call__"), *inputs)
    runs["student recurrent_forward (whole DiT)"] = timed(jitted(students["parallel"], "recurrent_forward"), *inputs)

    reference = runs["student reference"][0]
    print(f"\nlatents {latents.shape}, chunk {args.chunk_frames} frames, overlap {args.overlap_frames}, causal,"
          f" phi degree {DEMO_PHI.degree} x {DEMO_PHI.feature_dim}")
    print("| forward | rel. diff to student reference | first call s | steady s |")
    print("|---|---|---|---|")
    for name, (out, first, steady) in runs.items():
      assert np.isfinite(np.asarray(out)).all(), name
      print(f"| {name} | {rel(out, reference):.2e} | {first:.2f} | {steady:.3f} |")
    worst = max(rel(out, reference) for name, (out, _, _) in runs.items() if name.startswith("student"))
    print(f"\nall student forms agree to {worst:.1e} (float32); the untrained student differs from the teacher by "
          f"{rel(reference, runs['teacher (full softmax)'][0]):.2f} — distillation (next issue) closes that gap.")
    if worst > 1e-4:
      print("ERROR: student forms disagree")
      return 1
    if not args.skip_training:
      return training_demo(work / "training")
  return 0


def training_demo(workdir: Path) -> int:
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from rehyat_jax.train.loop import run  # pylint: disable=g-import-not-at-top

  print("\n=== part 2: stage 1 (distil phi only) then stage 2 (flow-matching finetune), configs/tiny.py ===")
  stage1 = tiny.get_config("distill")
  stage1.workdir = str(workdir / "stage1")
  s1 = run(stage1)
  stage2 = tiny.get_config("finetune")
  stage2.workdir = str(workdir / "stage2")
  stage2.model.student = s1["student_export"]
  s2 = run(stage2)
  report = s1["block_report"]
  rel, base = report["relative_error"], report["baseline_error"]
  print("\n| summary | value |\n|---|---|")
  print(f"| stage 1 loss (first -> last log) | {s1['history'][0]['loss']:.4f} -> {s1['history'][-1]['loss']:.4f} |")
  print(f"| held-out attention error, mean over blocks: trained phi / phi=0 | {rel.mean():.3f} / {base.mean():.3f}"
        f" ({rel.mean() / base.mean():.2f}x) |")
  print(f"| stage 2 loss (first -> last log) | {s2['history'][0]['loss']:.4f} -> {s2['history'][-1]['loss']:.4f} |")
  print(f"| checkpoints | {stage1.workdir}/checkpoints, {stage2.workdir}/checkpoints, student export: "
        f"{s1['student_export']} |")
  print("\nOn a real model: convert Wan2.1 (tools/convert_wan_weights.py), then\n"
        "  python -m rehyat_jax.train --config configs/distill_wan_1_3b.py --config.model.checkpoint=ckpt/...\n"
        "  python -m rehyat_jax.train --config configs/finetune_wan_1_3b.py --config.model.student=runs/distill_wan_1_3b/student_export")
  if not rel.mean() < base.mean():
    print("ERROR: stage 1 did not reduce the attention error below the phi == 0 baseline")
    return 1
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
