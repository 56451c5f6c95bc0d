"""Random problem instances and error measures shared by the attention tests."""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from hypothesis import strategies as st

from rehyat_jax.attention import FeatureMap, hybrid_attention, parallel_hybrid_attention
from rehyat_jax.attention.window import WindowKernelConfig


# The tests compile one small program per drawn shape; compile time dominates, and these flags
# roughly halve it on CPU at no cost for programs this small.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def jit_fast(fn: Callable, **jit_kwargs) -> Callable:
  """jax.jit with cheap XLA compilation, for test programs that run once or twice."""
  return jax.jit(fn, compiler_options=_FAST_COMPILE, **jit_kwargs)


@dataclasses.dataclass(frozen=True)
class Case:
  """Shape and chunking of one hybrid-attention problem."""

  batch: int
  frames: int
  tokens_per_frame: int
  heads: int
  head_dim: int
  chunk_frames: int
  overlap_frames: int
  causal: bool
  seed: int

  @property
  def num_tokens(self) -> int:
    return self.frames * self.tokens_per_frame

  @property
  def chunking(self) -> dict[str, int]:
    return dict(tokens_per_frame=self.tokens_per_frame, chunk_frames=self.chunk_frames,
                overlap_frames=self.overlap_frames)


@st.composite
def cases(draw, causal: bool | None = None) -> Case:
  return Case(
      batch=draw(st.integers(1, 2)),
      frames=draw(st.integers(1, 12)),
      tokens_per_frame=draw(st.integers(1, 4)),
      heads=draw(st.integers(1, 3)),
      head_dim=draw(st.sampled_from([4, 8])),
      chunk_frames=draw(st.integers(1, 7)),
      overlap_frames=draw(st.integers(0, 3)),
      causal=draw(st.booleans()) if causal is None else causal,
      seed=draw(st.integers(0, 2**16)),
  )


# Test data comes from NumPy: an eager jax.random call compiles a fresh program for every new
# shape, which would cost more than the attention programs under test.
def normal(seed: int, shape: tuple[int, ...], std: float = 1.0) -> np.ndarray:
  return (np.random.default_rng(seed).standard_normal(shape) * std).astype(np.float32)


def qkv(case: Case, dtype=jnp.float32) -> tuple[jax.Array, jax.Array, jax.Array]:
  shape = (case.batch, case.num_tokens, case.heads, case.head_dim)
  return tuple(jnp.asarray(normal(case.seed * 3 + i, shape).astype(dtype)) for i in range(3))


def cotangent(case: Case) -> jax.Array:
  return jnp.asarray(normal(case.seed + 7, (case.batch, case.num_tokens, case.heads, case.head_dim)))


def feature_map(case: Case, *, init_scale: float = 0.3, degree: int = 2) -> FeatureMap:
  """A small feature map whose linear branch is large enough to matter in comparisons.

  Built abstractly, then filled from NumPy (random biases too, so every parameter matters).
  """
  hidden, feature_dim = 8, 4
  phi = nnx.eval_shape(lambda: FeatureMap(case.heads, case.head_dim, degree=degree, hidden=hidden,
                                          feature_dim=feature_dim, init_scale=init_scale,
                                          rngs=nnx.Rngs(0)))
  stds = {"w1": case.head_dim ** -0.5, "b1": 0.3, "w2": init_scale * hidden ** -0.5,
          "b2": 0.3 * init_scale}
  for offset, (name, std) in enumerate(stds.items()):
    variable = getattr(phi, name)
    variable.set_value(jnp.asarray(normal(case.seed * 5 + offset, variable.shape, std)))
  return phi


def apply_phi(phi: FeatureMap, *xs: jax.Array) -> tuple[jax.Array, ...]:
  """phi(x) for each x, compiled once instead of run op by op."""
  return jit_fast(lambda *ys: tuple(phi(y) for y in ys))(*xs)


def relative_error(actual, expected) -> float:
  """max |actual - expected| / max |expected| (0 when both are exactly zero)."""
  actual, expected = (np.asarray(x).astype(np.float64) for x in (actual, expected))
  scale = float(np.max(np.abs(expected)))
  err = float(np.max(np.abs(actual - expected)))
  return err / scale if scale > 0 else err


def tree_relative_errors(actual, expected) -> list[float]:
  return [relative_error(a, e) for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected))]


# Every implementation of the one function, by name. 'parallel' and 'scan' use the XLA window
# softmax; the '_pallas' forms the fused window kernel (Pallas interpret mode off GPU) with
# small tiles so that the tiny test windows span several query and key blocks.
# 'parallel_pallas_bwd' adds the fused backward kernels; 'parallel_pallas_tpu' is the Mosaic TPU
# forward (interpret mode here).
FORMS = ("reference", "parallel", "parallel_pallas", "parallel_pallas_bwd", "parallel_pallas_tpu",
         "scan", "scan_pallas")
TEST_KERNEL = WindowKernelConfig(block_q=16, block_k=16, num_warps=4)
FORM_CAUSAL = [("reference", True), ("reference", False), ("parallel", True), ("parallel", False),
               ("parallel_pallas", True), ("parallel_pallas", False),
               ("parallel_pallas_bwd", True), ("parallel_pallas_bwd", False),
               ("parallel_pallas_tpu", True), ("parallel_pallas_tpu", False), ("scan", True),
               ("scan_pallas", True)]


def hybrid(form: str, q, k, v, phi_q, phi_k, *, causal: bool, **chunking) -> jax.Array:
  """hybrid_attention in one of FORMS."""
  if form in ("parallel_pallas", "parallel_pallas_bwd", "parallel_pallas_tpu"):
    return parallel_hybrid_attention(q, k, v, phi_q, phi_k, causal=causal,
                                     backend=form.removeprefix("parallel_"),
                                     kernel_config=TEST_KERNEL, **chunking)
  if form == "parallel":
    return parallel_hybrid_attention(q, k, v, phi_q, phi_k, causal=causal, backend="xla",
                                     **chunking)
  if form in ("scan", "scan_pallas"):
    backend = "pallas" if form == "scan_pallas" else "xla"
    return hybrid_attention(q, k, v, phi_q, phi_k, causal=causal, mode="scan", backend=backend,
                            **chunking)
  return hybrid_attention(q, k, v, phi_q, phi_k, causal=causal, mode=form, **chunking)
