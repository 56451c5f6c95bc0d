"""A training config -> the objects it describes, validated before anything is built or compiled.

``student_config`` and ``runtime_config`` read ``cfg.rehyat`` and ``cfg.model`` field for field
(the config's names are the dataclasses' names, so nothing is re-spelled here); ``check_config``
raises ``ConfigError`` naming the first field that cannot work.
"""

from __future__ import annotations

import dataclasses

from rehyat_jax.attention.config import RehyatConfig
from rehyat_jax.models.config import PRESETS
from rehyat_jax.models.wan import RuntimeConfig
from rehyat_jax.train.errors import ConfigError
from rehyat_jax.train.mesh import resolve_mesh_shape
from rehyat_jax.train.stages import STAGES

SOURCES = ("synthetic", "latents", "trajectories")
RUNTIME_FIELDS = tuple(f.name for f in dataclasses.fields(RuntimeConfig))

__all__ = ["ConfigError", "SOURCES", "check_config", "runtime_config", "stage_of", "student_config"]


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
  if cfg.data.source == "latents" and not cfg.data.data_dir:
    raise ConfigError("data.source='latents' needs data.data_dir")
  stage.check_config(cfg, mask)
  if not 0.0 <= cfg.train.ema_decay < 1.0:
    raise ConfigError(f"train.ema_decay must be in [0, 1), got {cfg.train.ema_decay}")
  if cfg.train.steps < 1:
    raise ConfigError(f"train.steps must be >= 1, got {cfg.train.steps}")
  if cfg.optim.grad_accum_steps < 1:
    raise ConfigError(f"optim.grad_accum_steps must be >= 1, got {cfg.optim.grad_accum_steps}")
  try:
    data, fsdp, _ = resolve_mesh_shape(cfg.mesh, num_devices)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  shards = data * fsdp
  if cfg.train.global_batch_size % shards:
    raise ConfigError(f"train.global_batch_size={cfg.train.global_batch_size} is not divisible by the "
                      f"{shards} batch shards (mesh.data x mesh.fsdp = {data} x {fsdp})")
  if cfg.train.global_batch_size % num_processes:
    raise ConfigError(f"train.global_batch_size={cfg.train.global_batch_size} is not divisible by the "
                      f"{num_processes} processes")
