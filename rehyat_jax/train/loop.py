"""One training run (either stage) from a config: build, restore, step, log, checkpoint, report."""

from __future__ import annotations

import dataclasses
import json
import signal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rehyat_jax.data.builders import LatentShapes
from rehyat_jax.data.pipeline import make_train_iterator, to_global_batch
from rehyat_jax.data.sources import SyntheticLatentSource, open_latent_source, open_prompt_source
from rehyat_jax.core import sharding as sharding_lib
from rehyat_jax.train import checkpointing, metrics as metrics_lib, step as step_lib
from rehyat_jax.train.config_checks import check_config
from rehyat_jax.train.mesh import BATCH_AXES, batch_sharding, initialize_distributed, make_mesh, replicated
from rehyat_jax.train.optimizer import make_optimizer
from rehyat_jax.train.setup import (build_model, count_params, init_train_state, state_shardings,
                                    trainable_filter)
from rehyat_jax.train.trajectories import TeacherTrajectories


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


def make_source(cfg, model_cfg):
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


def _fingerprint(cfg, model) -> dict:
  return {"model": json.dumps(model.cfg.to_dict(), sort_keys=True), "stage": cfg.stage,
          "trainable": cfg.train.trainable, "converted": list(model.converted),
          "feature_map": json.dumps(dataclasses.asdict(model.rehyat.feature_map), sort_keys=True)
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
  workdir = checkpointing.run_path(cfg.workdir)  # local or gs://
  is_main = jax.process_index() == 0
  model = build_model(cfg, mesh)
  check_config(cfg, jax.device_count(), jax.process_count(), num_layers=model.cfg.num_layers)
  if cfg.model.phi_checkpoint:
    checkpointing.restore_phi(cfg.model.phi_checkpoint, model)
  converted, model_cfg = model.converted, model.cfg
  fingerprint = _fingerprint(cfg, model)
  graphdef, trainable, frozen = nnx.split(model, trainable_filter(cfg.train.trainable), ...)
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

  source, shapes = make_source(cfg, model_cfg)
  iterator = make_train_iterator(source, global_batch_size=cfg.train.global_batch_size, seed=cfg.data.seed,
                                 worker_count=cfg.data.worker_count)
  batch_spec = batch_sharding(mesh)
  global_shape = (cfg.train.global_batch_size, *shapes.latents)

  def next_data():
    local = next(iterator)
    fields = {"text": local["text_embedding"]}
    if "latents" in local:
      fields["latents"] = local["latents"]
    return to_global_batch(fields, mesh, BATCH_AXES)

  trajectories = None
  if cfg.data.source == "trajectories":
    trajectories = TeacherTrajectories(lambda: next_data()["text"], global_shape, num_steps=cfg.data.trajectory_steps,
                                       shift=cfg.data.shift, seed=cfg.train.seed, sharding=batch_spec)
    batch_shardings = {"x_t": batch_spec, "timesteps": batch_spec, "text": batch_spec}
  else:
    batch_shardings = {"latents": batch_spec, "text": batch_spec}

  checkpointer = checkpointing.RunCheckpointer(workdir / "checkpoints", keep=cfg.train.keep_checkpoints,
                                               fingerprint=fingerprint)
  start = 0
  latest = checkpointer.latest_step()
  if latest is not None:
    arrays_like = {}
    if trajectories is not None:
      meta = checkpointer.read_meta(latest)
      if meta.get("trajectory", {}).get("active"):
        arrays_like = {"x": jax.ShapeDtypeStruct(global_shape, jnp.float32, sharding=batch_spec),
                       "text": jax.ShapeDtypeStruct((global_shape[0], model_cfg.text_len, model_cfg.text_dim),
                                                    jnp.float32, sharding=batch_spec)}
    state, arrays, meta = checkpointer.restore(latest, state, arrays_like, iterator)
    if trajectories is not None:
      trajectories.load_state_dict(meta["trajectory"], arrays)
    start = int(meta["step"])
    if is_main:
      print(f"resumed from {workdir / 'checkpoints'} step {start}", flush=True)

  train_step = step_lib.make_train_step(
      cfg.stage, graphdef, tx, converted, shift=cfg.data.shift, ema_decay=cfg.train.ema_decay, seed=cfg.train.seed,
      state_shardings=shardings, frozen_shardings=frozen_shardings, batch_shardings=batch_shardings,
      replicated=replicated(mesh))
  baseline = step_lib.make_baseline_eval(graphdef, converted, shift=cfg.data.shift, seed=cfg.train.seed,
                                         replicated=replicated(mesh)) if cfg.stage == "distill" else None
  tokens_per_step = cfg.train.global_batch_size * int(np.prod(shapes.latents[1:])) // int(
      np.prod(model_cfg.patch_size))
  logger = metrics_lib.RunLogger(workdir, total_steps=cfg.train.steps, tokens_per_step=tokens_per_step,
                                 num_devices=jax.device_count(), device_kind=jax.devices()[0].device_kind,
                                 enabled=is_main)
  logger.flops_per_step = metrics_lib.estimate_step_flops(
      model_cfg, batch=cfg.train.global_batch_size, frames=shapes.latents[1] // model_cfg.patch_size[0],
      tokens_per_frame=tokens_per_step // (cfg.train.global_batch_size * shapes.latents[1] // model_cfg.patch_size[0]),
      stage=cfg.stage, window_frames=cfg.rehyat.chunk_frames + cfg.rehyat.overlap_frames)
  if is_main:
    print(f"stage {cfg.stage}: {count_params(state.trainable):,} trainable parameters, "
          f"{count_params(frozen):,} frozen; mesh {dict(mesh.shape)}; {jax.device_count()} devices, "
          f"{jax.process_count()} processes; steps {start}..{cfg.train.steps}", flush=True)

  preemption = _Preemption()
  history = []
  step = start
  try:
    while step < cfg.train.steps:
      batch = trajectories.batch() if trajectories is not None else next_data()
      if baseline is not None and (step + 1) % cfg.train.log_every == 0:
        base_l1 = baseline(state.trainable, frozen, batch, state.step)
      else:
        base_l1 = None
      state, step_metrics, flow = train_step(state, frozen, batch)
      if trajectories is not None:
        trajectories.advance(flow)
      step += 1
      if step == start + 1:
        jax.block_until_ready(state.step)
        logger.reset_clock(step)
      if step % cfg.train.log_every == 0 or step == cfg.train.steps:
        scalars = {"loss": float(step_metrics["loss"]), "grad_norm": float(step_metrics["grad_norm"])}
        if cfg.stage == "distill":
          l1 = np.asarray(step_metrics["block_l1"])        # [L, B]
          t = np.asarray(step_metrics["timesteps"])
          for i, conv in enumerate(converted):
            if conv:
              scalars[f"block{i}/l1"] = float(l1[i].mean())
          mean_l1 = np.asarray([l1[i] for i, c in enumerate(converted) if c]).mean(axis=0)
          scalars.update({f"l1_{k}": v for k, v in metrics_lib.bucket_means(mean_l1, t).items()})
          if base_l1 is not None:
            base = np.asarray(base_l1)
            conv_idx = [i for i, c in enumerate(converted) if c]
            scalars["l1_vs_phi0"] = float(l1[conv_idx].mean() / max(base[conv_idx].mean(), 1e-12))
        logger.log(step, scalars)
        history.append({"step": step, **scalars})
      if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps or preemption.requested:
        meta = {"step": step}
        arrays = {}
        if trajectories is not None:
          meta["trajectory"] = trajectories.state_dict()
          arrays = trajectories.arrays()
        checkpointer.save(step, state, iterator, meta, arrays, wait=preemption.requested)
      if preemption.requested:
        if is_main:
          print(f"SIGTERM: saved step {step} to {workdir / 'checkpoints'}; exiting", flush=True)
        break
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
  summary = {"stage": cfg.stage, "final_step": step, "preempted": preemption.requested, "history": history,
             "compiles": compiles, "peak_bytes": memory.get("peak_bytes_in_use"),
             "trainable": state.trainable, "frozen": frozen, "graphdef": graphdef, "converted": converted}
  if cfg.stage == "distill" and not preemption.requested:
    summary["block_report"] = stage1_report(cfg, graphdef, state.trainable, frozen, converted, source, shapes,
                                            workdir, mesh, is_main)
    # Every process takes part: Orbax synchronises the hosts and writes from the primary one.
    checkpointing.export_phi(state.trainable, workdir / "phi_export")
  return summary


