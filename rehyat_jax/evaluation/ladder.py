"""The evaluation ladder: how close a ReHyAt student comes to its softmax teacher, rung by rung.

Models compared with the teacher (all on the same held-out clips, noise and seeds):

* ``teacher``: full softmax, the ceiling every other model is measured against (errors 0 by definition).
* ``student``: the distilled student as exported (its converted blocks run ReHyAt).
* ``chunk-local``: the same student with every adapter zeroed (phi = 0: softmax inside the chunk windows,
  nothing across them), the baseline distillation has to beat.
* ``softmax ceiling``: a student whose own weights were finetuned (stage 2), with every block back on full
  softmax: how far the finetune alone moved the model. Absent for a student on the teacher's weights (it
  would be the teacher).

Rungs of measurement:

(a) per-block relative attention error, mean |softmax - hybrid| / mean |softmax| on the model's own q, k, v
    (the residual stream runs softmax; stage 1's held-out report measures the same thing), with the
    squared-error version and the largest single deviation beside it;
(b) per-timestep velocity error: |v - v_teacher|^2 / |v_teacher|^2 on the same noisy inputs
    x_t = (1 - s) x0 + s eps at each timestep t = 1000 s, plus each model's flow-matching MSE to eps - x0;
(c) same-seed sample agreement: the sampler of ``inference/sampler.py`` from the same noise and text,
    PSNR and SSIM against the teacher's sample (for the toy, latents are pixels in [-1, 1], clipped);
(d) temporal consistency of those samples: frame-to-frame difference statistics against the teacher's
    (``metrics.temporal_consistency``).

A ``teacher, other seed`` row gives the same sample statistics for the teacher's own sample from other
noise: the agreement two unrelated samples of one prompt have, i.e. the floor of (c) and (d).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rehyat_jax.convert import load_pretrained
from rehyat_jax.convert.student import read_student_config
from rehyat_jax.core.adapters import AdapterParam
from rehyat_jax.evaluation import metrics
from rehyat_jax.inference.sampler import make_sampler, make_schedule
from rehyat_jax.models.wan import RuntimeConfig, WanDiT
from rehyat_jax.train.objectives import NUM_TRAIN_TIMESTEPS, noised

DATA_RANGE = 2.0  # toy pixels are in [-1, 1]
DIT_DIR, STUDENT_DIR = "dit", "student_export"


@dataclasses.dataclass(frozen=True)
class LadderSettings:
  """What the ladder measures on. ``timesteps``: the noise levels of (a) and (b) (t = 1000 sigma)."""

  timesteps: tuple[int, ...] = (50, 150, 250, 350, 450, 550, 650, 750, 850, 950)
  sample_steps: int = 20
  solver: str = "unipc"
  shift: float = 3.0
  seed: int = 0
  batch_size: int = 16


@dataclasses.dataclass
class Rung:
  name: str
  model: WanDiT
  kind: str                  # teacher | student | chunk-local | softmax ceiling
  student: str = ""          # the student this rung belongs to ('' for the teacher)


def resolve_student(path: str | os.PathLike, teacher: str | os.PathLike) -> tuple[str, str]:
  """(DiT checkpoint, student export) of ``--student PATH``: a student export (on the teacher's weights), or
  a run folder holding ``dit/`` and ``student_export/`` (a student whose own weights were finetuned)."""
  path = Path(path)
  if (path / STUDENT_DIR).is_dir() and (path / DIT_DIR).is_dir():
    return str(path / DIT_DIR), str(path / STUDENT_DIR)
  return str(teacher), str(path)


def zero_adapters(model: WanDiT) -> WanDiT:
  """A copy of ``model`` with every adapter at zero (phi = 0: chunk-local softmax)."""
  graphdef, adapters, rest = nnx.split(model, AdapterParam, ...)
  return nnx.merge(graphdef, jax.tree_util.tree_map(jnp.zeros_like, adapters), rest)


def student_rungs(name: str, dit: str, export: str, teacher_dit: str, run: RuntimeConfig,
                  converted_blocks: str | None = None) -> list[Rung]:
  """student, its chunk-local baseline and (for a student with its own weights) its softmax ceiling.
  ``converted_blocks`` overrides the export's (every block owns phi, so a ranked subset fits)."""
  config = read_student_config(export)
  if converted_blocks is not None:
    config = dataclasses.replace(config, converted_blocks=converted_blocks)
  student = load_pretrained(dit, run=run, student=export, rehyat=config)
  rungs = [Rung(name, student, "student", name), Rung(f"{name} phi=0", zero_adapters(student), "chunk-local", name)]
  if Path(dit).resolve() != Path(teacher_dit).resolve():
    softmax_only = dataclasses.replace(config, converted_blocks=0)
    rungs.append(Rung(f"{name} softmax", load_pretrained(dit, run=run, student=export, rehyat=softmax_only),
                      "softmax ceiling", name))
  return rungs


# Compiled functions per model structure (graphdef): a student and its phi = 0 copy share one compile.
_COMPILED: dict = {}


def _compiled(kind: str, graphdef, build):
  key = (kind, graphdef)
  if key not in _COMPILED:
    _COMPILED[key] = build()
  return _COMPILED[key]


def _call(model: WanDiT):
  graphdef, state = nnx.split(model)
  forward = _compiled("forward", graphdef, lambda: jax.jit(lambda state, x, t, c: nnx.merge(graphdef, state)(x, t, c)))
  return lambda x, t, c: forward(state, x, t, c)


def _attention_error_hook(attn, x, rope, geometry, converted):
  """Attention hook: the softmax output passed on (so the residual stream is the model's softmax one, as in
  stage 1), and per sample the statistics of hybrid - softmax on the same q, k, v, zero where not converted."""
  q, k, v, phi_inputs = attn.qkv(x, rope)
  teacher = attn.softmax(q, k, v)
  reference = teacher.astype(jnp.float32)
  mean = lambda t: jnp.mean(t, axis=(1, 2, 3))          # [B]

  def errors():
    diff = attn.hybrid(q, k, v, phi_inputs, geometry).astype(jnp.float32) - reference
    return {"l1": mean(jnp.abs(diff)), "sq": mean(jnp.square(diff)), "max": jnp.max(jnp.abs(diff), axis=(1, 2, 3))}

  def none():
    zero = jnp.zeros((x.shape[0],), jnp.float32)
    return {"l1": zero, "sq": zero, "max": zero}

  if converted is True:
    stats = errors()
  elif converted is False:
    stats = none()
  else:
    stats = jax.lax.cond(converted, errors, none)
  return attn.output(teacher), {**stats, "abs": mean(jnp.abs(reference)), "teacher_sq": mean(jnp.square(reference))}


def _block_stats(model: WanDiT):
  graphdef, state = nnx.split(model)
  stats = _compiled("block_stats", graphdef, lambda: jax.jit(
      lambda state, x, t, c: nnx.merge(graphdef, state).forward_with_hook(x, t, c, _attention_error_hook)[1]))
  return lambda x, t, c: stats(state, x, t, c)


def _batches(n: int, size: int):
  return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def noisy_inputs(clips: np.ndarray, settings: LadderSettings) -> tuple[np.ndarray, np.ndarray]:
  """[T, N, ...] noisy inputs for every timestep of ``settings`` and the [N, ...] noise they share."""
  noise = np.asarray(jax.random.normal(jax.random.key(settings.seed + 101), clips.shape, jnp.float32))
  sigmas = np.asarray(settings.timesteps, np.float32) / NUM_TRAIN_TIMESTEPS
  x_t = np.stack([np.asarray(noised(jnp.asarray(clips), jnp.asarray(noise), jnp.full((len(clips),), s)))
                  for s in sigmas])
  return x_t, noise


def velocity_predictions(model: WanDiT, x_t: np.ndarray, texts: np.ndarray, settings: LadderSettings) -> np.ndarray:
  """[T, N, ...] flow predictions at every timestep."""
  call = _call(model)
  out = np.zeros_like(x_t)
  for i, t in enumerate(settings.timesteps):
    for sl in _batches(x_t.shape[1], settings.batch_size):
      n = sl.stop - sl.start
      out[i, sl] = np.asarray(call(jnp.asarray(x_t[i, sl]), jnp.full((n,), float(t)), jnp.asarray(texts[sl])))
  return out


def attention_errors(model: WanDiT, x_t: np.ndarray, texts: np.ndarray, settings: LadderSettings
                     ) -> dict[str, np.ndarray]:
  """[T, L] per timestep and block (0 where a block is not converted): ``relative_l1`` mean |hybrid - softmax|
  / mean |softmax| (stage 1's report), ``relative_l2`` |hybrid - softmax|^2 / |softmax|^2, and ``max_abs``
  the largest |hybrid - softmax| of any entry over the clips (a rare blow-up hides in the means)."""
  stats = _block_stats(model)
  out = {"relative_l1": [], "relative_l2": [], "max_abs": []}
  for i, t in enumerate(settings.timesteps):
    parts = []
    for sl in _batches(x_t.shape[1], settings.batch_size):
      n = sl.stop - sl.start
      parts.append(jax.device_get(stats(jnp.asarray(x_t[i, sl]), jnp.full((n,), float(t)), jnp.asarray(texts[sl]))))
    cat = {k: np.concatenate([np.asarray(p[k]) for p in parts], axis=1) for k in parts[0]}   # [L, N]
    out["relative_l1"].append(metrics.relative_attention_error(cat["l1"], cat["abs"]))
    out["relative_l2"].append(metrics.relative_attention_error(cat["sq"], cat["teacher_sq"]))
    out["max_abs"].append(cat["max"].max(axis=1))
  return {k: np.stack(v) for k, v in out.items()}


def make_model_sampler(model: WanDiT, settings: LadderSettings):
  """noise [N, ...], texts [N, L, D] -> final samples, through the project's sampler (``make_sampler``; no
  guidance: the toy condition has no negative prompt), in batches of ``settings.batch_size``."""
  schedule = make_schedule(settings.solver, settings.sample_steps, settings.shift)
  sampler = make_sampler(model, schedule, solver=settings.solver, guidance=None)

  def run(noise: np.ndarray, texts: np.ndarray) -> np.ndarray:
    out = [np.asarray(sampler(jnp.asarray(noise[sl]), jnp.asarray(texts[sl]), jnp.asarray(texts[sl])))
           for sl in _batches(len(noise), settings.batch_size)]
    return np.concatenate(out)

  return run


def evaluate_ladder(teacher: WanDiT, rungs: list[Rung], clips: np.ndarray, texts: np.ndarray,
                    settings: LadderSettings = LadderSettings(), chunk_frames: int | None = None,
                    progress=print) -> dict[str, Any]:
  """Every measurement of every rung; returns a JSON-able dict plus the sample arrays under ``"arrays"``.

  ``clips`` [N, C, F, H, W] held-out clean latents and ``texts`` [N, L, D] their conditions.
  ``chunk_frames``: the chunking whose boundaries (d) inspects (default: the first student's).
  """
  progress = progress or (lambda _: None)
  if chunk_frames is None:
    chunk_frames = next((r.model.rehyat.chunk_frames for r in rungs if r.model.rehyat is not None), 1)
  clips, texts = np.asarray(clips, np.float32), np.asarray(texts, np.float32)
  x_t, flow_noise = noisy_inputs(clips, settings)
  target = flow_noise - clips                                   # the flow every prediction aims at, any t
  sample_noise = np.asarray(jax.random.normal(jax.random.key(settings.seed), clips.shape, jnp.float32))
  other_noise = np.asarray(jax.random.normal(jax.random.key(settings.seed + 1), clips.shape, jnp.float32))

  progress("teacher: velocities and samples")
  v_teacher = velocity_predictions(teacher, x_t, texts, settings)
  pixels = lambda s: np.clip(s, -1.0, 1.0)
  teacher_sampler = make_model_sampler(teacher, settings)
  s_teacher = pixels(teacher_sampler(sample_noise, texts))
  s_other = pixels(teacher_sampler(other_noise, texts))
  per_t = lambda f: [float(np.mean(f(i))) for i in range(len(settings.timesteps))]

  def sample_metrics(s):
    out = {"psnr": metrics.psnr(s, s_teacher, DATA_RANGE), "ssim": metrics.ssim(s, s_teacher, DATA_RANGE),
           **metrics.temporal_consistency(s, s_teacher, chunk_frames)}
    return {k: float(np.mean(v)) for k, v in out.items()}, out

  num_layers = teacher.cfg.num_layers
  teacher_fm = per_t(lambda i: metrics.mse(v_teacher[i], target))
  results = {"settings": dataclasses.asdict(settings), "num_clips": int(len(clips)), "chunk_frames": chunk_frames,
             "rungs": [], "frame_differences": {}}
  samples_by_rung = {"teacher": s_teacher, "teacher, other seed": s_other}
  results["rungs"].append({
      "name": "teacher", "kind": "teacher", "student": "", "converted": [False] * num_layers,
      "attention_error": [[0.0] * num_layers for _ in settings.timesteps],
      "attention_error_l2": [[0.0] * num_layers for _ in settings.timesteps],
      "velocity_error": [0.0] * len(settings.timesteps), "flow_matching_mse": teacher_fm,
      "samples": {"psnr": float("inf"), "ssim": 1.0, "motion_ratio": 1.0, "motion_error": 0.0, "boundary_jump": 1.0}})
  other_summary, other_per_clip = sample_metrics(s_other)
  results["rungs"].append({"name": "teacher, other seed", "kind": "floor", "student": "", "samples": other_summary,
                           "per_clip": {k: v.tolist() for k, v in other_per_clip.items()}})
  for rung in rungs:
    progress(f"{rung.name}: attention errors, velocities and samples")
    converted = list(rung.model.converted)
    if rung.model.rehyat is not None and any(converted):
      attention = attention_errors(rung.model, x_t, texts, settings)
    else:
      attention = {k: np.zeros((len(settings.timesteps), num_layers)) for k in ("relative_l1", "relative_l2", "max_abs")}
    v = velocity_predictions(rung.model, x_t, texts, settings)
    s = pixels(make_model_sampler(rung.model, settings)(sample_noise, texts))
    samples_by_rung[rung.name] = s
    summary, per_clip = sample_metrics(s)
    results["rungs"].append({
        "name": rung.name, "kind": rung.kind, "student": rung.student, "converted": converted,
        "attention_error": attention["relative_l1"].tolist(),
        "attention_error_l2": attention["relative_l2"].tolist(), "attention_max_abs": attention["max_abs"].tolist(),
        "velocity_error": per_t(lambda i: metrics.relative_mse(v[i], v_teacher[i])),
        "flow_matching_mse": per_t(lambda i: metrics.mse(v[i], target)),
        "samples": summary, "per_clip": {k: val.tolist() for k, val in per_clip.items()}})
  for name, s in samples_by_rung.items():
    results["frame_differences"][name] = metrics.frame_differences(s).mean(axis=0).tolist()
  results["arrays"] = {"samples": samples_by_rung, "clips": clips}
  return results


def mean_attention_error(rung: dict, key: str = "attention_error") -> float:
  """Mean over converted blocks and timesteps of (a) (``key``: which error); nan where no block is converted."""
  converted = np.asarray(rung.get("converted", []), bool)
  if not converted.any():
    return float("nan")
  return float(np.asarray(rung[key])[:, converted].mean())
