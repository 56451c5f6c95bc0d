"""One training run of any stage from a config: build, restore, step, log, checkpoint, finish.

What differs between stages (trainable set, loss, logged metrics, end-of-run report and export)
is the stage object's (``train/stages``); what the step is fed is the input stream's
(``train/inputs.py``). This loop knows neither.

Safety: a step with a non-finite loss or gradient changes nothing (``train/step.py``); the loop
prints a line for each, and after ``train.max_nonfinite_steps`` in a row stops with
``NonFiniteTrainingError``, writing no further checkpoint (the newest one holds the last finite
weights). A damaged newest checkpoint is set aside and the run resumes from the next older one
(``RunCheckpointer.restore_newest``).
"""

from __future__ import annotations

import json
import signal

import jax
import numpy as np
from flax import nnx

from rehyat_jax.convert.student import teacher_fingerprint
from rehyat_jax.core import sharding as sharding_lib
from rehyat_jax.train import checkpointing, metrics as metrics_lib, step as step_lib
from rehyat_jax.train.config_checks import check_config, stage_of, student_config
from rehyat_jax.train.errors import NonFiniteTrainingError
from rehyat_jax.train.inputs import make_inputs
from rehyat_jax.train.memory import check_state_fits, memory_line, planned_state_bytes
from rehyat_jax.train.mesh import initialize_distributed, make_mesh, replicated
from rehyat_jax.train.optimizer import make_optimizer
from rehyat_jax.train.setup import build_model, count_params, init_train_state, state_shardings
from rehyat_jax.train.stages import RunContext
from rehyat_jax.train.stages.base import Stage


