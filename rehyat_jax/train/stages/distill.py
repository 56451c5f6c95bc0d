"""Stage 1: block-wise attention distillation (docs/method.md §5). Only the adapters (phi) train.

Every converted block computes, from the same q, k, v, the teacher's softmax output (which the
block passes on, so the residual stream stays the teacher's) and its ReHyAt output, and the loss is
the mean over converted blocks of mean |softmax - hybrid|. All blocks learn from one teacher
forward, which is also the teacher's flow prediction (a sampler step of the trajectories). The
objective reaches the model only through ``WanDiT.forward_with_hook``.

At log steps a monitor forward (``monitor_attention``) measures per block, on the step's batch: the
error of phi = 0 (chunk-local softmax, the baseline), how often the denominator guard engages
(``attention/numerics.py``: rows where n_S + phi_q . z_L < DENOMINATOR_FLOOR n_S) and the RMS of
phi_q and phi_k, so a feature map drifting towards the guarded regime shows in the logs.

At the end the run writes the held-out per-block error report (trained phi vs phi = 0) and the
self-describing student export (``<workdir>/student_export``: adapters + student.json).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rehyat_jax.attention.geometry import make_geometry
from rehyat_jax.attention.numerics import DENOMINATOR_FLOOR, clamp_features
from rehyat_jax.attention.parallel import geometry_band, linear_terms
from rehyat_jax.attention.window.band import band_windows
from rehyat_jax.attention.window.xla import key_valid_from_bounds, window_softmax
from rehyat_jax.convert.student import export_student
from rehyat_jax.core.adapters import AdapterParam
from rehyat_jax.train import metrics as metrics_lib
from rehyat_jax.train.errors import ConfigError
from rehyat_jax.train.mesh import replicated
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


MONITOR_STATS = ("phi0_l1", "guard_rate", "phi_q_rms", "phi_k_rms")


def guard_and_baseline(q, k, v, phi_q, phi_k, teacher32, *, tokens_per_frame: int, chunk_frames: int,
                       overlap_frames: int, causal: bool, chunks_per_step: int | None = None) -> dict:
  """Per sample [B]: |chunk-local softmax - teacher| ("phi0_l1": the hybrid with phi = 0 is a_S / n_S), the
  fraction of (query, head) rows where the denominator guard engages, and the RMS of the clamped phi.

  The softmax window runs chunk by chunk (``chunks_per_step`` at a time), forward only, so its score memory
  is one group's whatever the model's window backend."""
  geometry = make_geometry(q.shape[1], tokens_per_frame=tokens_per_frame, chunk_frames=chunk_frames,
                           overlap_frames=overlap_frames)
  phi_q, phi_k = clamp_features(phi_q), clamp_features(phi_k)
  q_chunks, k_windows, v_windows, key_bounds = band_windows(q, k, v, geometry_band(geometry), 0)
  key_valid = key_valid_from_bounds(key_bounds, k_windows.shape[2])

  def one_chunk(args):
    q_c, k_c, v_c, valid_c = args
    a_s, n_s = window_softmax(q_c[:, None], k_c[:, None], v_c[:, None], valid_c[None])
    return a_s[:, 0], n_s[:, 0]

  chunk_major = lambda t: jnp.swapaxes(t, 0, 1)
  a_s, n_s = jax.lax.map(one_chunk, (chunk_major(q_chunks), chunk_major(k_windows), chunk_major(v_windows),
                                     key_valid), batch_size=chunks_per_step or 1)
  a_s, n_s = chunk_major(a_s), chunk_major(n_s)                     # [B, C, Tq, H, D], [B, C, Tq, H]
  _, lin_den = linear_terms(phi_q, phi_k, v, geometry, causal)     # [B, C, Tq, H]
  b, n, h, d = q.shape
  tokens = lambda t: t.reshape(b, -1, *t.shape[3:])[:, :n]          # chunk-major -> [B, N, ...], padding dropped
  local = tokens(a_s / n_s[..., None])
  guarded = tokens((n_s + lin_den < DENOMINATOR_FLOOR * n_s).astype(jnp.float32))
  rms = lambda t: jnp.sqrt(jnp.mean(jnp.square(t.astype(jnp.float32)), axis=(1, 2, 3)))
  return {"phi0_l1": jnp.mean(jnp.abs(local - teacher32), axis=(1, 2, 3)), "guard_rate": jnp.mean(guarded, axis=(1, 2)),
          "phi_q_rms": rms(phi_q), "phi_k_rms": rms(phi_k)}


def monitor_attention(attn, x, rope, geometry, converted):
  """Attention hook of the monitor: the teacher's attention output, and ``guard_and_baseline`` per sample
  (zeros for a block that is not converted)."""
  q, k, v, phi_inputs = attn.qkv(x, rope)
  teacher = attn.softmax(q, k, v)
  r = attn.rehyat

  def stats():
    return guard_and_baseline(q, k, v, *attn.features(phi_inputs),
                              teacher.astype(jnp.float32), tokens_per_frame=geometry.tokens_per_frame,
                              chunk_frames=r.chunk_frames, overlap_frames=r.overlap_frames, causal=r.causal,
                              chunks_per_step=attn.window_chunks_per_step)

  zeros = lambda: {name: jnp.zeros((x.shape[0],), jnp.float32) for name in MONITOR_STATS}
  if converted is True:
    out = stats()
  elif converted is False:
    out = zeros()
  else:
    out = jax.lax.cond(converted, stats, zeros)
  return attn.output(teacher), out


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
    """Per block and sample [L, B] on the step's batch (before its update): ``MONITOR_STATS`` of
    ``monitor_attention``, replicated so every process can read them."""
    def evaluate(trainable, frozen, batch, step):
      inputs = prepare(batch, step)
      model = nnx.merge(graphdef, trainable, frozen)
      return model.forward_with_hook(inputs["x_t"], inputs["timesteps"], inputs["text"], monitor_attention)[1]
    return jax.jit(evaluate, out_shardings=replicated_sharding)

  def scalars(self, metrics, monitored, converted):
    l1 = np.asarray(metrics["block_l1"])        # [L, B]
    t = np.asarray(metrics["timesteps"])
    ids = [i for i, c in enumerate(converted) if c]
    out = {f"block{i}/l1": float(l1[i].mean()) for i in ids}
    out.update({f"l1_{k}": v for k, v in metrics_lib.bucket_means(l1[ids].mean(axis=0), t).items()})
    if monitored is not None:
      stats = {name: np.asarray(value) for name, value in monitored.items()}
      out["l1_vs_phi0"] = float(l1[ids].mean() / max(stats["phi0_l1"][ids].mean(), 1e-12))
      out["guard_rate_max"] = float(stats["guard_rate"][ids].mean(axis=1).max())
      for i in ids:
        out.update({f"block{i}/{name}": float(stats[name][i].mean())
                    for name in ("guard_rate", "phi_q_rms", "phi_k_rms")})
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
  """Per-block relative attention error on the input stream's held-out inputs (held-out teacher trajectories
  for data.source='trajectories', at every sampler step): trained phi vs phi = 0."""

  def block_stats(trainable, frozen, batch, key):
    inputs = run.inputs.prepare_with_key(batch, key)
    aux = distill_loss(trainable, frozen, run.graphdef, inputs, run.converted)[1]
    return {"block_l1": aux["block_l1"], "block_teacher_abs": aux["block_teacher_abs"], "flow": aux["flow"]}

  evaluate = jax.jit(block_stats, out_shardings=replicated(run.mesh))
  output_errors = None
  if run.cfg.train.block_output_errors:
    output_errors = jax.jit(lambda *a: block_output_errors(run, *a), out_shardings=replicated(run.mesh))
  errs, bases, effects = [], [], []

  def measure(batch, key):
    aux = evaluate(run.trainable, run.frozen, batch, key)
    aux0 = evaluate(zero_adapters(run.trainable), run.frozen, batch, key)
    scale = np.asarray(aux["block_teacher_abs"]).mean(axis=1)
    errs.append(np.asarray(aux["block_l1"]).mean(axis=1) / scale)
    bases.append(np.asarray(aux0["block_l1"]).mean(axis=1) / scale)
    if output_errors is not None:
      effects.append(np.asarray(output_errors(run.trainable, run.frozen, batch, key, aux["flow"])))
    return aux["flow"]  # the teacher's: a held-out trajectory advances with it

  run.inputs.held_out(measure)
  rel, base = np.mean(errs, axis=0), np.mean(bases, axis=0)
  effect = np.mean(effects, axis=0) if effects else None
  if run.is_main:
    table = metrics_lib.block_error_report(run.workdir, rel, base, run.converted, output_error=effect)
    what = "held-out teacher trajectories" if run.cfg.data.source == "trajectories" else "held-out inputs"
    print(f"\nper-block relative attention error on {what} (|softmax - hybrid| / |softmax|):\n" + table, flush=True)
  report = {"relative_error": rel, "baseline_error": base}
  if effect is not None:
    report["output_error"] = effect
  return report


def block_output_errors(run: RunContext, trainable, frozen, batch, key, teacher_flow) -> jax.Array:
  """[num_layers]: |v_i - v_teacher|^2 / |v_teacher|^2 on the batch, v_i the flow with only block i converted
  (trained phi), ``teacher_flow`` the teacher's on the same inputs (the held-out pass computed it). One compiled
  program: the converted blocks are a run-time mask (``WanDiT.__call__``)."""
  inputs = run.inputs.prepare_with_key(batch, key)
  model = nnx.merge(run.graphdef, trainable, frozen)
  num_layers = len(run.converted)
  flow = lambda mask: model(inputs["x_t"], inputs["timesteps"], inputs["text"], converted=mask).astype(jnp.float32)
  teacher = teacher_flow.astype(jnp.float32)
  alone = lambda i: jnp.sum((flow(jnp.arange(num_layers) == i) - teacher) ** 2) / jnp.sum(teacher ** 2)
  return jax.lax.map(alone, jnp.arange(num_layers))
