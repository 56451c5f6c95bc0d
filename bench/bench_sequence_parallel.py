"""One ReHyAt attention layer, parallel form, with its latent frames split over 1, 2, ... devices
(``attention/sequence_parallel.py``), forward and forward+backward, in one process; each row's
output is checked against the one-device row. Also prints the bytes each device receives per layer
for the linear state (independent of the length) and for the softmax halo.

  python bench/bench_sequence_parallel.py --frames 84 --devices 1,2            # GPU machine, x2
  XLA_FLAGS=--xla_force_host_platform_device_count=2 JAX_PLATFORMS=cpu \\
      python bench/bench_sequence_parallel.py --tiny                           # CPU smoke test
"""

from __future__ import annotations

import argparse
import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rehyat_jax.attention.sequence_parallel import (halo_bytes, linear_state_bytes,
                                                    sequence_parallel_hybrid_attention)
from rehyat_jax.core.sharding import SEQUENCE_AXIS

# Run as a script: its own folder (bench/) is on sys.path, as for tune_window_kernel.py.
from bench_attention import median_ms  # noqa: E402


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--frames", type=int, default=84)
  p.add_argument("--devices", default="1,2", help="comma-separated device counts (the first n devices)")
  p.add_argument("--heads", type=int, default=12)
  p.add_argument("--head-dim", type=int, default=128)
  p.add_argument("--tokens-per-frame", type=int, default=1560)
  p.add_argument("--phi-dim", type=int, default=256)
  p.add_argument("--chunk-frames", type=int, default=3)
  p.add_argument("--overlap-frames", type=int, default=1)
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--window-backend", default="auto")
  p.add_argument("--reps", type=int, default=10)
  p.add_argument("--tiny", action="store_true", help="small sizes, 2 reps (CPU smoke test)")
  args = p.parse_args(argv)
  if args.tiny:
    args.frames, args.heads, args.head_dim, args.tokens_per_frame, args.phi_dim, args.reps = 12, 2, 16, 8, 8, 2
    args.dtype = "float32"
  counts = [int(x) for x in args.devices.split(",")]
  if max(counts) > jax.device_count():
    raise SystemExit(f"--devices {args.devices}: this process sees {jax.device_count()} devices "
                     f"({jax.devices()[0].platform}); on CPU set XLA_FLAGS=--xla_force_host_platform_device_count=N")

  n = args.frames * args.tokens_per_frame
  keys = jax.random.split(jax.random.key(0), 5)
  shape, phi_shape = (1, n, args.heads, args.head_dim), (1, n, args.heads, args.phi_dim)
  q, k, v = (jax.random.normal(key, shape).astype(args.dtype) for key in keys[:3])
  # Small features, as an untrained map gives: the denominator stays away from its guard.
  phi_q, phi_k = ((1e-2 * jax.random.normal(key, phi_shape)).astype(args.dtype) for key in keys[3:])
  attend = functools.partial(sequence_parallel_hybrid_attention, tokens_per_frame=args.tokens_per_frame,
                             chunk_frames=args.chunk_frames, overlap_frames=args.overlap_frames, causal=True,
                             window_backend=args.window_backend)
  loss = lambda *a: jnp.sum(attend(*a).astype(jnp.float32))
  itemsize = jnp.dtype(args.dtype).itemsize

  print(f"# {jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}; {args.frames} latent frames x "
        f"{args.tokens_per_frame} tokens, {args.heads} heads x {args.head_dim}, phi {args.phi_dim}, {args.dtype}, "
        f"Tc={args.chunk_frames} To={args.overlap_frames}, causal, window backend {args.window_backend}; "
        f"median of {args.reps}")
  print("| devices | fwd ms | fwd / 1 device | fwd+bwd ms | fwd+bwd / 1 device | max abs diff vs 1 device | "
        "linear state bytes in | halo bytes in |")
  print("|---|---|---|---|---|---|---|---|")
  base = None
  for count in counts:
    mesh = Mesh(np.asarray(jax.devices()[:count]), (SEQUENCE_AXIS,))
    split = NamedSharding(mesh, P(None, SEQUENCE_AXIS))
    inputs = tuple(jax.device_put(x, split) for x in (q, k, v, phi_q, phi_k))
    with jax.set_mesh(mesh):
      forward = jax.jit(attend)
      grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))
      out = np.asarray(forward(*inputs).astype(jnp.float32))
      fwd, fwdbwd = median_ms(forward, inputs, args.reps), median_ms(grads, inputs, args.reps)
    if base is None:
      base = (fwd, fwdbwd, out)
    state = linear_state_bytes(batch=1, heads=args.heads, head_dim=args.head_dim, phi_dim=args.phi_dim,
                               num_devices=count, causal=True)
    halo = halo_bytes(batch=1, heads=args.heads, head_dim=args.head_dim, phi_dim=args.phi_dim,
                      overlap_frames=args.overlap_frames, tokens_per_frame=args.tokens_per_frame,
                      itemsize=itemsize) if count > 1 else 0
    print(f"| {count} | {fwd:.2f} | {fwd / base[0]:.2f} | {fwdbwd:.2f} | {fwdbwd / base[1]:.2f} | "
          f"{float(np.abs(out - base[2]).max()):.2e} | {state:,} | {halo:,} |", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
