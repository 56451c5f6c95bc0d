"""Pure-JAX flow-matching solver steps: Euler, and multistep UniPC (bh2) with its UniC corrector.

UniPC here is diffusers' ``UniPCMultistepScheduler`` (and Wan2.1's ``FlowUniPCMultistepScheduler``,
the same algorithm) for ``prediction_type='flow_prediction'`` with ``predict_x0=True``,
``solver_type='bh2'``, ``lower_order_final=True``, ``final_sigmas_type='zero'``, no disabled
corrector steps and no thresholding. Per step i (sigma_i -> sigma_{i+1}):
  1. convert the flow to an x0 prediction, ``x0_i = x_i - sigma_i * v_i``;
  2. for i > 0, correct x_i with UniC of the previous step's order (it reuses the previous
     predictor's start ``last_sample`` and the x0 history plus the new x0_i);
  3. predict x_{i+1} with UniP of order ``min(solver_order, i + 1, num_steps - i)``: a warm-up
     from order 1, and order 1 again on the last step, which lands exactly on x0 (sigma = 0).

Every UniPC coefficient depends on the sigma table only, and both updates are linear in
(sample, x0 history), so ``unipc_tables`` computes all of them once on the host in float64 and
``unipc_step`` is a handful of multiply-adds: a pure step of a small state machine
(``UniPCState``) that a ``lax.scan`` / ``fori_loop`` over steps can carry.
"""

from __future__ import annotations

import math
import operator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

MAX_UNIPC_ORDER = 3  # diffusers recommends <= 3; higher orders are ill-conditioned solves


def euler_step(x: jax.Array, v: jax.Array, sigma, sigma_next) -> jax.Array:
  """One Euler step of the flow ODE ``dx/dsigma = v``: ``x + (sigma_next - sigma) * v``.

  Same operation order as diffusers' ``FlowMatchEulerDiscreteScheduler.step``. Returned in x.dtype.
  """
  return (x + (sigma_next - sigma) * v).astype(x.dtype)


class UniPCTables(NamedTuple):
  """Per-step UniPC coefficients (float32, [num_steps] or [num_steps, solver_order - 1]).

  Predictor (UniP) at step i, with x0 history m_0 = x0_i (newest), m_1 = x0_{i-1}, ...:
    x_{i+1} = pred_sample[i] * x_i + pred_x0[i] * m_0 + sum_k pred_diff[i, k-1] * (m_k - m_0).
  Corrector (UniC) at step i, with m_0 = x0_{i-1}, m_1 = x0_{i-2}, ... (history before x0_i):
    x_i <- corr_sample[i] * x_{i-1} + corr_x0[i] * m_0 + sum_k corr_diff[i, k-1] * (m_k - m_0)
           + corr_new[i] * (x0_i - m_0), applied where ``corrected[i]`` (every step but the first).
  Unused higher-order entries are 0. ``sigmas`` [num_steps + 1] converts flow to x0.
  """

  sigmas: jax.Array
  pred_sample: jax.Array
  pred_x0: jax.Array
  pred_diff: jax.Array
  corr_sample: jax.Array
  corr_x0: jax.Array
  corr_diff: jax.Array
  corr_new: jax.Array
  corrected: jax.Array

  @property
  def solver_order(self) -> int:
    return int(self.pred_diff.shape[1]) + 1

  @property
  def num_steps(self) -> int:
    return int(self.pred_sample.shape[0])


class UniPCState(NamedTuple):
  """What UniPC carries between steps.

  Attributes:
    step: int32 scalar, index of the step about to run (into the sigma table).
    x0_history: ``solver_order`` x0 predictions, newest first (zeros before they exist).
    last_sample: the sample the previous predictor started from (after its correction).
  """

  step: jax.Array
  x0_history: tuple[jax.Array, ...]
  last_sample: jax.Array


def check_unipc_order(solver_order: int) -> int:
  if isinstance(solver_order, bool):
    raise TypeError(f"solver_order must be an int in [1, {MAX_UNIPC_ORDER}]; got {solver_order!r}")
  order = operator.index(solver_order)
  if not 1 <= order <= MAX_UNIPC_ORDER:
    raise ValueError(f"solver_order must be in [1, {MAX_UNIPC_ORDER}]; got {order}")
  return order


def unipc_step_orders(num_steps: int, solver_order: int) -> np.ndarray:
  """UniP order of every step: warm-up ``i + 1``, capped, and ``lower_order_final``'s ``num_steps - i``."""
  steps = np.arange(num_steps)
  return np.minimum(np.minimum(solver_order, steps + 1), num_steps - steps)


