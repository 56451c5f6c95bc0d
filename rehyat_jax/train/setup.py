"""Building what a run trains: the model (converted teacher or random), the trainable/frozen split,
shardings on the mesh, and the initial train state."""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rehyat_jax.attention.feature_maps import PhiParam
from rehyat_jax.convert import load_pretrained
from rehyat_jax.core import sharding as sharding_lib
from rehyat_jax.models.config import PRESETS
from rehyat_jax.models.wan import RuntimeConfig, WanDiT
from rehyat_jax.train.config_checks import rehyat_config


class TrainState(NamedTuple):
  """Everything an update changes (donated to the step, saved by checkpoints)."""

  step: jax.Array
  trainable: Any          # nnx.State of the trainable Variables
  opt_state: Any
  ema: Any                # nnx.State like ``trainable`` when EMA is on, else an empty dict


def runtime_config(cfg) -> RuntimeConfig:
  m = cfg.model
  return RuntimeConfig(precision=m.precision, scan_layers=m.scan_layers, remat=m.remat,
                       softmax_backend=m.softmax_backend, hybrid_backend=m.hybrid_backend,
                       hybrid_chunks_per_step=m.hybrid_chunks_per_step or None)


def random_teacher(cfg, run: RuntimeConfig, rehyat) -> WanDiT:
  """A teacher with fixed-seed random weights (the demo and tests: real weights cannot ship).

  Wan initialises the output projection to zero; a random teacher gets small random values
  there too, so its flow prediction (and a sampling trajectory) is not identically zero.
  """
  model = WanDiT(PRESETS[cfg.model.preset], run, rehyat, rngs=nnx.Rngs(cfg.model.seed))
  kernel = model.head.head.kernel
  kernel[...] = 0.02 * jax.random.normal(jax.random.key(cfg.model.seed + 1), kernel.shape, kernel.dtype)
  return model


def build_model(cfg, mesh=None) -> WanDiT:
  run, rehyat = runtime_config(cfg), rehyat_config(cfg)
  if cfg.model.checkpoint:
    model = load_pretrained(cfg.model.checkpoint, run=run, rehyat=rehyat, mesh=mesh, seed=cfg.model.seed)
  else:
    model = random_teacher(cfg, run, rehyat)
    if mesh is not None:
      state = nnx.state(model)
      nnx.update(model, jax.device_put(state, sharding_lib.mesh_shardings(state, mesh)))
  return model


def trainable_filter(spec: str):
  """'phi' -> the feature maps only; 'all' -> every parameter; else a regex over 'a/b/c' paths."""
  if spec == "phi":
    return PhiParam
  if spec == "all":
    return nnx.Param
  pattern = re.compile(spec)
  return lambda path, value: isinstance(value, nnx.Param) and bool(pattern.search("/".join(map(str, path))))


def count_params(state) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(state)))


def init_train_state(trainable, tx: optax.GradientTransformation, ema_decay: float) -> TrainState:
  ema = jax.tree_util.tree_map(jnp.copy, trainable) if ema_decay > 0 else {}
  return TrainState(step=jnp.zeros((), jnp.int32), trainable=trainable, opt_state=tx.init(trainable), ema=ema)


def state_shardings(state: TrainState, tx: optax.GradientTransformation, mesh) -> TrainState:
  """Shardings of a TrainState: parameters by their logical axes, optimizer moments like their
  parameters, scalars (step, counts) replicated."""
  param_shardings = sharding_lib.mesh_shardings(state.trainable, mesh)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  opt_shardings = optax.tree_map_params(tx, lambda _, sharding: sharding, state.opt_state, param_shardings,
                                        transform_non_params=lambda _: replicated)
  return TrainState(step=replicated, trainable=param_shardings, opt_state=opt_shardings,
                    ema=param_shardings if state.ema else {})
