"""Safety of a run: non-finite steps change nothing and stop the run after train.max_nonfinite_steps in a
row; non-finite weights are never checkpointed; a damaged newest checkpoint falls back to the previous one;
the stage-1 monitor's denominator-guard rate, phi=0 error and phi magnitudes are what their definitions say
(against the float64 implementation of tests/numpy_hybrid.py)."""

from __future__ import annotations

import itertools
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

import numpy_hybrid
from configs import tiny
from rehyat_jax.train import loop as loop_lib
from rehyat_jax.train.checkpointing import RunCheckpointer
from rehyat_jax.train.errors import NonFiniteTrainingError
from rehyat_jax.train.optimizer import make_optimizer
from rehyat_jax.train.setup import init_train_state
from rehyat_jax.train.stages import Stage
from rehyat_jax.train.stages.distill import guard_and_baseline
from rehyat_jax.train.step import make_train_step


class QuadraticStage(Stage):
  """loss = scale * |w - mean(x_t)|^2 + offset: scale / x_t NaN poisons the gradient, offset inf the loss only."""

  name = "quadratic"

  def loss(self, trainable, frozen, graphdef, inputs, converted):
    del frozen, graphdef, converted
    w = trainable["w"]
    value = inputs["scale"] * jnp.sum(jnp.square(w - jnp.mean(inputs["x_t"]))) + jax.lax.stop_gradient(inputs["offset"])
    return value, {}


def test_nonfinite_step_changes_nothing_and_is_counted():
  optim = ml_collections.ConfigDict({"learning_rate": 0.1, "warmup_steps": 0, "end_learning_rate_factor": 1.0,
                                     "weight_decay": 0.0, "b1": 0.9, "b2": 0.999, "clip_norm": 1.0,
                                     "grad_accum_steps": 1})
  tx = make_optimizer(optim, 100)
  state = init_train_state({"w": jnp.arange(3.0)}, tx, ema_decay=0.5)
  replicated = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",)),
                                          jax.sharding.PartitionSpec())
  step = make_train_step(QuadraticStage(), None, tx, (), shift=1.0, ema_decay=0.5, seed=0, state_shardings=replicated,
                         frozen_shardings=replicated, batch_shardings=replicated, replicated=replicated)

  def batch(x=1.0, scale=1.0, offset=0.0):
    return {"x_t": jnp.full((2, 4), x), "timesteps": jnp.zeros((2,)), "text": jnp.zeros((2, 1, 1)),
            "scale": jnp.float32(scale), "offset": jnp.float32(offset)}

  def snapshot(s):
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves((s.trainable, s.opt_state.inner_state, s.ema))]

  state, metrics, _ = step(state, {}, batch())
  assert not bool(metrics["skipped"]) and int(metrics["nonfinite_total"]) == 0
  for number, poisoned in enumerate([batch(x=np.nan), batch(scale=np.inf), batch(offset=np.inf)], start=1):
    before = snapshot(state)
    state, metrics, _ = step(state, {}, poisoned)
    assert bool(metrics["skipped"]), poisoned
    assert (int(metrics["nonfinite_in_a_row"]), int(metrics["nonfinite_total"])) == (number, number)
    for a, b in zip(before, snapshot(state)):  # parameters, Adam moments and EMA: bit for bit
      np.testing.assert_array_equal(a, b)
  before = snapshot(state)
  state, metrics, _ = step(state, {}, batch())
  assert not bool(metrics["skipped"])
  assert (int(metrics["nonfinite_in_a_row"]), int(metrics["nonfinite_total"])) == (0, 3)
  assert not np.array_equal(before[0], np.asarray(state.trainable["w"]))  # a finite step updates again
  assert int(state.step) == 5


def small_state(seed):
  return {"w": jax.random.normal(jax.random.key(seed), (32, 32)), "count": jnp.int32(seed)}


def truncate_data(step_dir):
  for path in step_dir.joinpath("state").rglob("*"):
    if path.is_file() and path.parent.name == "d":
      os.truncate(path, path.stat().st_size // 2)


def flip_data_bytes(step_dir):
  for path in step_dir.joinpath("state").rglob("*"):
    if path.is_file() and path.parent.name == "d":
      data = bytearray(path.read_bytes())
      data[len(data) // 2] ^= 0xFF
      path.write_bytes(bytes(data))


def remove_array_store(step_dir):
  shutil.rmtree(step_dir / "state" / "ocdbt.process_0")


def garble_metadata(step_dir):
  (step_dir / "meta" / "metadata").write_text("{not json")


@pytest.mark.parametrize("damage", [truncate_data, flip_data_bytes, remove_array_store, garble_metadata])
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage):
  directory = tmp_path / "checkpoints"
  writer = RunCheckpointer(directory, keep=3, fingerprint={"run": "a"})
  for step in (1, 2, 3):
    writer.save(step, small_state(step), None, {"step": step}, {})
  writer.close()
  damage(directory / "3")
  reader = RunCheckpointer(directory, keep=3, fingerprint={"run": "a"})
  lines = []
  state, _, meta = reader.restore_newest(small_state(0), lambda meta: {}, None, report=lines.append)
  assert meta["step"] == 2
  np.testing.assert_array_equal(state["w"], small_state(2)["w"])
  assert len(lines) == 1 and "checkpoint step 3" in lines[0] and "falling back to step 2" in lines[0]
  assert (tmp_path / "checkpoints_damaged" / "3").is_dir() and not (directory / "3").exists()
  reader.save(3, small_state(4), None, {"step": 3}, {})  # the run can write that step again
  reader.close()


def test_nonfinite_weights_are_never_saved(tmp_path):
  writer = RunCheckpointer(tmp_path / "checkpoints", keep=3, fingerprint={})
  writer.save(1, small_state(1), None, {"step": 1}, {})
  bad = dict(small_state(2), w=small_state(2)["w"].at[3, 4].set(jnp.nan))
  with pytest.raises(NonFiniteTrainingError, match="not finite.*the newest is step 1"):
    writer.save(2, bad, None, {"step": 2}, {})
  writer.close()
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]


