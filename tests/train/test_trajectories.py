"""Stage-1 teacher trajectories follow the inference sampler: every trajectory of the pool visits exactly the
samples that ``rehyat_jax.sampling.sample`` (UniPC or Euler, guidance with the negative prompt) visits from the
same noise and texts, while one batch mixes trajectories at different steps; finished trajectories restart
with fresh noise and the next texts. The teacher here is a plain function of (x, t, text), so the comparison
needs no model."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rehyat_jax.inference.sampler import make_schedule
from rehyat_jax.sampling import sample
from rehyat_jax.train.trajectories import TrajectoryPool

LATENT, TEXT = (2, 3, 2, 2), (4, 3)
STEPS, POOL, ROWS, GUIDANCE = 3, 4, 2, 5.0


@jax.jit
def teacher(x, timesteps, text):
  """A stand-in flow: depends on the sample, the timestep and the text of every row."""
  shape = (-1,) + (1,) * (x.ndim - 1)
  return 0.4 * x + 0.1 * jnp.mean(text, axis=(1, 2)).reshape(shape) + 2e-4 * timesteps.reshape(shape)


def text_batches():
  for i in itertools.count():
    yield jnp.asarray(np.random.default_rng(i).standard_normal((4, *TEXT)), jnp.float32)


def make_pool(solver, guidance):
  sharding = NamedSharding(Mesh(np.array(jax.devices()[:1]), ("data",)), PartitionSpec("data"))
  texts = text_batches()
  negative = jnp.full(TEXT, -0.5, jnp.float32) if guidance else None
  return TrajectoryPool(lambda: next(texts), negative, LATENT, pool_size=POOL, rows=ROWS,
                        schedule=make_schedule(solver, STEPS, 3.0), solver=solver, guidance=guidance, seed=0,
                        sharding=sharding, batch_sharding=sharding)


@pytest.mark.parametrize("solver,guidance", [("unipc", GUIDANCE), ("euler", None)])
def test_pool_trajectories_are_the_inference_samplers(solver, guidance):
  pool = make_pool(solver, guidance)
  pool.batch()  # starts the pool
  start = {slot: (np.asarray(pool.arrays["x"][slot]), np.asarray(pool.arrays["text"][slot])) for slot in range(POOL)}
  visited = {slot: [] for slot in range(POOL)}  # the samples each first trajectory was fed, in order
  mixed = False
  for _ in range(40):
    batch = pool.batch()
    steps = pool.steps[pool.drawn].copy()
    mixed |= len(set(steps.tolist())) > 1
    for row, slot in enumerate(pool.drawn):
      if len(visited[slot]) < STEPS:
        visited[slot].append(np.asarray(batch["x_t"][row]))
        if guidance:  # the negative-prompt row of a trajectory is the same sample
          np.testing.assert_array_equal(batch["x_t"][row], batch["x_t"][ROWS + row])
          np.testing.assert_array_equal(batch["text"][ROWS + row], pool.negative)
    pool.advance(teacher(batch["x_t"], batch["timesteps"], batch["text"]))
    if all(len(v) == STEPS for v in visited.values()):
      break
  assert all(len(v) == STEPS for v in visited.values()) and mixed
  schedule = make_schedule(solver, STEPS, 3.0)
  negative = jnp.asarray(pool.negative)[None] if guidance else None

  @jax.jit
  def sampler_path(noise, text):
    def denoise(x, t):
      cond = teacher(x, t, text)
      return (cond, teacher(x, t, negative)) if guidance else cond
    return sample(denoise, noise, schedule=schedule, solver=solver, guidance_scale=guidance,
                  return_trajectory=True)[1]

  for slot, (noise, text) in start.items():
    path = sampler_path(jnp.asarray(noise)[None], jnp.asarray(text)[None])
    expected = [noise] + [np.asarray(path[k, 0]) for k in range(STEPS - 1)]
    for k, (seen, want) in enumerate(zip(visited[slot], expected)):
      np.testing.assert_allclose(seen, want, rtol=1e-5, atol=1e-6, err_msg=f"slot {slot} step {k}")


def test_finished_trajectories_restart_with_fresh_noise_and_the_next_texts():
  pool = make_pool("unipc", GUIDANCE)
  batch = pool.batch()
  first_texts = np.asarray(pool.arrays["text"])
  restarted = 0
  for _ in range(30):
    before = pool.steps.copy()
    x_before = np.asarray(pool.arrays["x"])
    pool.advance(teacher(batch["x_t"], batch["timesteps"], batch["text"]))
    for slot in pool.drawn:
      if before[slot] == STEPS - 1:
        restarted += 1
        assert pool.steps[slot] == 0
        assert not np.allclose(np.asarray(pool.arrays["x"][slot]), x_before[slot])
        assert not any(np.array_equal(np.asarray(pool.arrays["text"][slot]), t) for t in first_texts)
    batch = pool.batch()
  assert restarted >= POOL and pool.serial == POOL + restarted
