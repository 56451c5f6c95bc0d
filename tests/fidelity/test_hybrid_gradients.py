"""Gradients of the hybrid against finite differences of an independent float64 implementation
(tests/numpy_hybrid.py), not against another form of the library.

- Parameters of phi_q and phi_k: the row max c does not depend on them, so the library's gradient must be
  the true derivative of the function.
- q and k: c is held constant under differentiation (docs/method.md §2, a stop-gradient), so the library's
  gradient is a surrogate: exactly the derivative of the function with c frozen at its current value, which
  differs from the true derivative once the linear branch carries weight. v: c does not depend on v, so its
  gradient is the true one.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import numpy_hybrid
from rehyat_jax.attention import FeatureMapConfig, build_feature_map, hybrid_attention

FRAMES, TOKENS_PER_FRAME, HEADS, HEAD_DIM = 4, 2, 2, 4
CHUNK_FRAMES, OVERLAP_FRAMES = 2, 1
# init_scale 0.5: phi large enough that the linear branch carries a visible share of every row.
PHI = FeatureMapConfig(degree=2, hidden=4, feature_dim=2, init_scale=0.5)
FD_STEP = 1e-6
# The library computes in float32; its gradients must match float64 finite differences to float32 accuracy.
TOLERANCE = 1e-4
CASES = [("reference", True), ("parallel", True), ("recurrent", True), ("reference", False), ("parallel", False)]
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def make_problem(seed: int = 0):
  rng = np.random.default_rng(seed)
  shape = (1, FRAMES * TOKENS_PER_FRAME, HEADS, HEAD_DIM)
  q, k, v = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
  readout = rng.standard_normal(shape)  # the loss is <readout, y>: a generic linear functional of the output
  maps = [build_feature_map(PHI, HEADS, HEAD_DIM, rngs=nnx.Rngs(seed + i)) for i in (1, 2)]
  return q, k, v, readout, maps


def pure(module) -> dict[str, np.ndarray]:
  return {name: np.asarray(value, np.float64) for name, value in nnx.to_pure_dict(nnx.state(module)).items()}


def numpy_parts(q, k, v, phi_q_params, phi_k_params, causal, row_max=None):
  phi = lambda x, p: numpy_hybrid.mlp_power(np.asarray(x, np.float64), p["w1"], p["b1"], p["w2"], p["b2"], PHI.degree)
  return numpy_hybrid.hybrid_parts(q, k, v, phi(q, phi_q_params), phi(k, phi_k_params),
                                   tokens_per_frame=TOKENS_PER_FRAME, chunk_frames=CHUNK_FRAMES,
                                   overlap_frames=OVERLAP_FRAMES, causal=causal, row_max=row_max)


def central_differences(f, x: np.ndarray) -> np.ndarray:
  """d f / d x entry by entry, float64."""
  x = np.asarray(x, np.float64)
  grad = np.zeros_like(x)
  for index in np.ndindex(x.shape):
    plus, minus = x.copy(), x.copy()
    plus[index] += FD_STEP
    minus[index] -= FD_STEP
    grad[index] = (f(plus) - f(minus)) / (2 * FD_STEP)
  return grad


@functools.cache
def library_loss_and_grads(form, causal):
  """The library's loss and its gradients w.r.t. (phi_q params, phi_k params, q, k, v) on ``make_problem()``,
  float32 (computed once per form)."""
  q, k, v, readout, maps = make_problem()
  graph_q, state_q = nnx.split(maps[0])
  graph_k, state_k = nnx.split(maps[1])

  def loss(state_q, state_k, q, k, v):
    y = hybrid_attention(q, k, v, nnx.merge(graph_q, state_q)(q), nnx.merge(graph_k, state_k)(k),
                         tokens_per_frame=TOKENS_PER_FRAME, chunk_frames=CHUNK_FRAMES,
                         overlap_frames=OVERLAP_FRAMES, causal=causal, form=form)
    return jnp.sum(y * jnp.asarray(readout, jnp.float32))

  value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)), compiler_options=FAST_COMPILE)
  value, grads = value_and_grad(state_q, state_k, q, k, v)
  grads_q, grads_k = ({n: np.asarray(g, np.float64) for n, g in nnx.to_pure_dict(s).items()} for s in grads[:2])
  return float(value), grads_q, grads_k, *(np.asarray(g, np.float64) for g in grads[2:])


def assert_gradient(actual, expected, what):
  scale = np.abs(expected).max()
  assert scale > 1e-3, f"{what}: the finite-difference gradient vanishes; the check would have no power"
  np.testing.assert_allclose(actual, expected, rtol=0, atol=TOLERANCE * scale, err_msg=what)


@pytest.fixture(scope="module")
def problem():
  q, k, v, readout, maps = make_problem()
  return q, k, v, readout, pure(maps[0]), pure(maps[1])


@pytest.mark.parametrize("causal", [True, False])
def test_the_problem_is_smooth_and_the_linear_branch_matters(problem, causal):
  """Preconditions of the finite-difference checks: no row near the denominator floor (a kink), no
  clamped feature, and a linear branch worth at least a few percent of every row's denominator."""
  q, k, v, _, params_q, params_k = problem
  parts = numpy_parts(q, k, v, params_q, params_k, causal)
  share = parts["lin_den"] / parts["n_s"]
  assert share.min() > -0.9, "a row is near the denominator floor"
  has_linear_keys = np.abs(parts["lin_den"]) > 0  # the first chunk of a causal student has no far keys
  assert np.abs(share[has_linear_keys]).mean() > 0.02