def stored_weights(workdir, step):
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(workdir / "checkpoints" / str(step) / "state")
  return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(restored["train"]["trainable"])]


def test_run_stops_after_nonfinite_steps_keeping_finite_checkpoints(tmp_path, monkeypatch, capsys):
  """Stage 2 on tiny synthetic data; the batches of steps 5.. are poisoned with NaN latents. (The loop resumes
  through ``restore_newest``, whose fallback the damage tests above cover.)"""
  cfg = tiny.get_config("finetune")
  cfg.workdir = str(tmp_path)
  cfg.data.latent_shape = (3, 4, 4)
  cfg.train.global_batch_size, cfg.train.steps, cfg.train.log_every = 2, 10, 1
  cfg.train.checkpoint_every, cfg.train.max_nonfinite_steps = 2, 3
  real_make_inputs = loop_lib.make_inputs

  def poisoned_inputs(*args):
    inputs = real_make_inputs(*args)
    clean_next, count = inputs.next, itertools.count(1)
    def next_batch():
      batch = clean_next()
      return dict(batch, latents=batch["latents"] * jnp.nan) if next(count) >= 5 else batch
    inputs.next = next_batch
    return inputs

  monkeypatch.setattr(loop_lib, "make_inputs", poisoned_inputs)
  with pytest.raises(NonFiniteTrainingError, match="stopped at step 7: 3 steps in a row.*step 6 in"):
    loop_lib.run(cfg)
  printed = capsys.readouterr().out
  for step in (5, 6, 7):
    assert f"step {step}: non-finite loss or gradient (loss nan" in printed and "update skipped" in printed
  assert "step 4: non-finite" not in printed
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [2, 4, 6]
  # the skipped steps left the weights of step 4 in checkpoint 6; steps 3-4 did train
  for a, b in zip(stored_weights(tmp_path, 4), stored_weights(tmp_path, 6)):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in zip(stored_weights(tmp_path, 2), stored_weights(tmp_path, 4)))


def test_guard_rate_baseline_and_phi_magnitude_follow_their_definitions():
  rng = np.random.default_rng(0)
  frames, tokens_per_frame, heads, head_dim, features = 5, 3, 2, 8, 4
  shape = (2, frames * tokens_per_frame, heads, head_dim)
  q, k, v = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
  # phi_q . phi_k of either sign and large: on some rows the linear branch would cancel the local softmax mass.
  phi_q = rng.uniform(-1.5, 1.0, (*shape[:3], features)).astype(np.float32)
  phi_k = rng.uniform(0.0, 1.5, (*shape[:3], features)).astype(np.float32)
  teacher = rng.standard_normal(shape).astype(np.float32)
  geometry = dict(tokens_per_frame=tokens_per_frame, chunk_frames=2, overlap_frames=1, causal=True)
  stats = jax.jit(lambda *a: guard_and_baseline(*a, **geometry, chunks_per_step=2))(q, k, v, phi_q, phi_k, teacher)

  parts = numpy_hybrid.hybrid_parts(q, k, v, phi_q, phi_k, **geometry)
  guarded = parts["n_s"] + parts["lin_den"] < numpy_hybrid.DENOMINATOR_FLOOR * parts["n_s"]   # [B, N, H]
  expected_rate = guarded.mean(axis=(1, 2))
  assert 0.05 < expected_rate.mean() < 0.95  # the case has guarded and unguarded rows
  np.testing.assert_allclose(stats["guard_rate"], expected_rate, rtol=0, atol=1e-6)
  local = parts["a_s"] / parts["n_s"][..., None]  # the hybrid with phi = 0
  np.testing.assert_allclose(stats["phi0_l1"], np.abs(local - teacher).mean(axis=(1, 2, 3)), rtol=1e-5)
  for name, phi in (("phi_q_rms", phi_q), ("phi_k_rms", phi_k)):
    np.testing.assert_allclose(stats[name], np.sqrt(np.square(phi.astype(np.float64)).mean(axis=(1, 2, 3))),
                               rtol=1e-5)
