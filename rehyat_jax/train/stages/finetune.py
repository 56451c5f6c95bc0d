"""Stage 2: light finetuning of the student with Wan's flow-matching objective (docs/method.md §5).

x_t = (1 - s) x0 + s eps with s from the shifted uniform distribution, target eps - x0, MSE of the
student's flow prediction. ``train.trainable`` picks what trains: 'all', 'adapters', or a regex
over parameter paths ('a/b/c').

At the end the run exports what generation reads (the EMA weights when ``train.ema_decay`` > 0):
``<workdir>/student_export`` (adapters + student.json, as stage 1 writes it) and, when any teacher
weight trained, ``<workdir>/dit``, a converted checkpoint of the finetuned DiT that the export's
teacher fingerprint names. Generate with ``--dit <workdir>/dit --student <workdir>/student_export``
(or the original ``--dit`` when only adapters trained).
"""

from __future__ import annotations

import datetime
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from rehyat_jax.convert import storage
from rehyat_jax.convert.student import export_student, teacher_fingerprint
from rehyat_jax.core.adapters import TEACHER_PARAMS, AdapterParam
from rehyat_jax.models.params import model_to_canonical_layout
from rehyat_jax.train.errors import ConfigError
from rehyat_jax.train.objectives import NUM_TRAIN_TIMESTEPS, noised
from rehyat_jax.train.stages.base import RunContext, Stage

EXPORT_DIR, DIT_DIR = "student_export", "dit"


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


def host_canonical_params(model) -> dict:
  """The model's teacher parameters as a canonical tree of host numpy arrays, gathered from every process."""
  def to_host(a):
    if jax.process_count() > 1 and not a.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return np.asarray(a)
  tree = jax.tree_util.tree_map(to_host, nnx.to_pure_dict(nnx.state(model, TEACHER_PARAMS)))
  return model_to_canonical_layout(tree, scan_layers=model.run.scan_layers, num_layers=model.cfg.num_layers)


class FinetuneStage(Stage):
  name = "finetune"
  sources = ("synthetic", "latents")
  exports_student = True

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

  def finish(self, run: RunContext) -> dict:
    weights = run.ema if run.cfg.train.ema_decay > 0 else run.trainable
    model = nnx.merge(run.graphdef, weights, run.frozen)
    written_by = {"stage": self.name, "workdir": str(run.workdir),
                  "weights": "ema" if run.cfg.train.ema_decay > 0 else "trained"}
    out = {}
    fingerprint = run.teacher_fingerprint
    if jax.tree_util.tree_leaves(nnx.split_state(weights, TEACHER_PARAMS, ...)[0]):
      # Teacher weights changed: the student's teacher is now the finetuned DiT, written beside the export.
      if "://" in str(run.workdir):
        # The converted-checkpoint writer renames a local staging folder into place; the run's checkpoints hold
        # the weights. Not an error after a finished run.
        if run.is_main:
          print(f"stage 2 trained teacher weights; a converted DiT and student export are written to local "
                f"workdirs only, not {run.workdir} (the run's checkpoints there hold the weights)", flush=True)
        return {}
      params = host_canonical_params(model)
      if run.is_main:
        dtypes = sorted({str(a.dtype) for a in jax.tree_util.tree_leaves(params)})
        conversion = {"source": "finetuned in rehyat_jax (stage 2)", "layout": "canonical", "dtype": "/".join(dtypes),
                      "converted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                      **written_by}
        storage.write_converted(str(run.workdir / DIT_DIR), params, model.cfg, conversion, overwrite=True)
      out["dit"] = str(run.workdir / DIT_DIR)
      fingerprint = teacher_fingerprint(model)
    if any(model.converted):
      out["student_export"] = str(export_student(
          model, run.workdir / EXPORT_DIR, student=run.student, teacher_config=run.model_cfg,
          fingerprint=fingerprint, scan_layers=run.cfg.model.scan_layers, written_by=written_by))
    if run.is_main and out:
      print("exports for generation: " + ", ".join(f"--{'dit' if k == 'dit' else 'student'} {v}"
                                                   for k, v in out.items()), flush=True)
    return out
