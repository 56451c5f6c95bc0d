"""Every way a source can be wrong gives one clear CheckpointError and leaves nothing behind."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from rehyat_jax.convert import CheckpointError, convert_wan_checkpoint, storage, wan_dit
from wan_torch_fixtures import original_layout_state_dict, write_original_layout, write_safetensors


@pytest.fixture
def original_state(tiny_diffusers):
  return dict(original_layout_state_dict(tiny_diffusers[0]))


def convert_fails(src, tmp_path, match, **kwargs) -> str:
  """Converts ``src`` into tmp_path/out, expects a CheckpointError matching ``match``, checks nothing was left."""
  before = set(tmp_path.iterdir())
  with pytest.raises(CheckpointError, match=match) as info:
    convert_wan_checkpoint(src, tmp_path / "out", progress=None, **kwargs)
  assert set(tmp_path.iterdir()) == before, "conversion left files behind"
  return str(info.value)


def test_missing_key(original_state, tmp_path):
  del original_state["blocks.1.ffn.0.weight"]
  src = write_original_layout(original_state, tmp_path / "src" / "wan.safetensors")
  message = convert_fails(src, tmp_path, "1 missing key", num_heads=2)
  assert "blocks.1.ffn.0.weight  expected [32, 24]" in message


def test_unexpected_key(original_state, tmp_path):
  original_state["blocks.0.self_attn.extra.weight"] = torch.zeros(3)
  src = write_original_layout(original_state, tmp_path / "src" / "wan.safetensors")
  message = convert_fails(src, tmp_path, "1 unexpected key", num_heads=2)
  assert "blocks.0.self_attn.extra.weight  [3]" in message


def test_wrong_shape(original_state, tmp_path):
  original_state["blocks.0.self_attn.q.weight"] = torch.zeros(24, 20)
  src = write_original_layout(original_state, tmp_path / "src" / "wan.safetensors")
  message = convert_fails(src, tmp_path, "1 shape mismatch", num_heads=2)
  assert "blocks.0.self_attn.q.weight: expected [24, 24], found [24, 20]" in message


def test_all_problems_are_listed_together(tiny_diffusers, tmp_path):
  model, directory = tiny_diffusers
  state = dict(model.state_dict())
  del state["blocks.0.attn1.to_k.bias"], state["proj_out.bias"]
  state["blocks.1.ffn.net.2.weight"] = torch.zeros(24, 33)
  state["blocks.1.attn1.to_qkv.weight"] = torch.zeros(72, 24)
  src = tmp_path / "src"
  write_safetensors(state, src / "diffusion_pytorch_model.safetensors")
  shutil.copy(directory / "config.json", src)
  message = convert_fails(src, tmp_path, "does not match a Wan2.1 T2V DiT")
  assert "diffusers layout" in message
  assert "2 missing keys" in message and "blocks.0.attn1.to_k.bias" in message and "proj_out.bias" in message
  assert "1 unexpected key" in message and "blocks.1.attn1.to_qkv.weight" in message
  assert "1 shape mismatch" in message and "blocks.1.ffn.net.2.weight: expected [24, 32], found [24, 33]" in message


def test_config_json_disagreeing_with_the_tensors(tiny_diffusers, tmp_path):
  _, directory = tiny_diffusers
  src = tmp_path / "src"
  shutil.copytree(directory, src)
  config = json.loads((src / "config.json").read_text())
  (src / "config.json").write_text(json.dumps({**config, "ffn_dim": 64}))
  convert_fails(src, tmp_path, r"ffn_dim=64(.|\n)*6 shape mismatches")


def test_integer_tensor(original_state, tmp_path):
  original_state["head.modulation"] = torch.zeros(1, 2, 24, dtype=torch.int32)
  src = write_original_layout(original_state, tmp_path / "src" / "wan.safetensors")
  convert_fails(src, tmp_path, "head.modulation: I32", num_heads=2)


def test_unknown_layout(tmp_path):
  src = write_safetensors({"encoder.layer.0.weight": torch.zeros(2), "decoder.bias": torch.zeros(2)},
                          tmp_path / "src" / "other.safetensors")
  convert_fails(src, tmp_path, "unknown checkpoint layout.*decoder.bias")


def test_truncated_file(tiny_original_file, tmp_path):
  src = tmp_path / "src" / "wan.safetensors"
  src.parent.mkdir()
  src.write_bytes(tiny_original_file.read_bytes()[:-100])
  convert_fails(src, tmp_path, r"src/wan\.safetensors: truncated", num_heads=2)


@pytest.mark.parametrize("key", ["blocks.0.cross_attn.k_img.weight", "img_emb.proj.1.weight"])
def test_image_to_video_key(key, original_state, tmp_path):
  original_state[key] = torch.zeros(24, 24)
  src = write_original_layout(original_state, tmp_path / "src" / "wan.safetensors")
  convert_fails(src, tmp_path, f"image-to-video checkpoints are not supported.*{key}", num_heads=2)


def test_image_to_video_config(tiny_diffusers, tmp_path):
  _, directory = tiny_diffusers
  src = tmp_path / "src"
  shutil.copytree(directory, src)
  config = json.loads((src / "config.json").read_text())
  (src / "config.json").write_text(json.dumps({**config, "image_dim": 1280}))
  convert_fails(src, tmp_path, "image-to-video checkpoints are not supported")


def test_unknown_width_without_head_count(tiny_original_file, tmp_path):
  convert_fails(tiny_original_file, tmp_path, "cannot infer num_heads for dim=24.*num_heads=")


def test_destination_exists(tiny_diffusers, tmp_path):
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "keep.txt").write_text("mine")
  convert_fails(tiny_diffusers[1], tmp_path, "already exists.*overwrite")
  assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_unsupported_target_dtype(tiny_diffusers, tmp_path):
  convert_fails(tiny_diffusers[1], tmp_path, "unsupported target dtype 'float16'", dtype="float16")


def test_failure_while_writing_removes_the_staging_directory(tiny_diffusers, tmp_path, monkeypatch):
  def failing_save(directory, params):
    (directory / "partial").mkdir(parents=True)
    raise OSError("disk full")

  monkeypatch.setattr(storage, "save_params", failing_save)
  with pytest.raises(OSError, match="disk full"):
    convert_wan_checkpoint(tiny_diffusers[1], tmp_path / "out", progress=None)
  assert list(tmp_path.iterdir()) == []


def test_reading_something_that_is_not_converted(tmp_path):
  with pytest.raises(CheckpointError, match="not a converted Wan checkpoint"):
    wan_dit.read_converted(tmp_path)
