"""Stage-1 inputs from the teacher's own sampling trajectories (docs/method.md §5, input (a)).

Each trajectory starts from seeded noise and a text batch; every train step feeds the current
x_t to the distillation forward, whose output is the teacher's flow prediction (the residual
stream is the teacher's), and the trajectory advances by one Euler step on the shifted flow
schedule with that flow. So each teacher sampler step also yields one distillation update. No
guidance is applied along the trajectory (a decision: CFG would need a second, unconditional
pass per step for a trajectory the student never has to reproduce).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rehyat_jax.sampling.schedules import euler_flow_schedule
from rehyat_jax.sampling.solvers import euler_step


class TeacherTrajectories:
  """Host-side driver of the current trajectory; ``state_dict``/``load_state_dict`` checkpoint it."""

  def __init__(self, next_text, latent_shape: tuple[int, ...], *, num_steps: int, shift: float, seed: int,
               sharding):
    self.next_text = next_text            # () -> global text embeddings [B, L, D]
    self.latent_shape = tuple(latent_shape)
    self.schedule = euler_flow_schedule(num_steps, shift)
    self.seed = seed
    self.sharding = sharding
    self.trajectory = 0
    self.k = 0
    self.x = None
    self.text = None

  def _start(self):
    key = jax.random.fold_in(jax.random.key(self.seed), self.trajectory)
    self.x = jax.jit(lambda k: jax.random.normal(k, self.latent_shape, jnp.float32),
                     out_shardings=self.sharding)(key)
    self.text = self.next_text()
    self.k = 0

  def batch(self) -> dict:
    if self.x is None:
      self._start()
    t = np.full((self.latent_shape[0],), self.schedule.timesteps[self.k], np.float32)
    return {"x_t": self.x, "timesteps": jnp.asarray(t), "text": self.text}

  def advance(self, flow: jax.Array) -> None:
    sigmas = self.schedule.sigmas
    self.x = euler_step(self.x, flow, float(sigmas[self.k]), float(sigmas[self.k + 1]))
    self.k += 1
    if self.k == self.schedule.num_steps:
      self.trajectory += 1
      self.x = None

  def state_dict(self) -> dict:
    return {"trajectory": self.trajectory, "k": self.k, "active": self.x is not None}

  def arrays(self) -> dict:
    return {"x": self.x, "text": self.text} if self.x is not None else {}

  def load_state_dict(self, meta: dict, arrays: dict) -> None:
    self.trajectory, self.k = int(meta["trajectory"]), int(meta["k"])
    if meta["active"]:
      self.x, self.text = arrays["x"], arrays["text"]
