"""Benchmark one DiT forward at real Wan2.1 shapes: softmax teacher vs ReHyAt student (parallel)
vs the whole-model recurrent forward, over latent frame counts.

Random weights (the timing does not depend on their values). Each (model, frames) case runs in
its own subprocess so the device's peak-memory counter belongs to that case alone. Prints a
markdown table; `--tiny` runs a small CPU smoke version.

  python bench/bench_dit.py --preset t2v-1.3b --frames 21,42,84 --height 60 --width 104
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CASES = ("teacher", "parallel", "recurrent")


def run_case(args) -> dict:
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from rehyat_jax.attention.config import RehyatConfig
  from rehyat_jax.attention.feature_maps import FeatureMapConfig
  from rehyat_jax.models.config import PRESETS
  from rehyat_jax.models.wan import RuntimeConfig, WanDiT

  cfg = PRESETS[args.preset]
  if args.layers:
    import dataclasses
    cfg = dataclasses.replace(cfg, num_layers=args.layers)
  run = RuntimeConfig(precision=args.precision, scan_layers=True, feature_map_backend=args.feature_map_backend)
  rehyat = None
  if args.case != "teacher":
    fm = FeatureMapConfig(hidden=8, feature_dim=4) if args.tiny else FeatureMapConfig()
    rehyat = RehyatConfig(chunk_frames=args.chunk, overlap_frames=args.overlap, causal=True, feature_map=fm)
  model = WanDiT(cfg, run, rehyat, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  method = "recurrent_forward" if args.case == "recurrent" else "__call__"
  fn = jax.jit(lambda state, x, t, c: getattr(nnx.merge(graphdef, state), method)(x, t, c))
  key = jax.random.key(1)
  x = jax.random.normal(key, (1, cfg.in_dim, args.frame_count, args.height, args.width), jnp.float32)
  t = jnp.array([500.0])
  c = jax.random.normal(key, (1, cfg.text_len, cfg.text_dim), jnp.float32)
  t0 = time.perf_counter()
  compiled = fn.lower(state, x, t, c).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  out = compiled(state, x, t, c)
  out.block_until_ready()
  times = []
  for _ in range(args.reps):
    t0 = time.perf_counter()
    compiled(state, x, t, c).block_until_ready()
    times.append(time.perf_counter() - t0)
  stats = jax.devices()[0].memory_stats() or {}
  return {
      "case": args.case, "frames": args.frame_count, "tokens": args.frame_count * args.height * args.width // 4,
      "ms": 1e3 * statistics.median(times), "compile_s": compile_s,
      "temp_gib": mem.temp_size_in_bytes / 2**30, "args_gib": mem.argument_size_in_bytes / 2**30,
      "peak_gib": stats.get("peak_bytes_in_use", 0) / 2**30, "finite": bool(jnp.isfinite(out).all()),
      "device": jax.devices()[0].device_kind, "jax": jax.__version__,
  }


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--preset", default="t2v-1.3b")
  p.add_argument("--layers", type=int, default=0, help="override num_layers (0: the preset's)")
  p.add_argument("--precision", default="bf16_params")
  p.add_argument("--frames", default="21,42,84")
  p.add_argument("--height", type=int, default=60, help="latent height (480 px / 8)")
  p.add_argument("--width", type=int, default=104, help="latent width (832 px / 8)")
  p.add_argument("--chunk", type=int, default=3)
  p.add_argument("--overlap", type=int, default=1)
  p.add_argument("--cases", default=",".join(CASES))
  p.add_argument("--reps", type=int, default=3)
  p.add_argument("--feature-map-backend", default="xla", help="how the students' phi_q, phi_k run: xla | pallas")
  p.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny preset and sizes")
  p.add_argument("--case", help=argparse.SUPPRESS)
  p.add_argument("--frame-count", type=int, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.tiny:
    args.preset, args.precision, args.frames, args.height, args.width, args.reps = "tiny", "fp32", "4,8", 8, 8, 2
  if args.case:
    print("RESULT " + json.dumps(run_case(args)), flush=True)
    return
  rows = []
  for frames in [int(f) for f in args.frames.split(",")]:
    for case in args.cases.split(","):
      cmd = [sys.executable, __file__, *sys.argv[1:], "--case", case, "--frame-count", str(frames)]
      proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
      line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
      if proc.returncode or not line:
        print(f"case {case} frames {frames} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
        rows.append({"case": case, "frames": frames, "ms": float("nan")})
        continue
      rows.append(json.loads(line[0][7:]))
      print(json.dumps(rows[-1]), flush=True)
  teacher = {r["frames"]: r["ms"] for r in rows if r["case"] == "teacher"}
  ok = [r for r in rows if "device" in r]
  if ok:
    print(f"\n{args.preset} ({args.layers or 'all'} layers), {args.precision}, latents {args.height}x{args.width}, "
          f"Tc={args.chunk} To={args.overlap}; device {ok[0]['device']}, jax {ok[0]['jax']}")
  print("| case | latent frames | tokens | forward ms | vs teacher | peak GiB | XLA temp GiB | compile s |")
  print("|---|---|---|---|---|---|---|---|")
  for r in rows:
    if "device" not in r:
      print(f"| {r['case']} | {r['frames']} | - | failed | | | | |")
      continue
    ratio = r["ms"] / teacher[r["frames"]] if r["frames"] in teacher else float("nan")
    print(f"| {r['case']} | {r['frames']} | {r['tokens']} | {r['ms']:.1f} | {ratio:.2f}x | {r['peak_gib']:.2f} | "
          f"{r['temp_gib']:.2f} | {r['compile_s']:.1f} |")


if __name__ == "__main__":
  main()
