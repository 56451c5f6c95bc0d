"""What the loop feeds the train step: batches from a dataset, or teacher sampling trajectories.

``make_inputs`` picks the stream from ``data.source``: 'synthetic' / 'latents' read records
(clean latents + text; the step noises them), 'trajectories' samples the teacher as generation
does on the texts of a prompt dataset (or of a latent dataset) and feeds the samples of a pool of
trajectories in flight (stage 1; ``trajectories.py``). Random data is only ever 'synthetic',
chosen by name: a missing ``data.data_dir`` is a ConfigError. A stream checkpoints its position
with the run (``meta`` / ``arrays`` / ``restore``).
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from rehyat_jax.data.builders import NEGATIVE_SPLIT, LatentShapes
from rehyat_jax.data.pipeline import decode_record, make_train_iterator, to_global_batch
from rehyat_jax.data.sources import DataSourceError, SyntheticLatentSource, open_latent_source, open_prompt_source
from rehyat_jax.inference.sampler import make_schedule
from rehyat_jax.train.config_checks import trajectory_pool_size
from rehyat_jax.train.errors import ConfigError
from rehyat_jax.train.mesh import BATCH_AXES, batch_sharding
from rehyat_jax.train.objectives import prepare_batch
from rehyat_jax.train.trajectories import TrajectoryPool, is_guided

HELD_OUT_SEED_OFFSET = 7919  # held-out records are drawn with data.seed + this
HELD_OUT_BATCHES = 2


def make_source(cfg, model_cfg):
  """(random-access record source, LatentShapes) for ``cfg.data``; ``check_config`` has made sure that
  every source but 'synthetic' has a ``data.data_dir``. A dataset that cannot be opened, or does not fit the
  model, is a ConfigError naming ``data.data_dir``."""
  frames, height, width = (int(v) for v in cfg.data.latent_shape)
  shapes = LatentShapes(latents=(model_cfg.in_dim, frames, height, width), text=(model_cfg.text_len, model_cfg.text_dim))
  if cfg.data.source == "synthetic":
    return SyntheticLatentSource(cfg.data.num_examples, shapes, seed=cfg.data.seed), shapes
  try:
    source = _open_dataset(cfg)
  except DataSourceError as e:
    raise ConfigError(f"data.data_dir={cfg.data.data_dir!r}: {e}") from None
  if cfg.data.source == "latents":
    stored = tuple(np.shape(source[0]["latents"]))
    if stored != shapes.latents:
      raise ConfigError(f"data.data_dir latents have shape {stored}, but the model and data.latent_shape expect "
                        f"{shapes.latents}" + (f": set data.latent_shape={stored[1:]}" if stored[0] == shapes.latents[0]
                                               else " (latent channels differ: another VAE?)"))
  check_text_shape(tuple(np.shape(source[0]["text_embedding"])), shapes.text, source.data_dir)
  return source, shapes


def _open_dataset(cfg):
  if cfg.data.source == "latents":
    return open_latent_source(cfg.data.data_dir, cfg.data.split)
  # Teacher trajectories need only text: a prompt-embedding dataset (tools/encode_prompts.py), or the texts
  # of a latent dataset.
  try:
    return open_prompt_source(cfg.data.data_dir, cfg.data.split)
  except DataSourceError as prompt_error:
    try:
      return open_latent_source(cfg.data.data_dir, cfg.data.split)
    except DataSourceError:
      raise prompt_error from None


def check_text_shape(stored: tuple[int, ...], model: tuple[int, int], data_dir) -> None:
  """Stored text embeddings [L_data, D] fit a DiT taking [text_len, text_dim] if the widths agree and
  L_data <= text_len (``fit_text`` pads with zero rows, as Wan pads every prompt to text_len)."""
  (stored_len, stored_dim), (text_len, text_dim) = stored, model
  if stored_dim != text_dim:
    raise ConfigError(f"data.data_dir {data_dir}: text embeddings are {stored_dim} wide, the DiT's text_dim is "
                      f"{text_dim} (encoded with another text encoder?)")
  if stored_len > text_len:
    raise ConfigError(f"data.data_dir {data_dir}: text embeddings have {stored_len} tokens, the DiT takes "
                      f"text_len={text_len}: encode the prompts again with --text-len {text_len}")


def fit_text(text: np.ndarray, text_len: int) -> np.ndarray:
  """[B, L_data, D] -> [B, text_len, D], zero rows appended (rows past a prompt's length are zero)."""
  missing = text_len - text.shape[1]
  return np.pad(text, ((0, 0), (0, missing), (0, 0))) if missing > 0 else text


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
    fields = {"text": fit_text(local["text_embedding"], self.shapes.text[0])}
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

  def _held_out_records(self):
    """Record batches drawn with a seed of their own (per process, as the training iterator)."""
    return make_train_iterator(self.source, global_batch_size=self.cfg.train.global_batch_size,
                               seed=self.cfg.data.seed + HELD_OUT_SEED_OFFSET, worker_count=0)

  def held_out(self, measure: Callable[[dict, jax.Array], object]) -> None:
    """Calls ``measure(batch, key)`` on every held-out batch (``batch`` as ``next`` returns it, noised
    inside ``measure`` with ``prepare_with_key``): two batches of records, noised with fixed keys."""
    records = self._held_out_records()
    for i in range(HELD_OUT_BATCHES):
      measure(to_global_batch(self._fields(next(records)), self.mesh, BATCH_AXES), jax.random.key(10_000 + i))

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
  """The teacher's sampling trajectories (``trajectories.TrajectoryPool``: the inference sampler, guidance
  with the dataset's negative prompt, a pool mixing trajectories and timesteps in every batch) on the texts
  of the dataset; the step's feedback (the teacher's flow on every row) advances the drawn trajectories."""

  def __init__(self, cfg, mesh, model_cfg):
    super().__init__(cfg, mesh, model_cfg)
    spec = self.batch_shardings["latents"]
    guidance = cfg.data.trajectory_guidance
    rows = cfg.train.global_batch_size // (2 if is_guided(guidance) else 1)
    negative = self._negative_text() if is_guided(guidance) else None
    self.trajectories = TrajectoryPool(
        lambda: self.next_data()["text"], negative, self.shapes.latents, pool_size=trajectory_pool_size(cfg),
        rows=rows, schedule=make_schedule(cfg.data.trajectory_solver, cfg.data.trajectory_steps, cfg.data.shift),
        solver=cfg.data.trajectory_solver, guidance=guidance, seed=cfg.train.seed, sharding=spec,
        batch_sharding=spec)
    self.batch_shardings = {"x_t": spec, "timesteps": spec, "text": spec}
    self.feedback_sharding = spec

  def _negative_text(self) -> jax.Array:
    """The negative prompt's embedding [text_len, D] (the dataset's split 'negative'), replicated."""
    try:
      source = open_prompt_source(self.source.data_dir, NEGATIVE_SPLIT)
    except DataSourceError as e:
      raise ConfigError(f"data.trajectory_guidance={self.cfg.data.trajectory_guidance} needs the negative prompt in "
                        f"data.data_dir (split {NEGATIVE_SPLIT!r}, which tools/encode_prompts.py writes), or "
                        f"data.trajectory_guidance=1 for unguided trajectories: {e}") from None
    text = fit_text(decode_record(source[0])["text_embedding"][None], self.shapes.text[0])[0]
    check_text_shape(text.shape, self.shapes.text, source.data_dir)
    return jax.device_put(text, jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec()))

  def next(self) -> dict:
    return self.trajectories.batch()

  def after_step(self, feedback) -> None:
    self.trajectories.advance(feedback)

  def held_out(self, measure: Callable[[dict, jax.Array], jax.Array]) -> None:
    """Samples held-out trajectories (held-out noise; prompts drawn with a seed of their own) in step and calls
    ``measure(batch, key)`` at every sampler step; ``measure`` returns the teacher's flow on the batch."""
    fields = self._fields(next(self._held_out_records()))
    texts = to_global_batch(fields, self.mesh, BATCH_AXES)["text"][:self.trajectories.rows]
    key = jax.random.key(10_000)
    self.trajectories.sample_held_out(texts, lambda batch: measure(batch, key))

  def meta(self) -> dict:
    return {"trajectory": self.trajectories.state_dict()}

  def arrays(self) -> dict:
    return self.trajectories.checkpoint_arrays()

  def arrays_like(self, meta: dict) -> dict:
    return self.trajectories.arrays_like(meta.get("trajectory", {}), self.shapes.text,
                                         queue_rows=self.cfg.train.global_batch_size)

  def restore(self, meta: dict, arrays: dict) -> None:
    self.trajectories.load_state_dict(meta["trajectory"], arrays)


def make_inputs(cfg, mesh, model_cfg) -> DatasetInputs:
  return (TrajectoryInputs if cfg.data.source == "trajectories" else DatasetInputs)(cfg, mesh, model_cfg)