def _log_snr(sigma: float) -> float:
  # lambda = log(alpha) - log(sigma) on the flow path alpha = 1 - sigma (exact in float64 for a
  # float32 sigma, like diffusers' float32 subtraction).
  return math.log(1.0 - sigma) - math.log(sigma)


def _bh2_update(sigma_s0: float, sigma_t: float, older_sigmas: list[float], *,
                corrector: bool) -> tuple[float, float, list[float], float]:
  """Coefficients of one UniP (or UniC) bh2 update from sigma_s0 to sigma_t, predict-x0 form.

  ``older_sigmas`` are the sigmas of the x0 history entries m_1, m_2, ... (the update's order is
  len(older_sigmas) + 1). Returns (sample, m_0, [diff m_k - m_0 for k >= 1], new x0 - m_0); the
  last is 0 for the predictor. Follows diffusers' multistep_uni_{p,c}_bh_update term by term.
  """
  order = len(older_sigmas) + 1
  alpha_t = 1.0 - sigma_t
  lambda_s0 = _log_snr(sigma_s0)
  h = _log_snr(sigma_t) - lambda_s0
  hh = -h  # predict_x0
  h_phi_1 = math.expm1(hh)  # h * phi_1(h) = e^h - 1
  b_h = math.expm1(hh)  # bh2's B(h)
  rks = [(_log_snr(s) - lambda_s0) / h for s in older_sigmas] + [1.0]
  # UniPC's order conditions R rho = b: row j - 1 of R is rks ** (j - 1) and b[j - 1] is
  # h phi_j(h)-type terms times j! / B(h), for j = 1..order (diffusers' recursion).
  r_matrix, b_vector = [], []
  h_phi_k, factorial = h_phi_1 / hh - 1, 1
  for j in range(1, order + 1):
    r_matrix.append([rk**(j - 1) for rk in rks])
    b_vector.append(h_phi_k * factorial / b_h)
    factorial *= j + 1
    h_phi_k = h_phi_k / hh - 1 / factorial
  r_matrix, b_vector = np.array(r_matrix), np.array(b_vector)
  if corrector:
    # UniC uses all `order` conditions; its last rho weights the new x0. Order 1 is fixed at 0.5.
    rhos = [0.5] if order == 1 else list(np.linalg.solve(r_matrix, b_vector))
    history_rhos, new_rho = rhos[:-1], rhos[-1]
  else:
    # UniP drops the last condition; order 2 uses the fixed 0.5 (diffusers' simplification).
    if order == 1:
      history_rhos = []
    elif order == 2:
      history_rhos = [0.5]
    else:
      history_rhos = list(np.linalg.solve(r_matrix[:-1, :-1], b_vector[:-1]))
    new_rho = 0.0
  # x_t = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0 - alpha_t * B(h) * (sum_k rho_k D_k + ...)
  # with D_k = (m_k - m0) / r_k.
  diff = [-alpha_t * b_h * rho / rk for rho, rk in zip(history_rhos, rks[:-1])]
  return sigma_t / sigma_s0, -alpha_t * h_phi_1, diff, -alpha_t * b_h * new_rho


