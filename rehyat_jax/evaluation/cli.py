"""``python -m rehyat_jax.evaluate``: the evaluation ladder of students against their softmax teacher.

  python -m rehyat_jax.evaluate --teacher runs/toy_teacher/dit --student runs/toy_distill/student_export \\
      [--student runs/toy_finetune] --data DATASET_DIR [--split test] --out runs/toy_eval

``--teacher`` is a converted DiT checkpoint. Each ``--student`` is a student export (stage 1's
``<workdir>/student_export``, loaded on the teacher's weights) or a run folder holding ``dit/`` and
``student_export/`` (a student whose own weights were finetuned: what stage 2 leaves in its workdir). ``--data`` is a latent dataset (``rehyat_jax.data`` TFDS array_record, e.g. the toy
videos); its first ``--num-clips`` clips of ``--split`` are the held-out inputs. Writes ladder.md,
ladder.json, attention_error.png, velocity_error.png, sample_agreement.png, temporal.png, strip.png,
strip.gif and the teacher's attention_distance.png / .json into ``--out``, and prints the table.
Rungs and measurements: ``rehyat_jax/evaluation/ladder.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

SUMMARY_TIMESTEPS = (250, 500, 750)  # noise levels the teacher's attention-distance histogram averages over


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m rehyat_jax.evaluate", description=__doc__.split("\n\n")[0])
  p.add_argument("--teacher", required=True, help="converted DiT checkpoint of the softmax teacher")
  p.add_argument("--student", action="append", default=[], help="student export, or run folder with dit/ and "
                 "student_export/ (repeatable)")
  p.add_argument("--name", action="append", default=[], help="display name per --student, in order")
  p.add_argument("--converted-blocks", default="", help="evaluate every student with these converted blocks "
                 "instead of its export's ('all', a count spread evenly, or ids '1,3'; phi exist in every block)")
  p.add_argument("--data", required=True, help="latent dataset directory (held-out clips and their conditions)")
  p.add_argument("--split", default="test")
  p.add_argument("--num-clips", type=int, default=16)
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--timesteps", default="50,150,250,350,450,550,650,750,850,950",
                 help="comma-separated timesteps (t = 1000 sigma) of the attention and velocity errors")
  p.add_argument("--sample-steps", type=int, default=20)
  p.add_argument("--solver", default="unipc")
  p.add_argument("--shift", type=float, default=3.0)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--batch-size", type=int, default=16)
  p.add_argument("--precision", default="fp32")
  return p


def load_clips(data_dir: str, split: str, count: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """The first ``count`` records of a latent dataset split: latents [N, C, F, H, W], text [N, L, D], captions."""
  from rehyat_jax.data.pipeline import decode_record  # pylint: disable=g-import-not-at-top
  from rehyat_jax.data.sources import open_latent_source  # pylint: disable=g-import-not-at-top
  source = open_latent_source(data_dir, split)
  if len(source) < count:
    raise ValueError(f"split {split!r} of {data_dir} has {len(source)} clips, fewer than --num-clips={count}")
  records = [decode_record(source[i]) for i in range(count)]
  # Records are stored in key-hash order; sort by key so the same clips come first whatever the writer.
  records.sort(key=lambda r: r["key"])
  return (np.stack([r["latents"] for r in records]), np.stack([r["text_embedding"] for r in records]),
          [r["caption"] for r in records])


def student_name(path: str) -> str:
  path = Path(path).absolute()
  return path.parent.name if path.name == "student_export" else path.name


def run(args: argparse.Namespace) -> dict:
  from rehyat_jax.convert import load_pretrained  # pylint: disable=g-import-not-at-top
  from rehyat_jax.evaluation import attention_distance, ladder, report  # pylint: disable=g-import-not-at-top
  from rehyat_jax.models.wan import RuntimeConfig  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  start = time.perf_counter()
  out = Path(args.out)
  timesteps = tuple(int(t) for t in args.timesteps.split(",") if t.strip())
  settings = ladder.LadderSettings(timesteps=timesteps, sample_steps=args.sample_steps, solver=args.solver,
                                   shift=args.shift, seed=args.seed, batch_size=args.batch_size)
  run_cfg = RuntimeConfig(precision=args.precision)
  clips, texts, captions = load_clips(args.data, args.split, args.num_clips)
  teacher = load_pretrained(args.teacher, run=run_cfg)
  rungs = []
  names = list(args.name) + [student_name(p) for p in args.student[len(args.name):]]
  for name, path in zip(names, args.student):
    dit, export = ladder.resolve_student(path, args.teacher)
    rungs += ladder.student_rungs(name, dit, export, args.teacher, run_cfg,
                                  converted_blocks=args.converted_blocks or None)
  results = ladder.evaluate_ladder(teacher, rungs, clips, texts, settings,
                                   progress=lambda m: print(f"[{time.perf_counter() - start:6.1f} s] {m}", flush=True))
  results["captions"] = captions
  paths = report.write_report(results, out)

  # The teacher's attention by frame distance, on the held-out clips at a few noise levels.
  student = next((r.model.rehyat for r in rungs if r.model.rehyat is not None), None)
  tc, to = (student.chunk_frames, student.overlap_frames) if student else (3, 1)
  x_t, _ = ladder.noisy_inputs(clips, ladder.LadderSettings(timesteps=SUMMARY_TIMESTEPS, seed=args.seed))
  masses = [attention_distance.frame_attention_mass(teacher, jnp.asarray(x_t[i]), jnp.full((len(clips),), float(t)),
                                                    jnp.asarray(texts)) for i, t in enumerate(SUMMARY_TIMESTEPS)]
  histogram = attention_distance.distance_histogram(np.mean(masses, axis=0))
  paths["attention_distance"] = str(attention_distance.plot_histograms(
      histogram, out / "attention_distance.png", chunk_frames=tc, overlap_frames=to))
  summary = attention_distance.summarise(histogram, tc, to)
  (out / "attention_distance.json").write_text(json.dumps({
      "timesteps": list(SUMMARY_TIMESTEPS), "histogram": histogram.tolist(),
      "uniform": attention_distance.uniform_histogram(histogram.shape[-1]).tolist(),
      **{k: np.asarray(v).tolist() for k, v in summary.items()}}, indent=1) + "\n")
  print("\n" + report.table(results) + "\n", flush=True)
  for name in names:
    student_rung = next(r for r in results["rungs"] if r["name"] == name)
    base = report.baseline_of(results, student_rung)
    print(f"{name}: PSNR {student_rung['samples']['psnr']:.2f} dB vs phi=0 {base['samples']['psnr']:.2f} dB "
          f"(margin {student_rung['samples']['psnr'] - base['samples']['psnr']:+.2f} dB)", flush=True)
  print(f"wrote {out} in {time.perf_counter() - start:.0f} s", flush=True)
  return {"results": results, "paths": paths}


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  problems = []
  if not (Path(args.teacher) / "config.json").is_file():
    problems.append(f"--teacher {args.teacher} is not a converted DiT checkpoint (no config.json)")
  for path in args.student:
    if not Path(path).is_dir():
      problems.append(f"--student {path}: no such directory")
  if len(args.name) > len(args.student):
    problems.append(f"{len(args.name)} --name for {len(args.student)} --student")
  if args.num_clips < 1:
    problems.append("--num-clips must be >= 1")
  if problems:
    print("error: " + "; ".join(problems), file=sys.stderr)
    return 2
  run(args)
  return 0