@pytest.mark.parametrize("form,causal", CASES)
def test_forward_matches_float64(problem, form, causal):
  q, k, v, readout, params_q, params_k = problem
  expected = float(np.sum(numpy_parts(q, k, v, params_q, params_k, causal)["y"] * readout))
  value = library_loss_and_grads(form, causal)[0]
  assert abs(value - expected) <= 1e-5 * max(abs(expected), 1.0)


@pytest.mark.parametrize("form,causal", CASES)
def test_phi_parameter_gradients_are_the_true_derivative(problem, form, causal):
  q, k, v, readout, params_q, params_k = problem
  _, grads_q, grads_k, *_ = library_loss_and_grads(form, causal)
  loss = lambda pq, pk: float(np.sum(numpy_parts(q, k, v, pq, pk, causal)["y"] * readout))
  for name in params_q:
    fd_q = central_differences(lambda x: loss({**params_q, name: x}, params_k), params_q[name])
    fd_k = central_differences(lambda x: loss(params_q, {**params_k, name: x}), params_k[name])
    assert_gradient(grads_q[name], fd_q, f"phi_q.{name}")
    assert_gradient(grads_k[name], fd_k, f"phi_k.{name}")


@pytest.mark.parametrize("form,causal", [("reference", True), ("parallel", True), ("parallel", False)])
def test_qk_gradients_are_the_fixed_row_max_surrogate(problem, form, causal):
  q, k, v, readout, params_q, params_k = problem
  _, _, _, grad_q, grad_k, grad_v = library_loss_and_grads(form, causal)
  row_max = numpy_parts(q, k, v, params_q, params_k, causal)["c"]  # c at the point of differentiation
  def loss(q_, k_, v_, frozen):
    parts = numpy_parts(q_, k_, v_, params_q, params_k, causal, row_max=row_max if frozen else None)
    return float(np.sum(parts["y"] * readout))
  for name, grad, wrt in (("q", grad_q, lambda x, f: loss(x, k, v, f)), ("k", grad_k, lambda x, f: loss(q, x, v, f))):
    base = q if name == "q" else k
    frozen = central_differences(lambda x: wrt(x, True), base)
    true = central_differences(lambda x: wrt(x, False), base)
    assert_gradient(grad, frozen, f"d/d{name} with c frozen")
    # The surrogate is not the true derivative: the comparison above could tell them apart.
    assert np.abs(true - frozen).max() > 100 * TOLERANCE * np.abs(frozen).max(), name
  assert_gradient(grad_v, central_differences(lambda x: loss(q, k, x, False), v), "d/dv")
