"""Stage 2: light finetuning of the student with Wan's flow-matching objective (docs/method.md §5).

x_t = (1 - s) x0 + s eps with s from the shifted uniform distribution, target eps - x0, MSE of the
student's flow prediction. ``train.trainable`` picks what trains: 'all', 'adapters', or a regex
over parameter paths ('a/b/c').
"""

from __future__ import annotations

import re

import jax.numpy as jnp
from flax import nnx

from rehyat_jax.core.adapters import AdapterParam
from rehyat_jax.train.errors import ConfigError
from rehyat_jax.train.objectives import NUM_TRAIN_TIMESTEPS, noised
from rehyat_jax.train.stages.base import Stage


def flow_matching_loss(trainable, frozen, graphdef, inputs):
  """(loss, aux) for stage 2; ``inputs`` hold x0 latents, noise, sigmas, text."""
  model = nnx.merge(graphdef, trainable, frozen)
  x_t = noised(inputs["latents"], inputs["noise"], inputs["sigmas"])
  pred = model(x_t, inputs["sigmas"] * NUM_TRAIN_TIMESTEPS, inputs["text"])
  target = inputs["noise"] - inputs["latents"]
  return jnp.mean(jnp.square(pred.astype(jnp.float32) - target)), {}


def trainable_filter(spec: str):
  """'adapters' -> AdapterParams only; 'all' -> every parameter; else a regex over 'a/b/c' paths."""
  if spec == "adapters":
    return AdapterParam
  if spec == "all":
    return nnx.Param
  pattern = re.compile(spec)
  return lambda path, value: isinstance(value, nnx.Param) and bool(pattern.search("/".join(map(str, path))))


class FinetuneStage(Stage):
  name = "finetune"
  sources = ("synthetic", "latents")

  def check_config(self, cfg, converted_mask):
    del converted_mask
    if cfg.train.trainable not in ("all", "adapters"):
      try:
        re.compile(cfg.train.trainable)
      except re.error as e:
        raise ConfigError(f"train.trainable is neither 'all', 'adapters' nor a valid regex: {e}") from None

  def trainable_filter(self, cfg):
    return trainable_filter(cfg.train.trainable)

  def loss(self, trainable, frozen, graphdef, inputs, converted):
    del converted
    return flow_matching_loss(trainable, frozen, graphdef, inputs)
