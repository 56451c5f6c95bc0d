"""Training on CPU: frozen masks, sharded and multi-process equivalence, kill-and-resume, bad input."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from configs import tiny
from rehyat_jax.core.adapters import AdapterParam
from rehyat_jax.data.builders import write_prompt_dataset
from rehyat_jax.models.config import WAN_TINY
from rehyat_jax.train.checkpointing import CheckpointMismatch
from rehyat_jax.train.config_checks import ConfigError, check_config
from rehyat_jax.train.loop import run
from rehyat_jax.train.setup import build_model

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("tiny_run.py")
QUIET = {"train.log_every": 1, "train.checkpoint_every": 1000}


def config(stage="distill", **overrides):
  cfg = tiny.get_config(stage)
  for dotted, value in {**QUIET, **overrides}.items():
    node = cfg
    *parents, leaf = dotted.split(".")
    for name in parents:
      node = node[name]
    node[leaf] = value
  return cfg


def run_script(stage, overrides, *, devices=1, env=None, timeout=600):
  environ = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
                 XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **(env or {}))
  proc = subprocess.run([sys.executable, str(SCRIPT), stage, json.dumps({**QUIET, **overrides})],
                        capture_output=True, text=True, env=environ, timeout=timeout, cwd=REPO)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  assert proc.returncode == 0 and lines, proc.stderr[-4000:]
  return json.loads(lines[0][7:])


def flat(state):
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(state)}


def test_stage1_trains_phi_only_and_frozen_params_are_bit_identical(tmp_path):
  cfg = config(**{"train.steps": 3, "workdir": str(tmp_path)})
  initial = build_model(cfg)
  summary = run(cfg)
  assert summary["compiles"] == 1  # explicit shardings + donation: no recompile after step 0
  before_frozen = flat(nnx.split(initial, AdapterParam, ...)[2])
  after_frozen = flat(summary["frozen"])
  assert before_frozen.keys() == after_frozen.keys() and len(after_frozen) > 20
  for name, value in before_frozen.items():
    np.testing.assert_array_equal(after_frozen[name], value, err_msg=name)
  before_phi, after_phi = flat(nnx.state(initial, AdapterParam)), flat(summary["trainable"])
  assert before_phi.keys() == after_phi.keys()
  assert any(not np.array_equal(before_phi[k], after_phi[k]) for k in before_phi)


def test_stage1_report_measures_each_blocks_output_effect(tmp_path):
  cfg = config(**{"train.steps": 2, "workdir": str(tmp_path), "train.block_output_errors": True})
  summary = run(cfg)
  effect = summary["block_report"]["output_error"]
  written = json.loads((tmp_path / "per_block_error.json").read_text())
  assert len(effect) == len(written["converted"]) == WAN_TINY.num_layers
  np.testing.assert_allclose(written["output_error"], effect, rtol=1e-6)
  assert all(np.isfinite(effect)) and min(effect) > 0   # every converted block changes the prediction a little
  assert "output error, this block alone" in (tmp_path / "per_block_error.md").read_text()


def test_stage2_trainable_filter_is_respected(tmp_path):
  cfg = config("finetune", **{"train.steps": 2, "workdir": str(tmp_path), "train.trainable": "ffn"})
  initial = flat(nnx.state(build_model(cfg), nnx.Param))
  summary = run(cfg)
  trained = flat(summary["trainable"])
  assert trained and all("ffn" in name for name in trained)
  assert all(not np.array_equal(trained[k], initial[k]) for k in trained if k.endswith("kernel']"))
  for name, value in flat(summary["frozen"]).items():
    np.testing.assert_array_equal(value, initial[name], err_msg=name)


@pytest.fixture(scope="module")
def single_device_losses(tmp_path_factory):
  work = tmp_path_factory.mktemp("single")
  return run_script("distill", {"train.steps": 3, "train.global_batch_size": 8, "workdir": str(work),
                                "mesh.data": 1})["losses"]


def test_sharded_meshes_match_one_device(tmp_path, single_device_losses):
  """8 simulated CPU devices; float32 reductions in another order: losses agree to 1e-5 relative."""
  for data, fsdp, tensor in ((8, 1, 1), (2, 4, 1), (2, 2, 2)):
    result = run_script("distill", {"train.steps": 3, "train.global_batch_size": 8,
                                    "workdir": str(tmp_path / f"m{data}{fsdp}{tensor}"),
                                    "mesh.data": data, "mesh.fsdp": fsdp, "mesh.tensor": tensor}, devices=8)
    np.testing.assert_allclose(result["losses"], single_device_losses, rtol=1e-5, err_msg=f"{(data, fsdp, tensor)}")


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_on_loopback_match_single_process(tmp_path, single_device_losses):
  port = _free_port()
  environ = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
                 XLA_FLAGS="--xla_force_host_platform_device_count=4")
  procs = []
  for pid in range(2):
    overrides = {**QUIET, "train.steps": 3, "train.global_batch_size": 8, "workdir": str(tmp_path / "w"),
                 "mesh.data": 2, "mesh.fsdp": 4, "mesh.coordinator_address": f"127.0.0.1:{port}",
                 "mesh.num_processes": 2, "mesh.process_id": pid}
    procs.append(subprocess.Popen([sys.executable, str(SCRIPT), "distill", json.dumps(overrides)], cwd=REPO,
                                  env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  results = []
  for proc in procs:
    out, err = proc.communicate(timeout=600)
    lines = [l for l in out.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, err[-4000:]
    results.append(json.loads(lines[0][7:]))
  assert results[0]["sha"] == results[1]["sha"]
  np.testing.assert_allclose(results[0]["losses"], single_device_losses, rtol=1e-5)


def prompt_dataset(directory) -> str:
  """A tiny prompt dataset (random text embeddings of the tiny DiT's shape) with its negative prompt."""
  rng = np.random.default_rng(0)
  text = lambda rows: rng.standard_normal((rows, WAN_TINY.text_dim)).astype(np.float32)
  write_prompt_dataset(directory, [{"prompt": f"prompt {i}", "text_embedding": text(1 + i % WAN_TINY.text_len)}
                                   for i in range(12)], text_shape=(WAN_TINY.text_len, WAN_TINY.text_dim),
                       negative={"prompt": "", "text_embedding": text(3)})
  return str(directory)  # the writer's out folder, as a user passes it


def test_sigterm_then_resume_is_bitwise_identical(tmp_path):
  """Stage 1 on guided teacher trajectories of a prompt dataset (the most state to restore: the trajectory pool,
  its solver histories and text queue, the data iterator): 20 steps straight vs SIGTERM + resume."""
  common = {"train.steps": 20, "data.source": "trajectories", "train.checkpoint_every": 4,
            "data.data_dir": prompt_dataset(tmp_path / "prompts")}
  straight = run_script("distill", {**common, "workdir": str(tmp_path / "straight")})
  workdir = tmp_path / "interrupted"
  environ = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
  proc = subprocess.Popen([sys.executable, str(SCRIPT), "distill", json.dumps({**QUIET, **common,
                                                                               "workdir": str(workdir)})],
                          cwd=REPO, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  for line in proc.stdout:
    if line.startswith("step 9/"):
      proc.send_signal(signal.SIGTERM)
      break
  out = proc.stdout.read()
  assert proc.wait(timeout=300) == 0, out[-3000:]
  first = json.loads([l for l in out.splitlines() if l.startswith("RESULT ")][0][7:])
  assert first["preempted"] and 9 <= first["final_step"] < 20
  resumed = run_script("distill", {**common, "workdir": str(workdir)})
  assert resumed["final_step"] == 20 and resumed["sha"] == straight["sha"]
  logged = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in logged] == list(range(1, 21))
  assert [r["loss"] for r in logged] == straight["losses"]


def test_checkpoint_of_another_model_is_refused_and_kept(tmp_path, monkeypatch):
  import dataclasses
  from rehyat_jax.models import config as model_config
  run(config(**{"train.steps": 2, "workdir": str(tmp_path)}))
  before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
  # another model size (3 layers instead of 2) in the same workdir
  monkeypatch.setitem(model_config.PRESETS, "tiny-3-layers", dataclasses.replace(model_config.WAN_TINY, num_layers=3))
  with pytest.raises(CheckpointMismatch, match=r"model: checkpoint .*num_layers.{0,3}: 2"):
    run(config(**{"train.steps": 4, "workdir": str(tmp_path), "model.preset": "tiny-3-layers"}))
  with pytest.raises(CheckpointMismatch, match="feature_map"):
    run(config(**{"train.steps": 4, "workdir": str(tmp_path), "rehyat.feature_map.hidden": 8}))
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before


@pytest.mark.parametrize("overrides,message", [
    ({"rehyat.chunk_frames": 9}, "rehyat.chunk_frames=9 must be smaller than the 9 latent frames"),
    ({"mesh.data": 3}, "mesh: data\\*fsdp\\*tensor = 3 but there are 1 devices"),
    ({"train.global_batch_size": 3, "mesh.data": -1}, None),
    ({"rehyat.converted_blocks": "0,5"}, "unknown block ids \\[5\\]"),
    ({"stage": "pretrain"}, "stage must be one of"),
    ({"data.source": "latents"}, "needs data.data_dir"),
    ({"data.source": "trajectories"}, "data.source='trajectories' needs data.data_dir .*data.source='synthetic'"),
    ({"data.source": "trajectories", "data.data_dir": "d", "train.global_batch_size": 3, "mesh.data": 1},
     "global_batch_size=3 must be even with guidance"),
    ({"data.source": "trajectories", "data.data_dir": "d", "data.trajectory_pool": 1}, "trajectory_pool=1 is smaller"),
    ({"data.source": "trajectories", "data.data_dir": "d", "data.trajectory_solver": "dpm"}, "trajectory_solver"),
    ({"train.max_nonfinite_steps": 0}, "train.max_nonfinite_steps must be >= 1"),
    ({"train.trainable": "all"}, "train.trainable must be 'adapters' in stage 1"),
    ({"rehyat.feature_map.kind": "cosine"}, "unknown feature map kind 'cosine'"),
    ({"model.window_backend": "triton"}, "model: .*window_backend"),
    ({"model.hybrid_form": "recurrent", "rehyat.causal": False}, "needs rehyat.causal=True"),
])
def test_config_errors_name_the_field(overrides, message):
  cfg = config(**overrides)
  if message is None:
    check_config(cfg, num_devices=1)  # valid: batch 3 on one device
    with pytest.raises(ConfigError, match="global_batch_size=3 is not divisible by the 2 batch shards"):
      check_config(cfg, num_devices=2)
    return
  with pytest.raises(ConfigError, match=message):
    check_config(cfg, num_devices=1)


def test_sequence_axis_config_errors():
  """mesh.sequence > 1: the frames must split into whole chunks per device, and only the parallel form splits."""
  # tiny: 9 latent frames, chunk_frames=2
  with pytest.raises(ConfigError, match=r"the 9 latent frames must be a multiple of devices x chunk_frames = 2 x 2 = 4"):
    check_config(config(**{"mesh.sequence": 2}), num_devices=2)
  check_config(config(**{"mesh.sequence": 2, "data.latent_shape": (8, 8, 12)}), num_devices=2)
  with pytest.raises(ConfigError, match="mesh.sequence=2 splits the frames of model.hybrid_form='parallel' only"):
    check_config(config(**{"mesh.sequence": 2, "data.latent_shape": (8, 8, 12), "model.hybrid_form": "reference"}),
                 num_devices=2)


def test_missing_dataset_is_a_clear_error(tmp_path):
  cfg = config("finetune", **{"data.source": "latents", "data.data_dir": str(tmp_path / "nope"),
                              "workdir": str(tmp_path / "w")})
  with pytest.raises(ConfigError, match="data.data_dir=.*nope.*does not exist"):
    run(cfg)


def test_fsdp_with_the_sequence_axis_matches_one_device(tmp_path):
  """The 14B stage-2 layout in miniature: weights split over fsdp, every sample's frames over the sequence
  axis (the whole DiT, not one attention layer), on 4 simulated devices; losses as on one device."""
  common = {"train.steps": 3, "train.global_batch_size": 2, "data.latent_shape": [8, 8, 12]}  # Tc=2: 2 x 2 x 2
  one = run_script("finetune", {**common, "workdir": str(tmp_path / "one"), "mesh.data": 1})
  for data, fsdp, sequence in ((1, 2, 2), (2, 1, 2)):
    split = run_script("finetune", {**common, "workdir": str(tmp_path / f"m{data}{fsdp}{sequence}"), "mesh.data": data,
                                    "mesh.fsdp": fsdp, "mesh.sequence": sequence}, devices=4)
    np.testing.assert_allclose(split["losses"], one["losses"], rtol=1e-5, err_msg=f"{(data, fsdp, sequence)}")
