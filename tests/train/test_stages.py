"""Stages and the self-describing student export.

- The distillation objective reaches the model only through ``WanDiT.forward_with_hook``: the
  residual stream stays the teacher's, only converted blocks measure an error, only their phi
  get a gradient.
- A student export (adapters + student.json) loads with no settings re-typed, in either layer
  layout and precision, and refuses another teacher, another student and a legacy phi folder
  with messages that name the problem.
- Stage 2 starts from a stage-1 export and rejects one trained as another student.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import tiny
from rehyat_jax.attention.config import RehyatConfig
from rehyat_jax.attention.feature_maps import FeatureMapConfig
from rehyat_jax.convert import convert_wan_checkpoint, load_pretrained
from rehyat_jax.convert.random_checkpoint import make_random_checkpoint
from rehyat_jax.convert.student import (StudentExportError, export_student, read_student_config,
                                        restore_adapters, teacher_fingerprint)
from rehyat_jax.core.adapters import AdapterParam
from rehyat_jax.models.config import WAN_TINY
from rehyat_jax.models.params import canonical_params, load_params
from rehyat_jax.models.wan import RuntimeConfig, WanDiT
from rehyat_jax.train.errors import ConfigError
from rehyat_jax.train.loop import run
from rehyat_jax.train.setup import build_model
from rehyat_jax.train.stages import STAGES, Stage
from rehyat_jax.train.stages.distill import distill_forward

SMALL_PHI = FeatureMapConfig(hidden=8, feature_dim=4, init_scale=0.5)
STUDENT = RehyatConfig(chunk_frames=2, overlap_frames=1, feature_map=SMALL_PHI)


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def inputs(frames, batch=2, h=4, w=6, seed=0):
  rng = np.random.default_rng(seed)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  return (f32(rng.standard_normal((batch, WAN_TINY.in_dim, frames, h, w))), f32(rng.uniform(0, 1000, (batch,))),
          f32(rng.standard_normal((batch, WAN_TINY.text_len, WAN_TINY.text_dim))))


def random_tree(seed=0, scale=0.3):
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda a: (rng.standard_normal(a.shape) * scale).astype(np.float32),
                                canonical_params(WanDiT(WAN_TINY, rngs=nnx.Rngs(0))))


def test_stages_registry_names_each_stage_once():
  assert set(STAGES) == {"distill", "finetune"}
  assert all(issubclass(stage, Stage) and stage.name == name for name, stage in STAGES.items())


@pytest.mark.parametrize("scan_layers", [True, False])
def test_distill_hook_follows_the_teacher_and_measures_each_block(scan_layers):
  tree = random_tree()
  teacher = WanDiT(WAN_TINY, RuntimeConfig(scan_layers=scan_layers), rngs=nnx.Rngs(0))
  load_params(teacher, tree)
  args = inputs(4)
  model = WanDiT(WAN_TINY, RuntimeConfig(scan_layers=scan_layers),
                 RehyatConfig(chunk_frames=1, converted_blocks=(1,), feature_map=SMALL_PHI), rngs=nnx.Rngs(1))
  load_params(model, tree)
  flow, stats = distill_forward(model, *args)
  assert rel_err(flow, teacher(*args)) <= 1e-6  # the residual stream is the teacher's
  l1 = np.asarray(stats["l1"])
  assert l1.shape == (WAN_TINY.num_layers, 2) and (l1[0] == 0).all() and (l1[1] > 0).all()
  # only phi of the converted block gets a gradient, and it is the gradient of that block's L1
  graphdef, phi, rest = nnx.split(model, AdapterParam, ...)
  loss = lambda phi, rest: jnp.sum(distill_forward(nnx.merge(graphdef, phi, rest), *args)[1]["l1"])
  grads = jax.grad(loss)(phi, rest)
  g = nnx.to_pure_dict(grads)["blocks"]
  g = g["self_attn"] if scan_layers else {i: g[i]["self_attn"] for i in g}
  w1 = np.asarray(g["phi_q"]["w1"]) if scan_layers else np.stack([np.asarray(g[i]["phi_q"]["w1"]) for i in g])
  assert np.abs(w1[0]).max() == 0 and np.abs(w1[1]).max() > 0


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
  """Two converted tiny teachers with the same architecture and different random weights."""
  root = tmp_path_factory.mktemp("teachers")
  out = {}
  for seed in (0, 1):
    make_random_checkpoint(root / f"src{seed}", WAN_TINY, "original", seed=seed, progress=None)
    convert_wan_checkpoint(root / f"src{seed}", root / f"dit{seed}", progress=None)
    out[seed] = root / f"dit{seed}"
  return out


def trained_export(teachers, tmp_path, scan_layers=True):
  """A student on teacher 0 whose phi differ from any fresh init, exported."""
  model = load_pretrained(teachers[0], run=RuntimeConfig(scan_layers=scan_layers), rehyat=STUDENT, seed=3)
  state = nnx.state(model, AdapterParam)
  nnx.update(model, jax.tree_util.tree_map(lambda a: a + 0.25, state))
  directory = export_student(model, tmp_path / "student", student=model.rehyat, teacher_config=model.cfg,
                             fingerprint=teacher_fingerprint(model), scan_layers=scan_layers)
  return model, directory


@pytest.mark.parametrize("export_scanned,load_scanned", [(True, True), (True, False), (False, True)])
def test_export_loads_with_no_settings_retyped(teachers, tmp_path, export_scanned, load_scanned):
  model, directory = trained_export(teachers, tmp_path, export_scanned)
  record = json.loads((directory / "student.json").read_text())
  assert record["student"]["feature_map"] == {"kind": "mlp_power", **dataclasses.asdict(SMALL_PHI.options)}
  assert read_student_config(directory) == STUDENT
  loaded = load_pretrained(teachers[0], run=RuntimeConfig(scan_layers=load_scanned), student=directory)
  assert loaded.rehyat == STUDENT
  args = inputs(5)
  assert rel_err(loaded(*args), model(*args)) <= 1e-6
  fresh = load_pretrained(teachers[0], run=RuntimeConfig(scan_layers=load_scanned), rehyat=STUDENT, seed=3)
  assert rel_err(fresh(*args), model(*args)) > 1e-3  # the adapters really came from the export


def test_fingerprint_ignores_layout_and_storage_precision_but_not_weights(teachers):
  prints = {(scan, precision): teacher_fingerprint(load_pretrained(teachers[0], run=RuntimeConfig(
      scan_layers=scan, precision=precision))) for scan in (True, False) for precision in ("fp32", "bf16_params")}
  assert len(set(prints.values())) == 1, prints
  assert teacher_fingerprint(load_pretrained(teachers[1])) != prints[(True, "fp32")]


def test_export_refuses_another_teacher_and_another_student(teachers, tmp_path):
  _, directory = trained_export(teachers, tmp_path)
  with pytest.raises(StudentExportError, match="other teacher weights"):
    load_pretrained(teachers[1], student=directory)
  other = dataclasses.replace(STUDENT, chunk_frames=3)
  with pytest.raises(StudentExportError, match="chunk_frames: 2 vs 3"):
    load_pretrained(teachers[0], rehyat=other, student=directory)
  # a ranked subset of blocks is a legal stage-2 student of the same export
  subset = load_pretrained(teachers[0], rehyat=dataclasses.replace(STUDENT, converted_blocks=(1,)), student=directory)
  assert subset.converted == (False, True)


def test_legacy_phi_folder_is_named_and_still_restorable(teachers, tmp_path):
  import orbax.checkpoint as ocp
  model, _ = trained_export(teachers, tmp_path)
  legacy = tmp_path / "legacy"
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(legacy / "phi", nnx.to_pure_dict(nnx.state(model, AdapterParam)))
  checkpointer.wait_until_finished()
  (legacy / "phi.json").write_text('{"leaves": 8}')
  with pytest.raises(StudentExportError, match="from before student exports carried their config"):
    read_student_config(legacy)
  with pytest.raises(StudentExportError, match="is not a student export"):
    read_student_config(tmp_path)
  fresh = load_pretrained(teachers[0], rehyat=STUDENT, seed=3)
  restore_adapters(legacy, fresh)
  args = inputs(3)
  assert rel_err(fresh(*args), model(*args)) <= 1e-6


def test_stage2_starts_from_the_stage1_export_and_rejects_another_student(tmp_path):
  stage1 = tiny.get_config("distill")
  stage1.train.steps, stage1.train.log_every, stage1.workdir = 2, 1, str(tmp_path / "s1")
  summary = run(stage1)
  export = summary["student_export"]
  assert read_student_config(export) == RehyatConfig.from_dict(stage1.rehyat.to_dict())
  stage2 = tiny.get_config("finetune")
  stage2.model.student = export
  model = build_model(stage2)
  exported = jax.tree_util.tree_leaves(summary["trainable"])
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(nnx.state(model, AdapterParam)), exported))
  stage2.rehyat.feature_map.hidden = 8
  with pytest.raises(ConfigError, match="rehyat.feature_map.hidden: 32 vs 8"):
    build_model(stage2)


def test_stage1_with_the_frozen_teacher_stored_in_bf16_is_the_same_run(teachers, tmp_path):
  # The recipes' stage 1 stores the frozen teacher's matmul weights in bf16 (precision 'bf16_params',
  # half of 14B's 57 GB): those matmuls run in bf16 under 'bf16' too, and phi stays float32, so every
  # loss and every trained phi value must be identical, not merely close.
  runs = {}
  for precision in ("bf16", "bf16_params"):
    cfg = tiny.get_config("distill")
    cfg.model.checkpoint = str(teachers[0])
    cfg.model.precision = precision
    cfg.train.steps, cfg.train.log_every, cfg.train.checkpoint_every = 3, 1, 1000
    cfg.workdir = str(tmp_path / precision)
    runs[precision] = run(cfg)
  frozen_dtypes = {str(a.dtype) for a in jax.tree_util.tree_leaves(runs["bf16_params"]["frozen"])}
  assert "bfloat16" in frozen_dtypes
  assert [h["loss"] for h in runs["bf16"]["history"]] == [h["loss"] for h in runs["bf16_params"]["history"]]
  phi = [jax.tree_util.tree_leaves(runs[p]["trainable"]) for p in ("bf16", "bf16_params")]
  assert all(a.dtype == jnp.float32 for a in phi[1])
  for a, b in zip(*phi):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
