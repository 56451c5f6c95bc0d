"""Validation of a training config before anything is built or compiled; errors name the field."""

from __future__ import annotations

import re

from rehyat_jax.attention.config import RehyatConfig
from rehyat_jax.attention.feature_maps import FeatureMapConfig
from rehyat_jax.models.config import PRESETS, PrecisionPolicy
from rehyat_jax.models.wan import REMAT_POLICIES
from rehyat_jax.train.mesh import resolve_mesh_shape

STAGES = ("distill", "finetune")
SOURCES = ("synthetic", "latents", "trajectories")


class ConfigError(ValueError):
  """A training config that cannot run; the message names the field."""


def converted_blocks_spec(value):
  """'all' | int | '1,5,7' | sequence -> what RehyatConfig takes."""
  if isinstance(value, str) and value != "all":
    text = value.strip()
    if re.fullmatch(r"\d+", text):
      return int(text)
    try:
      return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
      raise ConfigError(f"rehyat.converted_blocks must be 'all', a count or a list of block ids, got {value!r}")
  return value


def rehyat_config(cfg) -> RehyatConfig:
  r = cfg.rehyat
  try:
    fm = FeatureMapConfig(degree=r.degree, hidden=r.hidden, feature_dim=r.feature_dim, activation=r.activation,
                          init_scale=r.init_scale)
    return RehyatConfig(chunk_frames=r.chunk_frames, overlap_frames=r.overlap_frames, causal=r.causal,
                        mode=r.mode, phi_input=r.phi_input,
                        converted_blocks=converted_blocks_spec(r.converted_blocks), feature_map=fm)
  except ValueError as e:
    raise ConfigError(str(e) if str(e).startswith("rehyat.") else f"rehyat: {e}") from None


def check_config(cfg, num_devices: int, num_processes: int = 1, num_layers: int | None = None) -> None:
  """Raises ConfigError for the first field that cannot work."""
  if cfg.stage not in STAGES:
    raise ConfigError(f"stage must be one of {STAGES}, got {cfg.stage!r}")
  if not cfg.model.checkpoint and cfg.model.preset not in PRESETS:
    raise ConfigError(f"model.preset must be one of {sorted(PRESETS)}, got {cfg.model.preset!r}")
  try:
    PrecisionPolicy.named(cfg.model.precision)
  except ValueError as e:
    raise ConfigError(f"model.precision: {e}") from None
  if cfg.model.remat not in REMAT_POLICIES:
    raise ConfigError(f"model.remat must be one of {sorted(REMAT_POLICIES)}, got {cfg.model.remat!r}")
  rehyat = rehyat_config(cfg)
  layers = num_layers if num_layers is not None else (PRESETS[cfg.model.preset].num_layers
                                                      if cfg.model.preset in PRESETS else None)
  if layers is not None:
    try:
      mask = rehyat.converted_mask(layers)
    except ValueError as e:
      raise ConfigError(str(e)) from None
    if cfg.stage == "distill" and not any(mask):
      raise ConfigError("rehyat.converted_blocks selects no block: stage 1 would train nothing")
  frames, height, width = (int(v) for v in cfg.data.latent_shape)
  if frames < 1 or height < 1 or width < 1:
    raise ConfigError(f"data.latent_shape must be positive (frames, height, width), got {cfg.data.latent_shape}")
  if rehyat.chunk_frames >= frames:
    raise ConfigError(f"rehyat.chunk_frames={rehyat.chunk_frames} must be smaller than the {frames} latent frames "
                      "of data.latent_shape (otherwise the student is full softmax: nothing to distil)")
  if cfg.data.source not in SOURCES:
    raise ConfigError(f"data.source must be one of {SOURCES}, got {cfg.data.source!r}")
  if cfg.data.source == "trajectories" and cfg.stage != "distill":
    raise ConfigError("data.source='trajectories' (teacher sampling) is a stage-1 input; stage 2 needs latents")
  if cfg.data.source == "latents" and not cfg.data.data_dir:
    raise ConfigError("data.source='latents' needs data.data_dir")
  if cfg.stage == "distill" and cfg.train.trainable != "phi":
    raise ConfigError(f"train.trainable must be 'phi' in stage 1 (only the feature maps train), "
                      f"got {cfg.train.trainable!r}")
  if cfg.train.trainable not in ("all", "phi"):
    try:
      re.compile(cfg.train.trainable)
    except re.error as e:
      raise ConfigError(f"train.trainable is neither 'all', 'phi' nor a valid regex: {e}") from None
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
