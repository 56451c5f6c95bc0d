"""A training config -> the objects it describes, validated before anything is built or compiled.

``student_config`` and ``runtime_config`` read ``cfg.rehyat`` and ``cfg.model`` field for field
(the config's names are the dataclasses' names, so nothing is re-spelled here); ``check_config``
raises ``ConfigError`` naming the first field that cannot work.
"""

from __future__ import annotations

import dataclasses

from rehyat_jax.attention import check_sequence_split
from rehyat_jax.attention.config import RehyatConfig
from rehyat_jax.models.config import PRESETS
from rehyat_jax.models.wan import RuntimeConfig
from rehyat_jax.train.errors import ConfigError
from rehyat_jax.train.mesh import resolve_mesh_shape
from rehyat_jax.sampling import SOLVERS
from rehyat_jax.train.stages import STAGES
from rehyat_jax.train.trajectories import is_guided

SOURCES = ("synthetic", "latents", "trajectories")
# What data.data_dir holds for each source that reads one (a tool's --out folder or the dataset below it).
DATA_DIR_HELP = {"latents": "a latent dataset: tools/encode_videos.py or tools/generate_latents.py --out DIR",
                 "trajectories": "a prompt dataset: tools/encode_prompts.py --out DIR (or a latent dataset)"}
RUNTIME_FIELDS = tuple(f.name for f in dataclasses.fields(RuntimeConfig))

__all__ = ["ConfigError", "SOURCES", "check_config", "runtime_config", "stage_of", "student_config",
           "trajectory_pool_size"]


def student_config(cfg) -> RehyatConfig:
  """``cfg.rehyat`` as a ``RehyatConfig``; ConfigError naming the field."""
  try:
    return RehyatConfig.from_dict(cfg.rehyat.to_dict())
  except (TypeError, ValueError) as e:
    raise ConfigError(str(e) if str(e).startswith("rehyat") else f"rehyat: {e}") from None


def runtime_config(cfg) -> RuntimeConfig:
  """The ``cfg.model`` fields named like ``RuntimeConfig``'s; ConfigError naming the field."""
  try:
    return RuntimeConfig(**{name: cfg.model[name] for name in RUNTIME_FIELDS})
  except (TypeError, ValueError) as e:
    raise ConfigError(f"model: {e}") from None


def stage_of(cfg):
  if cfg.stage not in STAGES:
    raise ConfigError(f"stage must be one of {tuple(STAGES)}, got {cfg.stage!r}")
  return STAGES[cfg.stage]()


def trajectory_pool_size(cfg) -> int:
  """Trajectories in flight: ``data.trajectory_pool``, or twice the global batch size when it is 0."""
  return int(cfg.data.trajectory_pool) or 2 * int(cfg.train.global_batch_size)


def _check_trajectories(cfg) -> None:
  data = cfg.data
  if data.trajectory_solver not in SOLVERS:
    raise ConfigError(f"data.trajectory_solver must be one of {SOLVERS}, got {data.trajectory_solver!r}")
  if data.trajectory_steps < 1:
    raise ConfigError(f"data.trajectory_steps must be >= 1, got {data.trajectory_steps}")
  if data.trajectory_guidance is not None and data.trajectory_guidance <= 0:
    raise ConfigError(f"data.trajectory_guidance must be a positive CFG scale (1: unguided), got "
                      f"{data.trajectory_guidance}")
  guided = is_guided(data.trajectory_guidance)
  if guided and cfg.train.global_batch_size % 2:
    raise ConfigError(f"train.global_batch_size={cfg.train.global_batch_size} must be even with guidance "
                      f"(data.trajectory_guidance={data.trajectory_guidance}): every trajectory fills two rows")
  rows = cfg.train.global_batch_size // (2 if guided else 1)
  if data.trajectory_pool < 0 or trajectory_pool_size(cfg) < rows:
    raise ConfigError(f"data.trajectory_pool={data.trajectory_pool} is smaller than the {rows} trajectories a "
                      "batch draws (0: twice the global batch size)")


