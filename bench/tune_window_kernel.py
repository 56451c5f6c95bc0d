"""Sweep tile sizes and launch parameters of the fused ReHyAt window kernel (GPU).

For each WindowKernelConfig in the grid: compile ``window_attention(window_backend='pallas')`` at
Wan2.1-1.3B head shapes, check it against the XLA backend on the same random inputs (relative
error max|diff| / max|ref|, non-zero linear terms so the epilogue is exercised), and time the
forward (median of --reps). Prints one table sorted by time; a config that fails to compile or
run is listed with its error.

  python bench/tune_window_kernel.py --frames 21
  python bench/tune_window_kernel.py --tiny     # CPU interpret-mode smoke run
"""

from __future__ import annotations

import argparse
import itertools
import sys

import jax
import jax.numpy as jnp
import numpy as np

from rehyat_jax.attention.geometry import make_geometry
from rehyat_jax.attention.parallel import window_operands
from rehyat_jax.attention.window import WindowKernelConfig, window_attention
from bench_attention import median_ms  # bench/ (this script's directory) is on sys.path


def make_inputs(frames: int, args: argparse.Namespace):
  geometry = make_geometry(frames * args.tokens_per_frame, tokens_per_frame=args.tokens_per_frame,
                           chunk_frames=args.chunk_frames, overlap_frames=args.overlap_frames)
  shape = (1, geometry.num_tokens, args.heads, args.head_dim)
  keys = jax.random.split(jax.random.key(frames), 5)
  q, k, v = (jax.random.normal(key, shape).astype(args.dtype) for key in keys[:3])
  q_chunks, k_windows, v_windows = window_operands(q, k, v, geometry)
  lin_num = jax.random.normal(keys[3], q_chunks.shape, jnp.float32)
  lin_den = jax.random.uniform(keys[4], q_chunks.shape[:-1], jnp.float32, 0.0, 50.0)
  return geometry, (q_chunks, k_windows, v_windows, lin_num, lin_den)


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
    xla = jax.jit(lambda *x: window_attention(*x, geometry.window_key_bounds(), window_backend="xla"))
    expected = np.asarray(xla(*inputs).astype(jnp.float32))
    scale = float(np.max(np.abs(expected)))
    xla_ms = median_ms(xla, inputs, args.reps)
    rows = []
    for bq, bk, warps, stages in itertools.product(args.block_q, args.block_k, args.num_warps,
                                                   args.num_stages):
      config = WindowKernelConfig(block_q=bq, block_k=bk, num_warps=warps, num_stages=stages)
      fused = jax.jit(lambda *x, c=config: window_attention(*x, geometry.window_key_bounds(), window_backend="pallas",
                                                            kernel_config=c))
      try:
        out = np.asarray(fused(*inputs).astype(jnp.float32))
        error = float(np.max(np.abs(out - expected))) / scale
        ms = median_ms(fused, inputs, args.reps)
        rows.append((ms, config, error, None))
      except Exception as e:  # noqa: BLE001 - a config the compiler rejects ends only its row
        rows.append((float("inf"), config, None, f"{type(e).__name__}: {str(e).splitlines()[0][:90]}"))
      print(rows[-1], flush=True)
    print(f"\nframes {frames}: XLA window backend {xla_ms:.2f} ms; window FLOPs {window_flops:.3e}")
    print("| block_q | block_k | warps | stages | fwd ms | TFLOP/s | rel err vs XLA |")
    print("|---|---|---|---|---|---|---|")
    for ms, c, error, failure in sorted(rows, key=lambda r: r[0]):
      if failure:
        print(f"| {c.block_q} | {c.block_k} | {c.num_warps} | {c.num_stages} | {failure} | | |")
      else:
        print(f"| {c.block_q} | {c.block_k} | {c.num_warps} | {c.num_stages} | {ms:.3f} "
              f"| {window_flops / ms / 1e9:.0f} | {error:.2e} |")


if __name__ == "__main__":
  main(sys.argv[1:])
