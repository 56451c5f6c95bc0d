"""Sweep tile sizes and launch parameters of the fused ReHyAt window kernel (GPU).

For each WindowKernelConfig in the grid: compile ``window_attention(window_backend='pallas')`` at
Wan2.1-1.3B head shapes, check it against the XLA backend on the same random inputs (relative
error max|diff| / max|ref|, non-zero linear terms so the epilogue is exercised), and time the
forward (median of --reps). Prints one table sorted by time; a config that fails to compile or
run is listed with its error. ``--backward`` sweeps the fused backward kernels instead (dq and
dk/dv of ``triton_backward.fused_qkv_cotangents`` from the same row-wise cotangents), checked
against ``jax.vjp`` of the XLA window.

  python bench/tune_window_kernel.py --frames 21
  python bench/tune_window_kernel.py --frames 21 --backward
  python bench/tune_window_kernel.py --tiny     # CPU interpret-mode smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys

import jax
import jax.numpy as jnp
import numpy as np

from rehyat_jax.attention.geometry import make_geometry
from rehyat_jax.attention.parallel import geometry_band
from rehyat_jax.attention.window import BackwardTiles, WindowKernelConfig, window_attention
from rehyat_jax.attention.window.fused import row_cotangents
from rehyat_jax.attention.window.triton_backward import fused_qkv_cotangents
from rehyat_jax.attention.window.triton_forward import triton_window_forward
from bench_attention import median_ms  # bench/ (this script's directory) is on sys.path


def make_inputs(frames: int, args: argparse.Namespace):
  geometry = make_geometry(frames * args.tokens_per_frame, tokens_per_frame=args.tokens_per_frame,
                           chunk_frames=args.chunk_frames, overlap_frames=args.overlap_frames)
  shape = (1, geometry.num_tokens, args.heads, args.head_dim)
  keys = jax.random.split(jax.random.key(frames), 5)
  q, k, v = (jax.random.normal(key, shape).astype(args.dtype) for key in keys[:3])
  lin_num = jax.random.normal(keys[3], shape, jnp.float32)
  lin_den = jax.random.uniform(keys[4], shape[:-1], jnp.float32, 0.0, 50.0)
  return geometry, (q, k, v, lin_num, lin_den)


def backward_cases(inputs, band):
  """(XLA dq/dk/dv, (kernel, tiles) -> fused dq or dk/dv, inputs) from the same row-wise cotangents.

  Each fused backward kernel is timed alone: its tiles are set to the candidate, the other
  kernel's are the fixed ``BackwardTiles`` of the default config, and the forward's residuals
  are computed once, outside the timed function.
  """
  q, k, v, lin_num, lin_den = inputs
  cotangent = jax.random.normal(jax.random.key(7), q.shape, q.dtype)
  interpret = jax.default_backend() != "gpu"  # --tiny on a CPU
  floor = jnp.zeros((), jnp.int32)
  out, row_max, row_sum = jax.jit(lambda q, k, v: triton_window_forward(
      q, k, v, lin_num, lin_den, floor, band, WindowKernelConfig(), interpret))(q, k, v)
  da, dn, _ = row_cotangents(out, row_sum, lin_den, cotangent)

  def xla(q, k, v, dy):
    _, vjp = jax.vjp(lambda q, k, v: window_attention(q, k, v, lin_num, lin_den, band, window_backend="xla"),
                     q, k, v)
    return vjp(dy)

  def fused_for(kernel, tiles):
    config = dataclasses.replace(WindowKernelConfig(), **{kernel: tiles})
    pick = (lambda g: g[0]) if kernel == "dq" else (lambda g: g[1:])
    return jax.jit(lambda q, k, v, dy: pick(fused_qkv_cotangents(q, k, v, floor, row_max, da, dn, band,
                                                                 config, interpret)))
  return jax.jit(xla), fused_for, (q, k, v, cotangent)


def main(argv: list[str]) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--frames", type=int, nargs="+", default=[21])
  p.add_argument("--heads", type=int, default=12)
  p.add_argument("--head-dim", type=int, default=128)
  p.add_argument("--tokens-per-frame", type=int, default=1560)
  p.add_argument("--chunk-frames", type=int, default=3)
  p.add_argument("--overlap-frames", type=int, default=1)
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--block-q", type=int, nargs="+", default=[64, 128])
  p.add_argument("--block-k", type=int, nargs="+", default=[32, 64, 128])
  p.add_argument("--num-warps", type=int, nargs="+", default=[4, 8])
  p.add_argument("--num-stages", type=int, nargs="+", default=[1, 2, 3])
  p.add_argument("--reps", type=int, default=20)
  p.add_argument("--backward", action="store_true", help="sweep the fused backward kernels")
  p.add_argument("--kernels", nargs="+", default=["dq", "dkv"], choices=["dq", "dkv"],
                 help="with --backward: which backward kernels to sweep")
  p.add_argument("--tiles", nargs="+", default=None, type=lambda t: tuple(map(int, t.split(","))),
                 help="with --backward: explicit BLOCK_Q,BLOCK_K,WARPS,STAGES tuples instead of the grid")
  p.add_argument("--tiny", action="store_true")
  args = p.parse_args(argv)
  if args.tiny:
    args.heads, args.head_dim, args.tokens_per_frame, args.dtype = 2, 32, 16, "float32"
    args.frames, args.reps = [5], 2
    args.block_q, args.block_k, args.num_warps, args.num_stages = [16, 32], [16], [4], [1]

  print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, dtype {args.dtype}, "
        f"{args.heads}x{args.head_dim}, HW={args.tokens_per_frame}, Tc={args.chunk_frames}, "
        f"To={args.overlap_frames}")
  for frames in args.frames:
    geometry, inputs = make_inputs(frames, args)
    window_flops = 4 * args.heads * args.head_dim * sum(
        (min((t + 1) * geometry.chunk_frames, frames) - t * geometry.chunk_frames)
        * (geometry.softmax_frames(t)[1] - geometry.softmax_frames(t)[0])
        for t in range(geometry.num_chunks)) * args.tokens_per_frame ** 2
    band = geometry_band(geometry)
    if args.backward:
      sweep_backward(geometry, inputs, band, window_flops, args)
      continue
    xla = jax.jit(lambda *x: window_attention(*x, band, window_backend="xla"))
    expected = np.asarray(xla(*inputs).astype(jnp.float32))
    xla_ms = median_ms(xla, inputs, args.reps)
    rows = []
    for bq, bk, warps, stages in itertools.product(args.block_q, args.block_k, args.num_warps,
                                                   args.num_stages):
      config = WindowKernelConfig(block_q=bq, block_k=bk, num_warps=warps, num_stages=stages)
      fused = jax.jit(lambda *x, c=config: window_attention(*x, band, window_backend="pallas",
                                                            kernel_config=c))
      rows.append(time_config(fused, inputs, [expected], config, args.reps))
      print(rows[-1], flush=True)
    print(f"\nframes {frames}, forward: XLA window {xla_ms:.2f} ms; FLOPs {window_flops:.3e}")
    print_table(rows, window_flops, "fwd ms",
                lambda c: f"{c.block_q} | {c.block_k} | {c.num_warps} | {c.num_stages}")


def time_config(fn, inputs, expected, config, reps):
  """(ms, config, max relative error over the outputs, None) or (inf, config, None, failure)."""
  try:
    outs = [np.asarray(o.astype(jnp.float32)) for o in jax.tree.leaves(fn(*inputs))]
    error = max(float(np.max(np.abs(o - e)) / np.max(np.abs(e))) for o, e in zip(outs, expected))
    return (median_ms(fn, inputs, reps), config, error, None)
  except Exception as e:  # noqa: BLE001 - a config the compiler rejects ends only its row
    return (float("inf"), config, None, f"{type(e).__name__}: {str(e).splitlines()[0][:90]}")


def print_table(rows, flops, time_name, describe) -> None:
  print(f"| block_q | block_k | warps | stages | {time_name} | TFLOP/s | rel err vs XLA |")
  print("|---|---|---|---|---|---|---|")
  for ms, c, error, failure in sorted(rows, key=lambda r: r[0]):
    if failure:
      print(f"| {describe(c)} | {failure} | | |")
    else:
      print(f"| {describe(c)} | {ms:.3f} | {flops / ms / 1e9:.0f} | {error:.2e} |")


def sweep_backward(geometry, inputs, band, window_flops, args) -> None:
  """Times the dq kernel and the dk/dv kernel over their own tile grids (--block-q etc.)."""
  xla, fused_for, bwd_inputs = backward_cases(inputs, band)
  dq_ref, dk_ref, dv_ref = (np.asarray(g.astype(jnp.float32)) for g in xla(*bwd_inputs))
  xla_ms = median_ms(xla, bwd_inputs, args.reps)
  print(f"\nframes {geometry.num_frames}, backward: XLA window fwd+bwd {xla_ms:.2f} ms")
  # dq: s, dp, dq (3 tile matmuls); dk/dv: s, dv, dp, dk (4); the forward has 2.
  for kernel, expected, flops in (("dq", [dq_ref], 1.5 * window_flops),
                                  ("dkv", [dk_ref, dv_ref], 2.0 * window_flops)):
    if kernel not in args.kernels:
      continue
    rows = []
    grid = args.tiles or itertools.product(args.block_q, args.block_k, args.num_warps, args.num_stages)
    for bq, bk, warps, stages in grid:
      tiles = BackwardTiles(block_q=bq, block_k=bk, num_warps=warps, num_stages=stages)
      rows.append(time_config(fused_for(kernel, tiles), bwd_inputs, expected, tiles, args.reps))
    print(f"\n{kernel} kernel alone:")
    print_table(rows, flops, f"{kernel} ms", lambda t: f"{t.block_q} | {t.block_k} | {t.num_warps} | {t.num_stages}")


if __name__ == "__main__":
  main(sys.argv[1:])
