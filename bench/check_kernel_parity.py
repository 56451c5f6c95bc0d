"""Check the fused window kernel against the dense reference on the current backend (GPU: compiled).

The CPU test suite runs the kernel in Pallas interpret mode at tiny head sizes; this script runs
the same comparison where the kernel is compiled for real, at kernel-sized heads (D = 64, 128).
For each case it prints max|diff| / max|ref| of the parallel and recurrent forms with every kernel
window backend of the registry that compiles here (all of them, interpreted, where none does) and
every backward it offers, against ``form='reference'`` (float32 inputs upcast from the tested dtype,
HIGHEST precision), forward and gradients w.r.t. q, k, v, phi_q, phi_k. Exit status 1 if any error is
over the tolerance (float32 1e-5, bf16 2e-2 forward / 3e-2 gradients, as in the test suite).

First, the fused φ kernel (``feature_maps/mlp_power_triton.py``) against the XLA map at Wan2.1-1.3B's
φ shape in bf16: forward within 2e-2 of max|φ|, gradients of a loss linear in φ within 1e-5 (its
backward is the XLA map's VJP). ``--phi-only`` stops after it.

  python bench/check_kernel_parity.py [--phi-only]
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

from flax import nnx

from rehyat_jax.attention import WINDOW_BACKENDS, FeatureMapConfig, build_feature_map, hybrid_attention

TOLERANCE = {"float32": (1e-5, 1e-5), "bfloat16": (2e-2, 3e-2)}
# (frames, tokens per frame, heads, head dim, Tc, To, causal)
CASES = [(7, 96, 2, 128, 3, 1, True), (7, 96, 2, 128, 3, 1, False), (5, 40, 3, 64, 2, 3, True),
         (4, 200, 1, 128, 5, 0, True)]


def relative_error(actual, expected) -> float:
  actual, expected = (np.asarray(x, np.float64) for x in (actual, expected))
  return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-30))


def kernel_settings() -> list[tuple[str, str]]:
  """(window_backend, window_backward) of the kernel entries compiled here, else of every kernel entry."""
  kernels = {name: entry for name, entry in WINDOW_BACKENDS.items() if entry.is_kernel}
  here = {name: entry for name, entry in kernels.items() if entry.compiles_here()} or kernels
  return [(name, backward) for name, entry in here.items() for backward in entry.backwards]


def value_and_grads(form: str, window_backend: str, window_backward: str, inputs, causal: bool,
                    chunking: dict, dtype):
  q, k, v, phi_q, phi_k, cotangent = inputs
  cast = lambda x: x.astype(dtype)

  def loss(q, k, v, phi_q, phi_k):
    out = hybrid_attention(q, k, v, phi_q, phi_k, causal=causal, form=form, window_backend=window_backend,
                           window_backward=window_backward, **chunking)
    return jnp.sum(out.astype(jnp.float32) * cotangent), out

  grad = jax.jit(jax.grad(loss, argnums=tuple(range(5)), has_aux=True))
  with jax.default_matmul_precision("highest"):
    return grad(cast(q), cast(k), cast(v), phi_q, phi_k)


def check_phi_kernel() -> bool:
  """The fused φ kernel vs the XLA map (module docstring); True when within tolerance."""
  heads, head_dim = 12, 128
  phi = build_feature_map(FeatureMapConfig(init_scale=0.5), heads, head_dim, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(phi)
  x = jax.random.normal(jax.random.key(0), (1, 4096 + 37, heads, head_dim)).astype(jnp.bfloat16)
  weights = jax.random.normal(jax.random.key(1), (1, 4096 + 37, heads, phi.output_dim))

  def value_and_grad(backend):
    def loss(state, x):
      out = nnx.merge(graphdef, state)(x, backend=backend)
      return jnp.sum(out.astype(jnp.float32) * weights), out
    return jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(state, x)

  (grads_xla, out_xla), (grads_kernel, out_kernel) = value_and_grad("xla"), value_and_grad("pallas")
  fwd = relative_error(out_kernel.astype(jnp.float32), out_xla.astype(jnp.float32))
  bwd = max(relative_error(np.asarray(g, np.float32), np.asarray(r, np.float32))
            for g, r in zip(jax.tree.leaves(grads_kernel), jax.tree.leaves(grads_xla)))
  ok = fwd <= 2e-2 and bwd <= 1e-5
  print(f"phi kernel, 1.3B shape, bf16: fwd {fwd:.2e}  grads {bwd:.2e}  {'ok' if ok else 'FAIL'}", flush=True)
  return ok


def main() -> int:
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.devices()[0].device_kind}")
  failed = not check_phi_kernel()
  if "--phi-only" in sys.argv[1:]:
    return 1 if failed else 0
  for frames, hw, heads, head_dim, tc, to, causal in CASES:
    n = frames * hw
    keys = jax.random.split(jax.random.key(frames * 1000 + hw), 6)
    inputs = [jax.random.normal(keys[i], (1, n, heads, head_dim)) for i in range(3)]
    inputs += [0.2 * jax.random.normal(keys[3 + i], (1, n, heads, 32)) for i in range(2)]
    inputs.append(jax.random.normal(keys[5], (1, n, heads, head_dim)))
    chunking = dict(tokens_per_frame=hw, chunk_frames=tc, overlap_frames=to)
    for dtype in ("float32", "bfloat16"):
      # The reference sees exactly the (dtype-rounded) inputs, in float32.
      rounded = [x.astype(dtype).astype(jnp.float32) for x in inputs[:3]] + inputs[3:]
      ref_grads, ref_out = value_and_grads("reference", "xla", "xla", rounded, causal, chunking,
                                           jnp.float32)
      forms = ("parallel", "recurrent") if causal else ("parallel",)
      for form, (backend, backward) in [(f, s) for f in forms for s in kernel_settings()]:
        grads, out = value_and_grads(form, backend, backward, inputs, causal, chunking, dtype)
        fwd = relative_error(out.astype(jnp.float32), ref_out)
        bwd = max(relative_error(g, r) for g, r in zip(grads, ref_grads))
        fwd_tol, bwd_tol = TOLERANCE[dtype]
        ok = fwd <= fwd_tol and bwd <= bwd_tol and np.isfinite(fwd) and np.isfinite(bwd)
        failed |= not ok
        print(f"F={frames} HW={hw} H={heads} D={head_dim} Tc={tc} To={to} causal={causal} "
              f"{dtype:8s} {form:9s} {backend + '/' + backward:17s}: fwd {fwd:.2e}  grads {bwd:.2e}  "
              f"{'ok' if ok else 'FAIL'}", flush=True)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
