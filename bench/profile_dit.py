"""Where a DiT forward (or forward+backward) spends its device time: a jax.profiler trace of a few
steps, summed per kernel, printed as a table (top costs first).

Random weights at real Wan2.1 shapes, like bench_dit.py. The trace's own per-kernel durations
are summed over the traced steps and divided by their number, so the table reads "ms per step".
Kernels are grouped by name; XLA fusions also by the HLO op category they come from (matmul,
the window kernel, copies/transposes, elementwise fusions).

  python bench/profile_dit.py --case parallel --frames 21 [--backward] [--json out.json]
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import tempfile
import time


def build(args):
  import dataclasses

  import jax
  import jax.numpy as jnp
  from flax import nnx

  from rehyat_jax.attention.config import RehyatConfig
  from rehyat_jax.attention.feature_maps import FeatureMapConfig
  from rehyat_jax.models.config import PRESETS
  from rehyat_jax.models.wan import RuntimeConfig, WanDiT

  cfg = PRESETS[args.preset]
  if args.layers:
    cfg = dataclasses.replace(cfg, num_layers=args.layers)
  run = RuntimeConfig(precision=args.precision, scan_layers=True, remat="full" if args.backward else "none",
                      feature_map_backend=args.feature_map_backend,
                      **({"window_backend": "pallas", "window_backward": args.window_backward}
                         if args.window_backward else {}))
  rehyat = None
  if args.case != "teacher":
    fm = FeatureMapConfig(hidden=8, feature_dim=4) if args.tiny else FeatureMapConfig()
    rehyat = RehyatConfig(chunk_frames=args.chunk, overlap_frames=args.overlap, causal=True, feature_map=fm)
  model = WanDiT(cfg, run, rehyat, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  method = "recurrent_forward" if args.case == "recurrent" else "__call__"
  forward = lambda state, x, t, c: getattr(nnx.merge(graphdef, state), method)(x, t, c)
  if args.backward:
    loss = lambda state, x, t, c: jnp.mean(jnp.square(forward(state, x, t, c).astype(jnp.float32)))
    fn = jax.jit(jax.grad(loss))
  else:
    fn = jax.jit(forward)
  key = jax.random.key(1)
  x = jax.random.normal(key, (1, cfg.in_dim, args.frames, args.height, args.width), jnp.float32)
  t = jnp.array([500.0])
  c = jax.random.normal(key, (1, cfg.text_len, cfg.text_dim), jnp.float32)
  return fn, (state, x, t, c)


def category(name: str, hlo_op: str) -> str:
  low = (name + " " + hlo_op).lower()
  if "rehyat_window" in low:
    return "window kernel (Pallas)"
  if "cudnn" in low or "flash" in low or "fmha" in low:
    return "cuDNN attention"
  if any(word in low for word in ("gemm", "nvjet", "cublas", "cutlass", "matmul", "dot")):
    return "matmul"
  if "transpose" in low or "copy" in low:
    return "copy / transpose"
  if "reduce" in low:
    return "reduction fusion"
  if "fusion" in low or "convert" in low or "loop" in low or "input" in low:
    return "elementwise fusion"
  return "other"


def summarise(trace_dir: str, steps: int, top: int) -> dict:
  path, = glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "*.trace.json.gz"))
  events = json.load(gzip.open(path))["traceEvents"]
  processes = {e["pid"]: e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "process_name"}
  device_pids = {pid for pid, name in processes.items() if "GPU" in name or "TPU" in name}
  per_name = collections.Counter()
  calls = collections.Counter()
  per_category = collections.Counter()
  for e in events:
    if e.get("ph") != "X" or e.get("pid") not in device_pids:
      continue
    args = e.get("args", {})
    hlo_op = str(args.get("hlo_op", ""))
    name = e["name"]
    key = f"{name}  [{hlo_op}]" if hlo_op and hlo_op != name else name
    per_name[key] += e["dur"] / 1e3 / steps
    calls[key] += 1
    per_category[category(name, hlo_op)] += e["dur"] / 1e3 / steps
  total = sum(per_category.values())
  return {"device_ms_per_step": total,
          "categories": dict(per_category.most_common()),
          "top": [(k, v, calls[k] / steps) for k, v in per_name.most_common(top)]}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--case", default="parallel", choices=["teacher", "parallel", "recurrent"])
  p.add_argument("--preset", default="t2v-1.3b")
  p.add_argument("--frames", type=int, default=21)
  p.add_argument("--height", type=int, default=60)
  p.add_argument("--width", type=int, default=104)
  p.add_argument("--layers", type=int, default=None)
  p.add_argument("--chunk", type=int, default=3)
  p.add_argument("--overlap", type=int, default=1)
  p.add_argument("--precision", default="bf16")
  p.add_argument("--backward", action="store_true", help="profile grad of a loss (remat on)")
  p.add_argument("--window-backward", default=None)
  p.add_argument("--feature-map-backend", default="xla", help="how the student's phi_q, phi_k run: xla | pallas")
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--top", type=int, default=25)
  p.add_argument("--tiny", action="store_true", help="CPU smoke run")
  p.add_argument("--json", default=None)
  args = p.parse_args()
  if args.tiny:
    args.preset, args.frames, args.height, args.width, args.layers = "tiny", 4, 4, 4, 2

  import jax
  fn, inputs = build(args)
  jax.block_until_ready(fn(*inputs))
  jax.block_until_ready(fn(*inputs))
  t0 = time.perf_counter()
  for _ in range(args.steps):
    jax.block_until_ready(fn(*inputs))
  wall = (time.perf_counter() - t0) / args.steps * 1e3
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      for _ in range(args.steps):
        jax.block_until_ready(fn(*inputs))
    summary = summarise(trace_dir, args.steps, args.top)
  summary.update(case=args.case, frames=args.frames, backward=args.backward, wall_ms_per_step=wall,
                 jax=jax.__version__, device=jax.devices()[0].device_kind)
  what = f"{args.case} {'fwd+bwd' if args.backward else 'fwd'} at {args.frames} latent frames"
  print(f"\n## profile: {what} — wall {wall:.1f} ms/step, device kernels {summary['device_ms_per_step']:.1f} ms/step "
        f"({summary['device']}, jax {summary['jax']})")
  print("| category | ms/step | share |\n|---|---|---|")
  for name, ms in summary["categories"].items():
    print(f"| {name} | {ms:.2f} | {ms / max(summary['device_ms_per_step'], 1e-9):.0%} |")
  print("| kernel [hlo op] | ms/step | calls/step |\n|---|---|---|")
  for name, ms, n in summary["top"]:
    print(f"| {name[:110]} | {ms:.2f} | {n:.0f} |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(summary, f, indent=1)


if __name__ == "__main__":
  main()