class _Preemption:
  """SIGTERM (TPU preemption, scheduler stop) -> save at the next step boundary and exit."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


class _NonFiniteSteps:
  """Reports steps the train step skipped as non-finite and stops the run after ``limit`` in a row.

  A step's flags are read after the next step has been dispatched, so checking costs no device idle
  time; ``flush`` reads the last one."""

  def __init__(self, limit: int, checkpointer, is_main: bool):
    self.limit, self.checkpointer, self.is_main = limit, checkpointer, is_main
    self.pending = None

  def after_step(self, step: int, metrics: dict) -> None:
    self.flush()
    self.pending = (step, {name: metrics[name] for name in
                           ("skipped", "nonfinite_in_a_row", "nonfinite_total", "loss", "grad_norm")})

  def flush(self) -> None:
    if self.pending is None:
      return
    (step, metrics), self.pending = self.pending, None
    if not bool(metrics["skipped"]):
      return
    in_a_row, total = int(metrics["nonfinite_in_a_row"]), int(metrics["nonfinite_total"])
    if self.is_main:
      print(f"step {step}: non-finite loss or gradient (loss {float(metrics['loss'])}, grad norm "
            f"{float(metrics['grad_norm'])}): update skipped, weights unchanged ({in_a_row} in a row, {total} in "
            f"total; the run stops at {self.limit} in a row)", flush=True)
    if in_a_row >= self.limit:
      self.checkpointer.wait()
      latest = self.checkpointer.latest_step()
      kept = (f"the newest checkpoint, step {latest} in {self.checkpointer.directory}, holds finite weights"
              if latest is not None else "no checkpoint was written")
      raise NonFiniteTrainingError(
          f"stopped at step {step}: {in_a_row} steps in a row had a non-finite loss or gradient "
          f"(train.max_nonfinite_steps={self.limit}); their updates were skipped and {kept}. Lower "
          "optim.learning_rate or check the data, then resume.")


def _fingerprint(cfg, model) -> dict:
  return {"model": json.dumps(model.cfg.to_dict(), sort_keys=True), "stage": cfg.stage,
          "trainable": cfg.train.trainable, "converted": list(model.converted),
          "feature_map": json.dumps(model.rehyat.feature_map.to_dict(), sort_keys=True)
          if model.rehyat else ""}


def run(cfg) -> dict:
  """Train for ``cfg.train.steps`` steps (resuming from the workdir's latest checkpoint); returns a summary."""
  initialize_distributed(cfg.mesh)
  check_config(cfg, jax.device_count(), jax.process_count())
  mesh = make_mesh(cfg.mesh)
  # The context mesh lets Pallas attention kernels run per batch/head shard (attention/kernel_sharding.py).
  with jax.set_mesh(mesh):
    return _train(cfg, mesh)


def _train(cfg, mesh) -> dict:
  stage = stage_of(cfg)
  workdir = checkpointing.run_path(cfg.workdir)  # local or gs://
  is_main = jax.process_index() == 0
  # Before the weights are read or drawn: a mesh too small for the model's state stops here, with the figures.
  # The same figures as the built state's (tests/train/test_state_memory.py), so they are printed below too.
  planned = planned_state_bytes(cfg, mesh)
  check_state_fits(planned)
  model = build_model(cfg, mesh)
  check_config(cfg, jax.device_count(), jax.process_count(), num_layers=model.cfg.num_layers)
  converted, model_cfg = model.converted, model.cfg
  fingerprint = _fingerprint(cfg, model)
  teacher_print = teacher_fingerprint(model) if stage.exports_student else None
  graphdef, trainable, frozen = nnx.split(model, stage.trainable_filter(cfg), ...)
  del model
  if not jax.tree_util.tree_leaves(trainable):
    raise ValueError(f"train.trainable={cfg.train.trainable!r} selects no parameter")
  updates = max(cfg.train.steps // cfg.optim.grad_accum_steps, 1)
  tx = make_optimizer(cfg.optim, updates)
  state = init_train_state(trainable, tx, cfg.train.ema_decay)
  shardings = state_shardings(state, tx, mesh)
  state = jax.device_put(state, shardings)
  frozen_shardings = sharding_lib.mesh_shardings(frozen, mesh)
  frozen = jax.device_put(frozen, frozen_shardings)

  inputs = make_inputs(cfg, mesh, model_cfg)
  checkpointer = checkpointing.RunCheckpointer(workdir / "checkpoints", keep=cfg.train.keep_checkpoints,
                                               fingerprint=fingerprint)
  start = 0
  restored = checkpointer.restore_newest(state, inputs.arrays_like, inputs.iterator,
                                         report=lambda line: is_main and print(line, flush=True))
  if restored is not None:
    state, arrays, meta = restored
    inputs.restore(meta, arrays)
    start = int(meta["step"])
    if is_main:
      print(f"resumed from {workdir / 'checkpoints'} step {start}", flush=True)

  train_step = step_lib.make_train_step(
      stage, graphdef, tx, converted, shift=cfg.data.shift, ema_decay=cfg.train.ema_decay, seed=cfg.train.seed,
      state_shardings=shardings, frozen_shardings=frozen_shardings, batch_shardings=inputs.batch_shardings,
      replicated=replicated(mesh), feedback_sharding=inputs.feedback_sharding)
  monitor = stage.make_monitor(graphdef, converted, step_lib.make_prepare(cfg.data.shift, cfg.train.seed),
                               replicated(mesh))
  shapes = inputs.shapes
  tokens_per_step = cfg.train.global_batch_size * int(np.prod(shapes.latents[1:])) // int(
      np.prod(model_cfg.patch_size))
  logger = metrics_lib.RunLogger(workdir, total_steps=cfg.train.steps, tokens_per_step=tokens_per_step,
                                 num_devices=jax.device_count(), device_kind=jax.devices()[0].device_kind,
                                 enabled=is_main)
  frames = shapes.latents[1] // model_cfg.patch_size[0]
  logger.flops_per_step = metrics_lib.estimate_step_flops(
      model_cfg, batch=cfg.train.global_batch_size, frames=frames,
      tokens_per_frame=tokens_per_step // (cfg.train.global_batch_size * frames),
      teacher_softmax=stage.runs_teacher_softmax, backward=stage.backward_through_model,
      window_frames=cfg.rehyat.chunk_frames + cfg.rehyat.overlap_frames)
  if is_main:
    print(f"stage {stage.name}: {count_params(state.trainable):,} trainable parameters, "
          f"{count_params(frozen):,} frozen; mesh {dict(mesh.shape)}; {jax.device_count()} devices, "
          f"{jax.process_count()} processes; steps {start}..{cfg.train.steps}", flush=True)
    print(memory_line(planned), flush=True)
    if start < cfg.train.steps:
      print("compiling the train step (the first step waits for it; the speed and ETA count only later steps) ...",
            flush=True)

  preemption = _Preemption()
  nonfinite = _NonFiniteSteps(cfg.train.max_nonfinite_steps, checkpointer, is_main)
  history = []
  step = start
  try:
    while step < cfg.train.steps:
      batch = inputs.next()
      logging_now = (step + 1) % cfg.train.log_every == 0
      # The first step runs the monitor too, so it compiles before the clock starts (compiling is not speed).
      monitored = (monitor(state.trainable, frozen, batch, state.step)
                   if monitor and (logging_now or step == start) else None)
      state, step_metrics, feedback = train_step(state, frozen, batch)
      inputs.after_step(feedback)
      step += 1
      nonfinite.after_step(step, step_metrics)
      if step == start + 1:
        jax.block_until_ready(state.step)
        logger.reset_clock(step)
      if step % cfg.train.log_every == 0 or step == cfg.train.steps:
        scalars = {"loss": float(step_metrics["loss"]), "grad_norm": float(step_metrics["grad_norm"]),
                   "nonfinite_steps": int(step_metrics["nonfinite_total"]),
                   **stage.scalars(step_metrics, monitored, converted)}
        logger.log(step, scalars)
        history.append({"step": step, **scalars})
      if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps or preemption.requested:
        checkpointer.save(step, state, inputs.iterator, {"step": step, **inputs.meta()}, inputs.arrays(),
                          wait=preemption.requested)
      if preemption.requested:
        if is_main:
          print(f"SIGTERM: saved step {step} to {workdir / 'checkpoints'}; exiting", flush=True)
        break
    nonfinite.flush()
  finally:
    preemption.restore()
    checkpointer.close()
    logger.close()

  compiles = train_step._cache_size()  # pylint: disable=protected-access  # jit cache entries: 1 = no recompile
  memory = jax.local_devices()[0].memory_stats() or {}
  if is_main:
    peak = memory.get("peak_bytes_in_use")
    print(f"train step compiled {compiles} time(s); peak device memory "
          f"{'n/a on this backend' if peak is None else f'{peak / 2**30:.2f} GiB'}", flush=True)
  summary = {"stage": stage.name, "final_step": step, "preempted": preemption.requested, "history": history,
             "compiles": compiles, "peak_bytes": memory.get("peak_bytes_in_use"),
             "trainable": state.trainable, "frozen": frozen, "graphdef": graphdef, "converted": converted}
  if not preemption.requested:
    if is_main and type(stage).finish is not Stage.finish:
      print(f"stage {stage.name}: training done; end-of-run evaluation and export (compiles once) ...", flush=True)
    summary.update(stage.finish(RunContext(
        cfg=cfg, graphdef=graphdef, trainable=state.trainable, frozen=frozen, converted=converted,
        model_cfg=model_cfg, student=student_config(cfg), inputs=inputs, workdir=workdir, mesh=mesh,
        is_main=is_main, teacher_fingerprint=teacher_print, ema=state.ema)))
  return summary
