"""Building what a run trains: the model (converted teacher or random, a fresh student or one from
a student export), shardings on the mesh, and the initial train state."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rehyat_jax.convert import load_pretrained
from rehyat_jax.convert import student as student_export
from rehyat_jax.core import sharding as sharding_lib
from rehyat_jax.models.config import PRESETS
from rehyat_jax.models.wan import RuntimeConfig, WanDiT
from rehyat_jax.train.config_checks import runtime_config, student_config
from rehyat_jax.train.errors import ConfigError


class TrainState(NamedTuple):
  """Everything an update changes (donated to the step, saved by checkpoints)."""

  step: jax.Array
  trainable: Any          # nnx.State of the trainable Variables
  opt_state: Any
  ema: Any                # nnx.State like ``trainable`` when EMA is on, else an empty dict


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
  """The model a run trains. With ``model.student`` (a student export) its adapters start the run:
  the export's student must be the one ``cfg.rehyat`` describes (``converted_blocks`` may differ:
  every block owns phi, so stage 2 can convert a ranked subset) and its teacher the one loaded."""
  run, rehyat = runtime_config(cfg), student_config(cfg)
  if cfg.model.student:
    try:
      exported = student_export.read_student_config(cfg.model.student)
    except student_export.StudentExportError as e:
      raise ConfigError(f"model.student: {e}") from None
    diffs = exported.differences(rehyat, ignore=("converted_blocks",))
    if diffs:
      raise ConfigError(f"model.student {cfg.model.student} was trained as another student (export vs config): "
                        + "; ".join(f"rehyat.{d}" for d in diffs))
  if cfg.model.checkpoint:
    model = load_pretrained(cfg.model.checkpoint, run=run, rehyat=rehyat, mesh=mesh, seed=cfg.model.seed)
  else:
    model = random_teacher(cfg, run, rehyat)
    if mesh is not None:
      state = nnx.state(model)
      nnx.update(model, jax.device_put(state, sharding_lib.mesh_shardings(state, mesh)))
  if cfg.model.student:
    try:
      student_export.check_teacher(cfg.model.student, model)
    except student_export.StudentExportError as e:
      raise ConfigError(f"model.student: {e}") from None
    student_export.restore_adapters(cfg.model.student, model)
  return model


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
