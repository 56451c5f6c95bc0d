"""What the loop feeds the train step: batches from a dataset, or teacher sampling trajectories.

``make_inputs`` picks the stream from ``data.source``: 'synthetic' / 'latents' read records
(clean latents + text; the step noises them), 'trajectories' drives the teacher's sampler on the
texts of a prompt dataset (or of synthetic records) and feeds its current x_t (stage 1). A
stream checkpoints its position with the run (``meta`` / ``arrays`` / ``restore``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rehyat_jax.data.builders import LatentShapes
from rehyat_jax.data.pipeline import make_train_iterator, to_global_batch
from rehyat_jax.data.sources import SyntheticLatentSource, open_latent_source, open_prompt_source
from rehyat_jax.train.mesh import BATCH_AXES, batch_sharding
from rehyat_jax.train.objectives import prepare_batch
from rehyat_jax.train.trajectories import TeacherTrajectories


def make_source(cfg, model_cfg):
  """(random-access record source, LatentShapes) for ``cfg.data``."""
  frames, height, width = (int(v) for v in cfg.data.latent_shape)
  shapes = LatentShapes(latents=(model_cfg.in_dim, frames, height, width), text=(model_cfg.text_len, model_cfg.text_dim))
  if cfg.data.source == "trajectories" and cfg.data.data_dir:
    # Teacher trajectories need only text: a prompt-embedding dataset (tools/encode_prompts.py).
    return open_prompt_source(cfg.data.data_dir, cfg.data.split), shapes
  if cfg.data.source == "latents":
    source = open_latent_source(cfg.data.data_dir, cfg.data.split)
    record = source[0]
    if tuple(np.shape(record["latents"])) != shapes.latents:
      raise ValueError(f"data.data_dir latents have shape {np.shape(record['latents'])}, but the model and "
                       f"data.latent_shape expect {shapes.latents}")
    return source, shapes
  return SyntheticLatentSource(cfg.data.num_examples, shapes, seed=cfg.data.seed), shapes


class DatasetInputs:
  """Batches of records (clean latents + text), sharded over the mesh's batch axes."""

  def __init__(self, cfg, mesh, model_cfg):
    self.cfg, self.mesh = cfg, mesh
    self.source, self.shapes = make_source(cfg, model_cfg)
    self.iterator = make_train_iterator(self.source, global_batch_size=cfg.train.global_batch_size,
                                        seed=cfg.data.seed, worker_count=cfg.data.worker_count)
    self.global_latent_shape = (cfg.train.global_batch_size, *self.shapes.latents)
    spec = batch_sharding(mesh)
    self.batch_shardings = {"latents": spec, "text": spec}
    self.feedback_sharding = None

  def _fields(self, local) -> dict:
    fields = {"text": local["text_embedding"]}
    if "latents" in local:
      fields["latents"] = local["latents"]
    return fields

  def next_data(self) -> dict:
    return to_global_batch(self._fields(next(self.iterator)), self.mesh, BATCH_AXES)

  def next(self) -> dict:
    return self.next_data()

  def after_step(self, feedback) -> None:
    del feedback

  def prepare_with_key(self, batch: dict, key: jax.Array) -> dict:
    return prepare_batch(batch, key, self.cfg.data.shift)

  def held_out_fields(self, local, index: int) -> dict:
    """Clean latents + text of a held-out record batch. A prompt dataset has no latents: seeded
    Gaussian latents stand in (noised by the step like any clean latents)."""
    fields = self._fields(local)
    if "latents" not in fields:
      batch = len(fields["text"])
      key = jax.random.fold_in(jax.random.key(self.cfg.data.seed + 7919), index)
      fields["latents"] = np.asarray(jax.random.normal(key, (batch, *self.shapes.latents), jnp.float32))
    return fields

  # Checkpointing: the Grain iterator is saved by the checkpointer itself.
  def meta(self) -> dict:
    return {}

  def arrays(self) -> dict:
    return {}

  def arrays_like(self, meta: dict) -> dict:
    del meta
    return {}

  def restore(self, meta: dict, arrays: dict) -> None:
    del meta, arrays


class TrajectoryInputs(DatasetInputs):
  """The teacher's sampling trajectories on the texts of the dataset; the step's feedback (the
  teacher's flow prediction) advances them by one sampler step."""

  def __init__(self, cfg, mesh, model_cfg):
    super().__init__(cfg, mesh, model_cfg)
    spec = self.batch_shardings["latents"]
    self.model_cfg = model_cfg
    self.trajectories = TeacherTrajectories(lambda: self.next_data()["text"], self.global_latent_shape,
                                            num_steps=cfg.data.trajectory_steps, shift=cfg.data.shift,
                                            seed=cfg.train.seed, sharding=spec)
    self.batch_shardings = {"x_t": spec, "timesteps": spec, "text": spec}
    self.feedback_sharding = spec

  def next(self) -> dict:
    return self.trajectories.batch()

  def after_step(self, feedback) -> None:
    self.trajectories.advance(feedback)

  def meta(self) -> dict:
    return {"trajectory": self.trajectories.state_dict()}

  def arrays(self) -> dict:
    return self.trajectories.arrays()

  def arrays_like(self, meta: dict) -> dict:
    if not meta.get("trajectory", {}).get("active"):
      return {}
    spec = self.feedback_sharding
    text_shape = (self.global_latent_shape[0], self.model_cfg.text_len, self.model_cfg.text_dim)
    return {"x": jax.ShapeDtypeStruct(self.global_latent_shape, jnp.float32, sharding=spec),
            "text": jax.ShapeDtypeStruct(text_shape, jnp.float32, sharding=spec)}

  def restore(self, meta: dict, arrays: dict) -> None:
    self.trajectories.load_state_dict(meta["trajectory"], arrays)


def make_inputs(cfg, mesh, model_cfg) -> DatasetInputs:
  return (TrajectoryInputs if cfg.data.source == "trajectories" else DatasetInputs)(cfg, mesh, model_cfg)