def stage1_report(cfg, graphdef, trainable, frozen, converted, source, shapes, workdir, mesh, is_main):
  """Per-block relative attention error on held-out synthetic/noised batches: trained phi vs phi == 0."""
  def block_stats(p, f, b, k):
    aux = step_lib.objectives.distill_loss(p, f, graphdef, step_lib.prepare_batch(b, k, cfg.data.shift), converted)[1]
    return {"block_l1": aux["block_l1"], "block_teacher_abs": aux["block_teacher_abs"]}

  evaluate = jax.jit(block_stats, out_shardings=replicated(mesh))
  held_out = make_train_iterator(source, global_batch_size=cfg.train.global_batch_size, seed=cfg.data.seed + 7919,
                                 worker_count=0)
  errs, bases = [], []
  for i in range(2):
    local = next(held_out)
    batch = to_global_batch({"latents": local["latents"], "text": local["text_embedding"]}, mesh, BATCH_AXES)
    key = jax.random.key(10_000 + i)
    aux = evaluate(trainable, frozen, batch, key)
    aux0 = evaluate(step_lib.objectives.zero_phi(trainable), frozen, batch, key)
    scale = np.asarray(aux["block_teacher_abs"]).mean(axis=1)
    errs.append(np.asarray(aux["block_l1"]).mean(axis=1) / scale)
    bases.append(np.asarray(aux0["block_l1"]).mean(axis=1) / scale)
  rel, base = np.mean(errs, axis=0), np.mean(bases, axis=0)
  if is_main:
    table = metrics_lib.block_error_report(workdir, rel, base, converted)
    print("\nper-block relative attention error on held-out inputs (|softmax - hybrid| / |softmax|):\n" + table,
          flush=True)
  return {"relative_error": rel, "baseline_error": base}
