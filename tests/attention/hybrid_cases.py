"""Random problem instances, error measures and the implementations under test, shared by the
attention tests.

The implementations come from the registries: every form of ``FORMS`` and, for the windowed
forms, every ``WINDOW_BACKENDS`` entry with every backward it offers (kernels in Pallas
interpret mode off their platform). A new backend or backward joins every shared test.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from hypothesis import strategies as st

from rehyat_jax.attention import FORMS, WINDOW_BACKENDS, FeatureMapConfig, build_feature_map, hybrid_attention
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


def feature_map(case: Case, *, init_scale: float = 0.3, degree: int = 2) -> nnx.Module:
  """A small "mlp_power" feature map whose linear branch is large enough to matter in comparisons.

  Built abstractly, then filled from NumPy (random biases too, so every parameter matters).
  """
  hidden, feature_dim = 8, 4
  config = FeatureMapConfig("mlp_power", degree=degree, hidden=hidden, feature_dim=feature_dim,
                            init_scale=init_scale)
  phi = nnx.eval_shape(lambda: build_feature_map(config, case.heads, case.head_dim, rngs=nnx.Rngs(0)))
  stds = {"w1": case.head_dim ** -0.5, "b1": 0.3, "w2": init_scale * hidden ** -0.5,
          "b2": 0.3 * init_scale}
  for offset, (name, std) in enumerate(stds.items()):
    variable = getattr(phi, name)
    variable.set_value(jnp.asarray(normal(case.seed * 5 + offset, variable.shape, std)))
  return phi


def apply_phi(phi: nnx.Module, *xs: jax.Array) -> tuple[jax.Array, ...]:
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


# Small tiles, so that the tiny test windows span several query and key blocks of the kernels.
TEST_KERNEL = WindowKernelConfig.uniform(16, num_warps=4)

# The forms that use no softmax window (the settings below do not apply) and the causal-only ones.
WINDOWLESS_FORMS = ("reference",)
CAUSAL_ONLY_FORMS = ("recurrent",)

# (window_backend, window_backward) for every registry entry and every backward it offers.
WINDOW_SETTINGS = tuple((name, backward) for name, entry in WINDOW_BACKENDS.items()
                        for backward in entry.backwards)
# The plain-XLA window (the baseline the kernels are compared with).
XLA_WINDOW = next((name, entry.default_backward) for name, entry in WINDOW_BACKENDS.items()
                  if not entry.is_kernel)
KERNEL_SETTINGS = tuple((name, backward) for name, backward in WINDOW_SETTINGS
                        if WINDOW_BACKENDS[name].is_kernel)


@dataclasses.dataclass(frozen=True)
class Impl:
  """One implementation of the one function: a form and, for a windowed form, its window."""

  form: str
  window_backend: str = XLA_WINDOW[0]
  window_backward: str = XLA_WINDOW[1]

  def __str__(self) -> str:
    if self.form in WINDOWLESS_FORMS:
      return self.form
    return f"{self.form}-{self.window_backend}-{self.window_backward}"

  @property
  def kernel(self) -> bool:
    """Runs a fused kernel (forward, and maybe backward) rather than XLA."""
    return self.form not in WINDOWLESS_FORMS and WINDOW_BACKENDS[self.window_backend].is_kernel

  def supports(self, causal: bool) -> bool:
    return causal or self.form not in CAUSAL_ONLY_FORMS


def impls(forms=FORMS, settings=WINDOW_SETTINGS) -> tuple[Impl, ...]:
  """Every form of ``forms`` with every window setting of ``settings`` (windowless forms once)."""
  out = []
  for form in forms:
    out += [Impl(form)] if form in WINDOWLESS_FORMS else [Impl(form, *s) for s in settings]
  return tuple(out)


REFERENCE = Impl("reference")
IMPLS = impls()
# (impl, causal) pairs each implementation supports.
IMPL_CAUSAL = [(impl, causal) for impl in IMPLS for causal in (True, False) if impl.supports(causal)]


def impl_causal_id(value) -> str:
  """pytest id of an Impl or a causal flag."""
  if isinstance(value, bool):
    return "causal" if value else "noncausal"
  return str(value)


def hybrid(impl: Impl, q, k, v, phi_q, phi_k, *, causal: bool, **chunking) -> jax.Array:
  """hybrid_attention as ``impl`` (kernels with the small ``TEST_KERNEL`` tiles)."""
  return hybrid_attention(q, k, v, phi_q, phi_k, causal=causal, form=impl.form,
                          window_backend=impl.window_backend, window_backward=impl.window_backward,
                          kernel_config=TEST_KERNEL, **chunking)
