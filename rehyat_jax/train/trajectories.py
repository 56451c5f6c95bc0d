"""Stage-1 inputs as inference sees them: the teacher's own sampling trajectories (docs/method.md §5,
input (a)), run with the sampler ``python -m rehyat_jax.generate`` uses: UniPC (or Euler) on Wan's
shifted schedule, and classifier-free guidance with the negative prompt.

**A pool of trajectories in flight (a replay buffer).** ``pool_size`` trajectories are sampled at
once, each at its own step. Every train step draws ``rows`` of them at random (a generator seeded by
the draw number, so a resumed run draws the same), so a batch mixes trajectories and timesteps and
consecutive updates rarely see the same trajectory. With guidance every drawn trajectory gives two
batch rows, its current sample under the prompt and under the negative prompt: the student's
attention meets both at generation. The distillation forward returns the teacher's flow for every
row (the residual stream is the teacher's); their guided combination advances the drawn
trajectories by one solver step. A trajectory that took its last step restarts from fresh noise
(seeded by its serial number) with the next prompt of the dataset.

**Held-out trajectories** (``sample_held_out``) are sampled the same way, all in step, from noise
seeds training never draws; the end-of-run report (and so the block ranking) measures on them.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from rehyat_jax.core import prng
from rehyat_jax.sampling.guidance import cfg_combine
from rehyat_jax.sampling.schedules import FlowSchedule
from rehyat_jax.sampling.solvers import UniPCState, euler_step, unipc_step, unipc_tables

UNIPC_ORDER = 2  # Wan's and diffusers' solver order, as generation uses
# Held-out noise comes from this branch of the seed's key tree; training trajectories use serials below it.
HELD_OUT_STREAM = 2**31 - 1


def is_guided(guidance: float | None) -> bool:
  """Whether ``guidance`` turns classifier-free guidance on (None and 1 mean one unguided pass, as in
  generation)."""
  return guidance is not None and float(guidance) != 1.0


class Solver:
  """One solver step for a batch of trajectories, each at its own step index (UniPC or Euler)."""

  def __init__(self, schedule: FlowSchedule, solver: str):
    self.solver = solver
    self.sigmas = jnp.asarray(np.asarray(schedule.sigmas, np.float32))
    self.tables = unipc_tables(schedule.sigmas, UNIPC_ORDER) if solver == "unipc" else None

  @property
  def history_length(self) -> int:
    """x0 predictions a trajectory carries between steps (UniPC's multistep history)."""
    return UNIPC_ORDER if self.solver == "unipc" else 0

  def step(self, x, flow, steps, history, last):
    """(x_next, history, last) for trajectories at ``steps`` [n] (history [h, n, ...], last [n, ...])."""
    if self.solver == "euler":
      shape = (-1,) + (1,) * (x.ndim - 1)
      return euler_step(x, flow, self.sigmas[steps].reshape(shape), self.sigmas[steps + 1].reshape(shape)), history, last

    def one(step, x_i, flow_i, history_i, last_i):
      state = UniPCState(step=step, x0_history=tuple(history_i), last_sample=last_i)
      state, x_next = unipc_step(self.tables, state, x_i, flow_i)
      return x_next, jnp.stack(state.x0_history), state.last_sample

    x_next, history, last = jax.vmap(one, in_axes=(0, 0, 0, 1, 0))(steps, x, flow, history, last)
    return x_next, jnp.moveaxis(history, 0, 1), last


class TrajectoryPool:
  """Host-side driver of the pool; the arrays live on the devices. ``state_dict`` / ``arrays`` /
  ``load_state_dict`` checkpoint it exactly."""

  def __init__(self, next_texts: Callable[[], jax.Array], negative_text: jax.Array | None,
               latent_shape: tuple[int, ...], *, pool_size: int, rows: int, schedule: FlowSchedule, solver: str,
               guidance: float | None, seed: int, sharding, batch_sharding):
    self.next_texts = next_texts              # () -> a global batch of text embeddings [Q, L, D]
    self.negative = negative_text            # [L, D], or None without guidance
    self.latent_shape = tuple(latent_shape)  # one sample: (C, F, H, W)
    self.pool_size, self.rows = pool_size, rows
    self.timesteps = np.asarray(schedule.timesteps, np.float32)
    self.num_steps = len(self.timesteps)
    self.guided = is_guided(guidance)
    self.guidance = float(guidance) if self.guided else None
    self.solver = Solver(schedule, solver)
    self.seed = seed
    self.sharding, self.batch_sharding = sharding, batch_sharding
    self.replicated = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    self.steps = np.zeros(pool_size, np.int64)   # each trajectory's next step
    self.serial = 0                              # trajectories started so far (noise seeds)
    self.cursor = 0                              # next unused row of arrays["queue"]
    self.draws = 0                               # train batches drawn so far
    self.arrays: dict[str, jax.Array] = {}       # x, text, history, last: [pool, ...]; queue: [Q, L, D]
    self.drawn = None
    self._gather = jax.jit(self._gather_rows, out_shardings=batch_sharding)
    self._update = jax.jit(self._update_rows, donate_argnums=(0,),
                           out_shardings={"x": sharding, "text": sharding, "history": _history_sharding(sharding),
                                          "last": sharding})
    self._lockstep = jax.jit(self._lockstep_step, out_shardings=self.replicated)

  # --- starting and drawing ---------------------------------------------------------------------------

  def _noise(self, serials: jax.Array, stream: int | None = None) -> jax.Array:
    base = jax.random.key(self.seed)
    if stream is not None:
      base = jax.random.fold_in(base, stream)
    # prng.normal: the same values as jax.random.normal, without its very slow CPU compile for a 4-D shape.
    return jax.vmap(lambda s: prng.normal(jax.random.fold_in(base, s), self.latent_shape, jnp.float32))(serials)

  def _start(self) -> None:
    texts = [self.next_texts()]
    while sum(t.shape[0] for t in texts) < self.pool_size:
      texts.append(self.next_texts())
    first = jax.jit(lambda texts: jnp.concatenate(texts)[:self.pool_size], out_shardings=self.sharding)(texts)
    x = jax.jit(self._noise, out_shardings=self.sharding)(jnp.arange(self.pool_size))
    history = jnp.zeros((self.solver.history_length, *x.shape), jnp.float32, device=_history_sharding(self.sharding))
    self.arrays = {"x": x, "text": first, "history": history, "last": jnp.zeros_like(x),
                   "queue": self.next_texts()}
    self.steps[:] = 0
    self.serial, self.cursor = self.pool_size, 0

  def _gather_rows(self, x, text, negative, drawn, timesteps):
    x_t, text_t = x[drawn], text[drawn]
    if negative is not None:
      x_t = jnp.concatenate([x_t, x_t])
      text_t = jnp.concatenate([text_t, jnp.broadcast_to(negative, text_t.shape)])
      timesteps = jnp.concatenate([timesteps, timesteps])
    return {"x_t": x_t, "timesteps": timesteps, "text": text_t}

  def batch(self) -> dict:
    """The next train batch: ``rows`` trajectories drawn at random, [prompt rows; negative-prompt rows]."""
    if not self.arrays:
      self._start()
    rng = np.random.default_rng([self.seed, self.draws])
    self.drawn = np.sort(rng.choice(self.pool_size, self.rows, replace=False))
    timesteps = self.timesteps[self.steps[self.drawn]]
    return self._gather(self.arrays["x"], self.arrays["text"], self.negative, jnp.asarray(self.drawn, jnp.int32),
                        jnp.asarray(timesteps))

  # --- advancing -----------------------------------------------------------------------------------------

  def _update_rows(self, pool, queue, flow, drawn, steps, restart, serials, queue_rows):
    if self.guided:
      flow = cfg_combine(flow[:self.rows], flow[self.rows:], self.guidance)
    x, history, last = pool["x"][drawn], pool["history"][:, drawn], pool["last"][drawn]
    x, history, last = self.solver.step(x, flow, steps, history, last)
    # A trajectory that took its last step starts again: fresh noise, the next prompt, an empty solver history.
    keep = lambda new, old, axis=0: jnp.where(restart.reshape((1,) * axis + (-1,) + (1,) * (old.ndim - axis - 1)),
                                              new, old)
    x = keep(self._noise(serials), x)
    history, last = keep(jnp.zeros_like(history), history, 1), keep(jnp.zeros_like(last), last)
    text = keep(queue[queue_rows], pool["text"][drawn])
    return {"x": pool["x"].at[drawn].set(x), "text": pool["text"].at[drawn].set(text),
            "history": pool["history"].at[:, drawn].set(history), "last": pool["last"].at[drawn].set(last)}

  def advance(self, flow: jax.Array) -> None:
    """One solver step of the drawn trajectories with the teacher's ``flow`` on the last batch's rows."""
    drawn, steps = self.drawn, self.steps[self.drawn]
    restart = steps + 1 == self.num_steps
    count = int(restart.sum())
    if self.cursor + count > self.arrays["queue"].shape[0]:
      self.arrays["queue"], self.cursor = self.next_texts(), 0
    queue_rows = np.zeros(self.rows, np.int64)
    queue_rows[restart] = self.cursor + np.arange(count)
    serials = np.zeros(self.rows, np.int64)
    serials[restart] = self.serial + np.arange(count)
    pool = {name: self.arrays[name] for name in ("x", "text", "history", "last")}
    as_int = lambda a: jnp.asarray(a, jnp.int32)
    self.arrays.update(self._update(pool, self.arrays["queue"], flow, as_int(drawn), as_int(steps), jnp.asarray(restart),
                                    as_int(serials), as_int(queue_rows)))
    self.steps[drawn] = np.where(restart, 0, steps + 1)
    self.serial += count
    self.cursor += count
    self.draws += 1

  # --- held-out trajectories ----------------------------------------------------------------------------

  def _lockstep_step(self, x, history, last, flow, step):
    if self.guided:
      flow = cfg_combine(flow[:x.shape[0]], flow[x.shape[0]:], self.guidance)
    return self.solver.step(x, flow, jnp.full((x.shape[0],), step, jnp.int32), history, last)

  def sample_held_out(self, texts: jax.Array, measure: Callable[[dict], jax.Array]) -> None:
    """Samples one trajectory per row of ``texts`` (a global batch) from held-out noise, all in step; at every
    step ``measure(batch)`` sees their rows (as ``batch`` gives them) and returns the teacher's flow on them."""
    count = texts.shape[0]
    x = jax.jit(lambda s: self._noise(s, HELD_OUT_STREAM), out_shardings=self.replicated)(jnp.arange(count))
    history = jnp.zeros((self.solver.history_length, *x.shape), jnp.float32, device=self.replicated)
    last = jnp.zeros_like(x, device=self.replicated)
    rows = jnp.arange(count, dtype=jnp.int32)
    for k in range(self.num_steps):
      batch = self._gather(x, texts, self.negative, rows, jnp.full((count,), self.timesteps[k]))
      x, history, last = self._lockstep(x, history, last, measure(batch), k)

  # --- checkpointing ----------------------------------------------------------------------------------------

  def state_dict(self) -> dict:
    return {"steps": self.steps.tolist(), "serial": self.serial, "cursor": self.cursor, "draws": self.draws,
            "active": bool(self.arrays)}

  def checkpoint_arrays(self) -> dict:
    # Euler carries no history: a zero-size array is left out of the checkpoint.
    return {k: v for k, v in self.arrays.items() if k != "history" or self.solver.history_length}

  def arrays_like(self, meta: dict, text_shape: tuple[int, int], queue_rows: int) -> dict:
    if not meta.get("active"):
      return {}
    pool, history = (self.pool_size, *self.latent_shape), (self.solver.history_length, self.pool_size, *self.latent_shape)
    struct = lambda shape, sharding: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=sharding)
    like = {"x": struct(pool, self.sharding), "text": struct((self.pool_size, *text_shape), self.sharding),
            "last": struct(pool, self.sharding), "queue": struct((queue_rows, *text_shape), self.batch_sharding)}
    if self.solver.history_length:
      like["history"] = struct(history, _history_sharding(self.sharding))
    return like

  def load_state_dict(self, meta: dict, arrays: dict) -> None:
    self.steps = np.asarray(meta["steps"], np.int64)
    self.serial, self.cursor, self.draws = int(meta["serial"]), int(meta["cursor"]), int(meta["draws"])
    self.arrays = dict(arrays) if meta["active"] else {}
    if self.arrays and "history" not in self.arrays:
      self.arrays["history"] = jnp.zeros((0, *self.arrays["x"].shape), jnp.float32,
                                         device=_history_sharding(self.sharding))


def _history_sharding(sharding):
  """The solver history [h, pool, ...] is sharded like the pool along its second axis."""
  spec = sharding.spec
  return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(None, *spec))


__all__ = ["HELD_OUT_STREAM", "Solver", "TrajectoryPool", "is_guided"]