def check_config(cfg, num_devices: int, num_processes: int = 1, num_layers: int | None = None) -> None:
  """Raises ConfigError for the first field that cannot work."""
  stage = stage_of(cfg)
  if not cfg.model.checkpoint and cfg.model.preset not in PRESETS:
    raise ConfigError(f"model.preset must be one of {sorted(PRESETS)}, got {cfg.model.preset!r}")
  runtime_config(cfg)
  rehyat = student_config(cfg)
  layers = num_layers if num_layers is not None else (PRESETS[cfg.model.preset].num_layers
                                                      if cfg.model.preset in PRESETS else None)
  mask = None
  if layers is not None:
    try:
      mask = rehyat.converted_mask(layers)
    except ValueError as e:
      raise ConfigError(str(e)) from None
  if cfg.model.hybrid_form == "recurrent" and not rehyat.causal:
    raise ConfigError("model.hybrid_form='recurrent' needs rehyat.causal=True (the recurrent form is causal only)")
  frames, height, width = (int(v) for v in cfg.data.latent_shape)
  if frames < 1 or height < 1 or width < 1:
    raise ConfigError(f"data.latent_shape must be positive (frames, height, width), got {cfg.data.latent_shape}")
  if rehyat.chunk_frames >= frames:
    raise ConfigError(f"rehyat.chunk_frames={rehyat.chunk_frames} must be smaller than the {frames} latent frames "
                      "of data.latent_shape (otherwise the student is full softmax: nothing to distil)")
  if cfg.data.source not in SOURCES:
    raise ConfigError(f"data.source must be one of {SOURCES}, got {cfg.data.source!r}")
  if cfg.data.source not in stage.sources:
    raise ConfigError(f"data.source={cfg.data.source!r} cannot feed stage {stage.name!r} (it takes "
                      f"{stage.sources}); 'trajectories' (teacher sampling) is a stage-1 input, stage 2 needs latents")
  if cfg.data.source != "synthetic" and not cfg.data.data_dir:
    # Never a silent fallback to random data: random latents and texts are data.source='synthetic', by name.
    raise ConfigError(f"data.source={cfg.data.source!r} needs data.data_dir ({DATA_DIR_HELP[cfg.data.source]}); "
                      "data.source='synthetic' trains on random data instead")
  if cfg.data.source == "trajectories":
    _check_trajectories(cfg)
  stage.check_config(cfg, mask)
  if not 0.0 <= cfg.train.ema_decay < 1.0:
    raise ConfigError(f"train.ema_decay must be in [0, 1), got {cfg.train.ema_decay}")
  if cfg.train.max_nonfinite_steps < 1:
    raise ConfigError(f"train.max_nonfinite_steps must be >= 1, got {cfg.train.max_nonfinite_steps}")
  if cfg.train.steps < 1:
    raise ConfigError(f"train.steps must be >= 1, got {cfg.train.steps}")
  if cfg.optim.grad_accum_steps < 1:
    raise ConfigError(f"optim.grad_accum_steps must be >= 1, got {cfg.optim.grad_accum_steps}")
  try:
    data, fsdp, sequence, _ = resolve_mesh_shape(cfg.mesh, num_devices)
    if sequence > 1:
      check_sequence_split(frames, rehyat.chunk_frames, sequence)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if sequence > 1 and cfg.model.hybrid_form != "parallel":
    raise ConfigError(f"mesh.sequence={sequence} splits the frames of model.hybrid_form='parallel' only; "
                      f"'{cfg.model.hybrid_form}' would gather the whole sequence onto every device")
  shards = data * fsdp
  if cfg.train.global_batch_size % shards:
    raise ConfigError(f"train.global_batch_size={cfg.train.global_batch_size} is not divisible by the "
                      f"{shards} batch shards (mesh.data x mesh.fsdp = {data} x {fsdp})")
  if cfg.data.source == "trajectories" and trajectory_pool_size(cfg) % shards:
    raise ConfigError(f"data.trajectory_pool={cfg.data.trajectory_pool} is not divisible by the {shards} batch "
                      f"shards (mesh.data x mesh.fsdp = {data} x {fsdp}): the pool is sharded like a batch")
  if cfg.train.global_batch_size % num_processes:
    raise ConfigError(f"train.global_batch_size={cfg.train.global_batch_size} is not divisible by the "
                      f"{num_processes} processes")