def unipc_tables(sigmas, solver_order: int = 2) -> UniPCTables:
  """All UniPC coefficients for a sigma table (host NumPy, float64 math, float32 result).

  Args:
    sigmas: [num_steps + 1] decreasing host array (a ``FlowSchedule.sigmas``), every sigma but
      the last in (0, 1) and the last 0.
    solver_order: UniPC order, 1 to 3 (Wan and diffusers use 2).
  """
  order = check_unipc_order(solver_order)
  sigmas = np.asarray(sigmas)
  if sigmas.ndim != 1 or sigmas.shape[0] < 2:
    raise ValueError("sigmas must be a 1-D table of num_steps + 1 >= 2 values; "
                     f"got shape {sigmas.shape}")
  if sigmas[-1] != 0:
    raise ValueError(f"UniPC needs a final sigma of 0 (final_sigmas_type='zero'); got {sigmas[-1]}")
  inner = sigmas[:-1].astype(np.float64)
  if not np.all((inner > 0) & (inner < 1)):
    # sigma = 1 has alpha = 0, an infinite log-SNR: diffusers nudges it to 1 - 1e-6 (see
    # unipc_flow_schedule); an Euler schedule, which starts at exactly 1, must not be used here.
    raise ValueError(f"UniPC needs every sigma but the last strictly inside (0, 1); got {sigmas}")
  if np.any(np.diff(inner) >= 0):
    raise ValueError(f"sigmas must be strictly decreasing; got {sigmas}")
  num_steps = inner.shape[0]
  orders = unipc_step_orders(num_steps, order)
  width = order - 1
  table = {name: np.zeros(num_steps) for name in ("pred_sample", "pred_x0", "corr_sample", "corr_x0",
                                                  "corr_new")}
  pred_diff, corr_diff = np.zeros((num_steps, width)), np.zeros((num_steps, width))
  corrected = np.arange(num_steps) > 0
  for i in range(num_steps):
    p = int(orders[i])
    if i > 0:
      # UniC at step i re-runs the previous update (sigma_{i-1} -> sigma_i, order p_{i-1}) with x0_i.
      q = int(orders[i - 1])
      older = [float(inner[i - 1 - k]) for k in range(1, q)]
      (table["corr_sample"][i], table["corr_x0"][i], diff,
       table["corr_new"][i]) = _bh2_update(float(inner[i - 1]), float(inner[i]), older, corrector=True)
      corr_diff[i, :len(diff)] = diff
    if i == num_steps - 1:
      # Last step, order 1, to sigma = 0: alpha_t = 1 and e^{-h} = 0, so x_{i+1} = x0_i exactly
      # (diffusers evaluates the same limit through log(0) = -inf).
      table["pred_sample"][i], table["pred_x0"][i] = 0.0, 1.0
      continue
    older = [float(inner[i - k]) for k in range(1, p)]
    table["pred_sample"][i], table["pred_x0"][i], diff, _ = _bh2_update(
        float(inner[i]), float(sigmas[i + 1]), older, corrector=False)
    pred_diff[i, :len(diff)] = diff
  f32 = lambda a: np.asarray(a, np.float32)
  return UniPCTables(sigmas=f32(sigmas), pred_sample=f32(table["pred_sample"]),
                     pred_x0=f32(table["pred_x0"]), pred_diff=f32(pred_diff),
                     corr_sample=f32(table["corr_sample"]), corr_x0=f32(table["corr_x0"]),
                     corr_diff=f32(corr_diff), corr_new=f32(table["corr_new"]), corrected=corrected)


def unipc_init(sample: jax.Array, solver_order: int = 2) -> UniPCState:
  """State before the first step: empty (zero) x0 history, kept at least float32."""
  order = check_unipc_order(solver_order)
  history_dtype = jnp.result_type(sample.dtype, jnp.float32)
  zeros = jnp.zeros(sample.shape, history_dtype)
  return UniPCState(step=jnp.zeros((), jnp.int32), x0_history=(zeros,) * order,
                    last_sample=jnp.zeros_like(sample))


def unipc_step(tables: UniPCTables, state: UniPCState, sample: jax.Array,
               flow: jax.Array) -> tuple[UniPCState, jax.Array]:
  """One UniPC step: correct ``sample`` (UniC), then predict the next sample (UniP).

  Args:
    tables: ``unipc_tables(schedule.sigmas, solver_order)`` (NumPy or device arrays).
    state: the state returned by the previous step (``unipc_init`` before the first).
    sample: x_i, the sample the model was evaluated at.
    flow: the model's (guided) flow prediction at (x_i, sigma_i).

  Returns:
    (next state, x_{i+1} in sample.dtype).
  """
  if len(state.x0_history) != tables.solver_order:
    raise ValueError(f"state carries {len(state.x0_history)} x0 predictions but the tables are for "
                     f"solver_order={tables.solver_order}")
  tables = jax.tree.map(jnp.asarray, tables)  # host tables index with a traced step
  i = state.step
  history = state.x0_history
  x0 = (sample - tables.sigmas[i] * flow).astype(history[0].dtype)
  m0 = history[0]
  corrected = (tables.corr_sample[i] * state.last_sample + tables.corr_x0[i] * m0
               + tables.corr_new[i] * (x0 - m0))
  for k in range(1, tables.solver_order):
    corrected = corrected + tables.corr_diff[i, k - 1] * (history[k] - m0)
  # A jnp.where, not lax.cond: both branches are a few multiply-adds over the sample.
  sample = jnp.where(tables.corrected[i], corrected, sample).astype(sample.dtype)
  history = (x0,) + history[:-1]
  next_sample = tables.pred_sample[i] * sample + tables.pred_x0[i] * x0
  for k in range(1, tables.solver_order):
    next_sample = next_sample + tables.pred_diff[i, k - 1] * (history[k] - x0)
  new_state = UniPCState(step=i + 1, x0_history=history, last_sample=sample)
  return new_state, next_sample.astype(sample.dtype)
