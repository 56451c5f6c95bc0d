"""Stage 1: block-wise attention distillation (docs/method.md §5). Only the adapters (phi) train.

Every converted block computes, from the same q, k, v, the teacher's softmax output (which the
block passes on, so the residual stream stays the teacher's) and its ReHyAt output, and the loss is
the mean over converted blocks of mean |softmax - hybrid|. All blocks learn from one teacher
forward, which is also the teacher's flow prediction (a sampler step of the trajectories). The
objective reaches the model only through ``WanDiT.forward_with_hook``.

At the end the run writes the held-out per-block error report (trained phi vs phi = 0) and the
self-describing student export (``<workdir>/student_export``: adapters + student.json).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rehyat_jax.convert.student import export_student
from rehyat_jax.core.adapters import AdapterParam
from rehyat_jax.data.pipeline import make_train_iterator, to_global_batch
from rehyat_jax.train import metrics as metrics_lib
from rehyat_jax.train.errors import ConfigError
from rehyat_jax.train.mesh import BATCH_AXES, replicated
from rehyat_jax.train.stages.base import RunContext, Stage

EXPORT_DIR = "student_export"


def distillation_attention(attn, x, rope, geometry, converted):
  """Attention hook: (the teacher's attention output, {"l1": [B], "teacher_abs": [B]}).

  Gradients reach only phi: q, k, v are stop-gradient for the student branch. ``converted`` may
  be a traced bool (a layer scan mixing converted and softmax blocks): "l1" is then 0 where False.
  """
  q, k, v, phi_inputs = attn.qkv(x, rope)
  teacher = attn.softmax(q, k, v)
  teacher32 = jax.lax.stop_gradient(teacher.astype(jnp.float32))
  sg = jax.lax.stop_gradient
  per_sample = lambda t: jnp.mean(t, axis=(1, 2, 3))  # [B]: per-sample stats allow timestep buckets

  def student_l1():
    student = attn.hybrid(sg(q), sg(k), sg(v), (sg(phi_inputs[0]), sg(phi_inputs[1])), geometry)
    return per_sample(jnp.abs(student.astype(jnp.float32) - teacher32))

  zeros = lambda: jnp.zeros((x.shape[0],), jnp.float32)
  if converted is True:
    l1 = student_l1()
  elif converted is False:
    l1 = zeros()
  else:
    l1 = jax.lax.cond(converted, student_l1, zeros)
  return attn.output(teacher), {"l1": l1, "teacher_abs": per_sample(jnp.abs(teacher32))}


def distill_forward(model, latents, timesteps, text):
  """(the teacher's flow prediction, {"l1": [L, B], "teacher_abs": [L, B]}) per block and sample."""
  if model.rehyat is None:
    raise ValueError("distillation needs a ReHyAt student (WanDiT(..., rehyat=RehyatConfig(...)))")
  return model.forward_with_hook(latents, timesteps, text, distillation_attention)


def distill_loss(trainable, frozen, graphdef, inputs, converted: tuple[bool, ...]):
  """(loss, aux): mean over converted blocks and samples of the per-block L1."""
  model = nnx.merge(graphdef, trainable, frozen)
  flow, stats = distill_forward(model, inputs["x_t"], inputs["timesteps"], inputs["text"])
  mask = jnp.asarray(converted, jnp.float32)[:, None]
  loss = jnp.sum(stats["l1"] * mask) / (jnp.sum(mask) * stats["l1"].shape[1])
  return loss, {"block_l1": stats["l1"], "block_teacher_abs": stats["teacher_abs"], "flow": flow}


def zero_adapters(trainable):
  """Every adapter set to zero: phi = 0 is chunk-local softmax, the baseline phi must beat."""
  return jax.tree_util.tree_map(jnp.zeros_like, trainable)


class DistillStage(Stage):
  name = "distill"
  sources = ("synthetic", "latents", "trajectories")
  runs_teacher_softmax = True
  backward_through_model = False
  exports_student = True

  def check_config(self, cfg, converted_mask):
    if cfg.train.trainable != "adapters":
      raise ConfigError(f"train.trainable must be 'adapters' in stage 1 (only the feature maps train), "
                        f"got {cfg.train.trainable!r}")
    if converted_mask is not None and not any(converted_mask):
      raise ConfigError("rehyat.converted_blocks selects no block: stage 1 would train nothing")

  def trainable_filter(self, cfg):
    del cfg
    return AdapterParam

  def loss(self, trainable, frozen, graphdef, inputs, converted):
    return distill_loss(trainable, frozen, graphdef, inputs, converted)

  def step_outputs(self, aux):
    return {"block_l1": aux["block_l1"], "block_teacher_abs": aux["block_teacher_abs"]}, aux["flow"]

  def make_monitor(self, graphdef, converted, prepare, replicated_sharding):
    """Per-block l1 [L, B] of the same batch with phi = 0, replicated so every process can read it."""
    def evaluate(trainable, frozen, batch, step):
      inputs = prepare(batch, step)
      return distill_loss(zero_adapters(trainable), frozen, graphdef, inputs, converted)[1]["block_l1"]
    return jax.jit(evaluate, out_shardings=replicated_sharding)

  def scalars(self, metrics, monitored, converted):
    l1 = np.asarray(metrics["block_l1"])        # [L, B]
    t = np.asarray(metrics["timesteps"])
    ids = [i for i, c in enumerate(converted) if c]
    out = {f"block{i}/l1": float(l1[i].mean()) for i in ids}
    out.update({f"l1_{k}": v for k, v in metrics_lib.bucket_means(l1[ids].mean(axis=0), t).items()})
    if monitored is not None:
      out["l1_vs_phi0"] = float(l1[ids].mean() / max(np.asarray(monitored)[ids].mean(), 1e-12))
    return out

  def finish(self, run: RunContext) -> dict:
    report = held_out_report(run)
    # Every process takes part: Orbax synchronises the hosts and writes from the primary one.
    export = export_student(run.trainable, run.workdir / EXPORT_DIR, student=run.student,
                            teacher_config=run.model_cfg, fingerprint=run.teacher_fingerprint,
                            scan_layers=run.cfg.model.scan_layers,
                            written_by={"stage": self.name, "workdir": str(run.workdir)})
    if run.is_main:
      print(f"student export (adapters + student.json): {export}", flush=True)
    return {"block_report": report, "student_export": str(export)}


def held_out_report(run: RunContext) -> dict:
  """Per-block relative attention error on held-out batches: trained phi vs phi = 0."""
  cfg = run.cfg

  def block_stats(trainable, frozen, batch, key):
    inputs = run.inputs.prepare_with_key(batch, key)
    aux = distill_loss(trainable, frozen, run.graphdef, inputs, run.converted)[1]
    return {"block_l1": aux["block_l1"], "block_teacher_abs": aux["block_teacher_abs"]}

  evaluate = jax.jit(block_stats, out_shardings=replicated(run.mesh))
  held_out = make_train_iterator(run.inputs.source, global_batch_size=cfg.train.global_batch_size,
                                 seed=cfg.data.seed + 7919, worker_count=0)
  errs, bases = [], []
  for i in range(2):
    local = next(held_out)
    batch = to_global_batch(run.inputs.held_out_fields(local, i), run.mesh, BATCH_AXES)
    key = jax.random.key(10_000 + i)
    aux = evaluate(run.trainable, run.frozen, batch, key)
    aux0 = evaluate(zero_adapters(run.trainable), run.frozen, batch, key)
    scale = np.asarray(aux["block_teacher_abs"]).mean(axis=1)
    errs.append(np.asarray(aux["block_l1"]).mean(axis=1) / scale)
    bases.append(np.asarray(aux0["block_l1"]).mean(axis=1) / scale)
  rel, base = np.mean(errs, axis=0), np.mean(bases, axis=0)
  if run.is_main:
    table = metrics_lib.block_error_report(run.workdir, rel, base, run.converted)
    print("\nper-block relative attention error on held-out inputs (|softmax - hybrid| / |softmax|):\n" + table,
          flush=True)
  return {"relative_error": rel, "baseline_error": base}
