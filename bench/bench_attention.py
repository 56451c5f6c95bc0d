"""Benchmark one attention layer: full softmax vs ReHyAt (parallel, recurrent) and ReHyAt's two parts.

Rows (docs/method.md §6 has the H200 reference points):
  full_softmax        jax.nn.dot_product_attention: cuDNN flash on GPU in bf16/fp16, XLA elsewhere
  rehyat_parallel     hybrid_attention(form='parallel'), --window-backend / --window-backward
                      (auto: the fused Pallas kernel on one GPU, XLA elsewhere)
  rehyat_parallel_xla hybrid_attention(form='parallel') with the XLA window softmax
  rehyat_recurrent    hybrid_attention(form='recurrent'), --window-backend / --window-backward
  chunk_softmax       softmax inside each chunk window only (XLA window softmax, phi term removed)
  chunk_softmax_fused the same through the fused Pallas window kernel (linear terms zero)
  chunk_softmax_cudnn the same window softmax as one cuDNN call per chunk (GPU, bf16/fp16 only)
  linear_term         the phi term only: per-frame phi_k v^T sums, prefix mix, phi_q . KV_L / z_L

Default sizes are Wan2.1-1.3B's: 12 heads x 128, 1560 tokens per latent frame, D'=256, Tc=3,
To=1, causal, 21/42/84 latent frames, bf16. Times are the median of --reps runs after a
warm-up; memory is XLA's temp allocation from ``compiled.memory_analysis()`` and, on GPU, the
device's ``peak_bytes_in_use``. On GPU every (row, frames) case runs in a fresh subprocess
(--isolate), so the device peak belongs to that case alone and an OOM only loses that case.

  python bench/bench_attention.py                 # H200: the Wan2.1 sizes
  python bench/bench_attention.py --tiny          # CPU smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from rehyat_jax.attention.geometry import make_geometry
from rehyat_jax.attention.hybrid import hybrid_attention
from rehyat_jax.attention.numerics import joint_normalise
from rehyat_jax.attention.parallel import geometry_band, linear_terms, parallel_hybrid_attention
from rehyat_jax.attention.recurrent import recurrent_hybrid_attention
from rehyat_jax.attention.window import (WindowKernelConfig, window_attention, window_backend_names,
                                         window_backward_names)
from rehyat_jax.attention.window.band import band_windows, from_chunks
from rehyat_jax.attention.window.xla import key_valid_from_bounds, window_softmax

METHODS = ("full_softmax", "rehyat_parallel", "rehyat_parallel_xla", "rehyat_recurrent", "chunk_softmax",
           "chunk_softmax_fused", "chunk_softmax_cudnn", "linear_term")
MIB = 2 ** 20


@dataclasses.dataclass(frozen=True)
class Setup:
  """Sizes and options of one benchmark run (everything except the number of frames)."""

  batch: int
  heads: int
  head_dim: int
  tokens_per_frame: int
  phi_dim: int
  chunk_frames: int
  overlap_frames: int
  dtype: str
  phi_dtype: str
  reps: int
  backward: bool
  window_chunks_per_step: int | None
  recurrent_remat: bool
  window_backend: str
  window_backward: str
  kernel: WindowKernelConfig

  @property
  def chunking(self) -> dict[str, int]:
    return dict(tokens_per_frame=self.tokens_per_frame, chunk_frames=self.chunk_frames,
                overlap_frames=self.overlap_frames)


def cudnn_usable(setup: Setup) -> bool:
  return jax.default_backend() == "gpu" and setup.dtype in ("bfloat16", "float16")


def make_inputs(setup: Setup, frames: int) -> dict[str, jax.Array]:
  n = frames * setup.tokens_per_frame
  qkv_shape = (setup.batch, n, setup.heads, setup.head_dim)
  phi_shape = (setup.batch, n, setup.heads, setup.phi_dim)
  keys = jax.random.split(jax.random.key(0), 5)
  normal = lambda key, shape, dtype, scale=1.0: (scale * jax.random.normal(key, shape)).astype(dtype)
  return dict(
      q=normal(keys[0], qkv_shape, setup.dtype), k=normal(keys[1], qkv_shape, setup.dtype),
      v=normal(keys[2], qkv_shape, setup.dtype),
      # Small features, as an (untrained-scale) feature map would give: keeps den well away
      # from its guard without changing the work done.
      phi_q=normal(keys[3], phi_shape, setup.phi_dtype, 1e-2),
      phi_k=normal(keys[4], phi_shape, setup.phi_dtype, 1e-2))


def chunk_softmax(q, k, v, *, setup: Setup) -> jax.Array:
  """The softmax-in-window part of the parallel form alone (a_S / n_S)."""
  geometry = make_geometry(q.shape[1], **setup.chunking)
  q_chunks, k_windows, v_windows, key_bounds = band_windows(q, k, v, geometry_band(geometry), 0)
  a_s, n_s = window_softmax(q_chunks, k_windows, v_windows,
                            key_valid_from_bounds(key_bounds, k_windows.shape[2]))
  return from_chunks(a_s / n_s[..., None], q.shape[1]).astype(q.dtype)


def chunk_softmax_fused(q, k, v, *, setup: Setup) -> jax.Array:
  """The window softmax alone through the fused kernel (lin_num = lin_den = 0)."""
  geometry = make_geometry(q.shape[1], **setup.chunking)
  zeros = jnp.zeros(q.shape, jnp.float32)
  return window_attention(q, k, v, zeros, zeros[..., 0], geometry_band(geometry),
                          window_backend="pallas", kernel_config=setup.kernel)


def chunk_softmax_cudnn(q, k, v, *, setup: Setup) -> jax.Array:
  """Window softmax as one cuDNN call per chunk. Keys are ordered [chunk ; overlap] so that the
  missing overlap of chunk 0 is a key-length cut (softmax does not care about key order). Exact
  when Tc divides F (a shorter last chunk's padding is attended here: timing only)."""
  geometry = make_geometry(q.shape[1], **setup.chunking)
  hw, tc = setup.tokens_per_frame, setup.chunk_frames
  overlap = geometry.overlap_frames * hw
  q_chunks, k_windows, v_windows, _ = band_windows(q, k, v, geometry_band(geometry), 0)
  reorder = lambda w: jnp.concatenate([w[:, :, overlap:], w[:, :, :overlap]], axis=2)
  valid_overlap = geometry.window_valid()[:, :geometry.overlap_frames].sum(axis=1) * hw
  kv_lengths = np.tile(tc * hw + valid_overlap, q.shape[0]).astype(np.int32)
  flat = lambda x: x.reshape(-1, *x.shape[2:])
  out = jax.nn.dot_product_attention(flat(q_chunks), flat(reorder(k_windows)), flat(reorder(v_windows)),
                                     key_value_seq_lengths=jnp.asarray(kv_lengths),
                                     implementation="cudnn")
  return from_chunks(out.reshape(q_chunks.shape), q.shape[1])


def linear_term(v, phi_q, phi_k, *, setup: Setup) -> jax.Array:
  """The phi term alone: KV_L / z_L per chunk, phi_q . KV_L, phi_q . z_L, joint division."""
  geometry = make_geometry(v.shape[1], **setup.chunking)
  lin_num, lin_den = linear_terms(phi_q, phi_k, v, geometry, causal=True)
  ones = jnp.ones_like(lin_den)  # stands in for n_S, so the division is the real one
  out = joint_normalise(jnp.zeros_like(lin_num), ones, lin_num, lin_den)
  return from_chunks(out, v.shape[1]).astype(v.dtype)


def method(name: str, setup: Setup) -> tuple[Callable[..., jax.Array], tuple[str, ...]]:
  """The function of one benchmark row and the names of the inputs it takes."""
  qkv, qkv_phi = ("q", "k", "v"), ("q", "k", "v", "phi_q", "phi_k")
  if name == "full_softmax":
    implementation = "cudnn" if cudnn_usable(setup) else "xla"
    return functools.partial(jax.nn.dot_product_attention, implementation=implementation), qkv
  if name in ("rehyat_parallel", "rehyat_parallel_xla"):
    window = (dict(window_backend="xla") if name.endswith("_xla") else
              dict(window_backend=setup.window_backend, window_backward=setup.window_backward))
    return functools.partial(parallel_hybrid_attention, causal=True, **window,
                             window_chunks_per_step=setup.window_chunks_per_step, kernel_config=setup.kernel,
                             **setup.chunking), qkv_phi
  if name == "rehyat_recurrent":
    window = dict(window_backend=setup.window_backend, window_backward=setup.window_backward,
                  kernel_config=setup.kernel)
    if setup.recurrent_remat:
      return functools.partial(recurrent_hybrid_attention, remat=True, **window, **setup.chunking), qkv_phi
    return functools.partial(hybrid_attention, causal=True, form="recurrent", **window, **setup.chunking), qkv_phi
  if name == "chunk_softmax":
    return functools.partial(chunk_softmax, setup=setup), qkv
  if name == "chunk_softmax_fused":
    return functools.partial(chunk_softmax_fused, setup=setup), qkv
  if name == "chunk_softmax_cudnn":
    return functools.partial(chunk_softmax_cudnn, setup=setup), qkv
  if name == "linear_term":
    return functools.partial(linear_term, setup=setup), ("v", "phi_q", "phi_k")
  raise ValueError(f"unknown method {name!r}; choose from {METHODS}")


def median_ms(fn: Callable, args: tuple, reps: int) -> float:
  jax.block_until_ready(fn(*args))  # warm-up
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append((time.perf_counter() - start) * 1e3)
  return statistics.median(times)


def _device_peak_mib() -> float | None:
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else peak / MIB


def measure(name: str, setup: Setup, frames: int) -> dict:
  """Times and memory of one row at one length; 'error' set instead when it cannot run."""
  if name == "chunk_softmax_cudnn" and not cudnn_usable(setup):
    return dict(error="needs GPU + bf16/fp16")
  fn, arg_names = method(name, setup)
  inputs = make_inputs(setup, frames)
  args = tuple(inputs[a] for a in arg_names)
  result: dict = {}
  try:
    forward = jax.jit(fn).lower(*args).compile()
    result["fwd_temp_mib"] = forward.memory_analysis().temp_size_in_bytes / MIB
    result["fwd_ms"] = median_ms(forward, args, setup.reps)
    result["fwd_peak_mib"] = _device_peak_mib()
    if setup.backward:
      loss = lambda *a: jnp.sum(fn(*a).astype(jnp.float32))
      grad = jax.jit(jax.grad(loss, argnums=tuple(range(len(args))))).lower(*args).compile()
      result["bwd_temp_mib"] = grad.memory_analysis().temp_size_in_bytes / MIB
      result["fwdbwd_ms"] = median_ms(grad, args, setup.reps)
      result["fwdbwd_peak_mib"] = _device_peak_mib()
  except Exception as e:  # noqa: BLE001 - an OOM or a missing backend ends only this row
    result["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
  return result


def measure_isolated(name: str, frames: int, argv: list[str]) -> dict:
  """measure() in a fresh process: its own device peak, and an OOM cannot take the run down."""
  cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--only", name,
         "--frames", str(frames), "--emit-json", "--no-isolate"]
  proc = subprocess.run(cmd, capture_output=True, text=True)
  for line in reversed(proc.stdout.splitlines()):
    if line.startswith("{"):
      return json.loads(line)
  tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
  return dict(error=f"subprocess rc={proc.returncode}: {tail[0][:120]}")


def _fmt(x: float | None, digits: int = 2) -> str:
  return "-" if x is None else f"{x:.{digits}f}"


def markdown_table(results: dict[str, dict[int, dict]], frames_list: list[int],
                   setup: Setup) -> str:
  lines = ["| method | frames | tokens | fwd ms | fwd / full | fwd+bwd ms | fwd+bwd / full "
           "| temp MiB fwd | temp MiB fwd+bwd | device peak MiB fwd | device peak MiB fwd+bwd |",
           "|" + " --- |" * 11]
  for frames in frames_list:
    full = results.get("full_softmax", {}).get(frames, {})
    for name, per_frames in results.items():
      r = per_frames[frames]
      tokens = frames * setup.tokens_per_frame
      if "error" in r and "fwd_ms" not in r:
        lines.append(f"| {name} | {frames} | {tokens} | {r['error']} |" + " |" * 7)
        continue
      ratio = lambda key: (_fmt(r[key] / full[key]) + "x"
                           if full.get(key) and r.get(key) is not None else "-")
      lines.append(
          f"| {name} | {frames} | {tokens} | {_fmt(r.get('fwd_ms'))} | {ratio('fwd_ms')} "
          f"| {_fmt(r.get('fwdbwd_ms'))} | {ratio('fwdbwd_ms')} | {_fmt(r.get('fwd_temp_mib'), 1)} "
          f"| {_fmt(r.get('bwd_temp_mib'), 1)} | {_fmt(r.get('fwd_peak_mib'), 0)} "
          f"| {_fmt(r.get('fwdbwd_peak_mib'), 0)} |")
  return "\n".join(lines)


def plot(results: dict[str, dict[int, dict]], frames_list: list[int], path: Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  panels = (("fwd_ms", "fwdbwd_ms", "time (ms)"), ("fwd_temp_mib", "bwd_temp_mib", "XLA temp (MiB)"))
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for ax, (fwd_key, bwd_key, label) in zip(axes, panels):
    for index, (name, per_frames) in enumerate(results.items()):
      for key, style in ((fwd_key, "-o"), (bwd_key, "--x")):
        xs = [f for f in frames_list if per_frames[f].get(key) is not None]
        if xs:
          suffix = "" if key == fwd_key else " (fwd+bwd)"
          ax.plot(xs, [per_frames[f][key] for f in xs], style, label=name + suffix,
                  color=colors[index % len(colors)])
    ax.set_xlabel("latent frames")
    ax.set_ylabel(label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
  axes[0].legend(fontsize=7)
  fig.suptitle("attention layer: full softmax vs ReHyAt")
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=120)


def parse_args(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--frames", type=int, nargs="+", default=None, help="latent frame counts")
  p.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"])
  p.add_argument("--phi-dtype", default="float32", choices=["bfloat16", "float16", "float32"],
                 help="dtype of phi_q / phi_k (feature maps output float32)")
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--heads", type=int, default=None)
  p.add_argument("--head-dim", type=int, default=None)
  p.add_argument("--tokens-per-frame", type=int, default=None)
  p.add_argument("--phi-dim", type=int, default=None)
  p.add_argument("--chunk-frames", type=int, default=3)
  p.add_argument("--overlap-frames", type=int, default=1)
  p.add_argument("--window-chunks-per-step", type=int, default=None,
                 help="parallel form: window softmax over this many chunks at a time, "
                      "recomputed in the backward pass")
  p.add_argument("--recurrent-remat", action="store_true",
                 help="recurrent form: recompute each chunk in the backward pass")
  p.add_argument("--window-backend", default="auto", choices=window_backend_names(),
                 help="rehyat_parallel's and rehyat_recurrent's softmax-window backend")
  p.add_argument("--window-backward", default="xla", choices=window_backward_names(),
                 help="the window backend's dq/dk/dv pass (attention.check_window_settings)")
  defaults = WindowKernelConfig()
  p.add_argument("--block-q", type=int, default=defaults.block_q, help="fused kernel tile")
  p.add_argument("--block-k", type=int, default=defaults.block_k, help="fused kernel tile")
  p.add_argument("--num-warps", type=int, default=defaults.num_warps)
  p.add_argument("--num-stages", type=int, default=defaults.num_stages)
  p.add_argument("--reps", type=int, default=None)
  p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
  p.add_argument("--no-backward", dest="backward", action="store_false")
  p.add_argument("--tiny", action="store_true", help="small sizes for a CPU smoke run")
  p.add_argument("--plot", type=Path, default=Path("out/bench_attention.png"))
  p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                 help="one subprocess per case (default: on GPU)")
  p.add_argument("--only", default=None, help=argparse.SUPPRESS)
  p.add_argument("--emit-json", action="store_true", help=argparse.SUPPRESS)
  return p.parse_args(argv)


def make_setup(args: argparse.Namespace) -> tuple[Setup, list[int]]:
  tiny = dict(heads=2, head_dim=32, tokens_per_frame=16, phi_dim=16, dtype="float32", reps=3,
              frames=[4, 8, 16])
  wan = dict(heads=12, head_dim=128, tokens_per_frame=1560, phi_dim=256, dtype="bfloat16",
             reps=10, frames=[21, 42, 84])
  base = tiny if args.tiny else wan
  pick = lambda key: base[key] if getattr(args, key) is None else getattr(args, key)
  setup = Setup(batch=args.batch, heads=pick("heads"), head_dim=pick("head_dim"),
                tokens_per_frame=pick("tokens_per_frame"), phi_dim=pick("phi_dim"),
                chunk_frames=args.chunk_frames, overlap_frames=args.overlap_frames,
                dtype=pick("dtype"), phi_dtype=args.phi_dtype, reps=pick("reps"),
                backward=args.backward, window_chunks_per_step=args.window_chunks_per_step,
                recurrent_remat=args.recurrent_remat, window_backend=args.window_backend,
                window_backward=args.window_backward,
                kernel=WindowKernelConfig(block_q=args.block_q, block_k=args.block_k,
                                          num_warps=args.num_warps, num_stages=args.num_stages))
  return setup, pick("frames")


def main(argv: list[str]) -> None:
  args = parse_args(argv)
  setup, frames_list = make_setup(args)
  if args.emit_json:  # child of an isolated run: one case, one JSON line
    print(json.dumps(measure(args.only, setup, frames_list[0])))
    return
  isolate = jax.default_backend() == "gpu" if args.isolate is None else args.isolate
  device = jax.devices()[0]
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, device {device.device_kind}, "
        f"{'isolated subprocesses' if isolate else 'in-process'}")
  print(f"setup: {dataclasses.asdict(setup)}, frames {frames_list}")
  methods = [m for m in args.methods if m != "chunk_softmax_cudnn" or cudnn_usable(setup)]
  results: dict[str, dict[int, dict]] = {m: {} for m in methods}
  for frames in frames_list:
    for name in methods:
      r = measure_isolated(name, frames, argv) if isolate else measure(name, setup, frames)
      results[name][frames] = r
      print(f"  {name:20s} frames={frames:4d} {json.dumps(r)}", flush=True)
  print()
  print(markdown_table(results, frames_list, setup))
  plot(results, frames_list, args.plot)
  print(f"\nplot: {args.plot}")


if __name__ == "__main__":
  main(sys.argv[1:])
