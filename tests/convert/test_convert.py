"""End-to-end conversion of a tiny diffusers WanTransformer3DModel, in every layout the converter reads."""

from __future__ import annotations

import copy
import json
import shutil

import jax
import ml_dtypes
import numpy as np
import pytest
import torch

from rehyat_jax.convert import (convert_wan_checkpoint, detect_config, detect_layout, open_safetensors_source,
                                read_converted, restore_params, target_shapes)
from rehyat_jax.convert.wan_dit import config_fields_from_json, default_num_heads
from wan_torch_fixtures import (expected_jax_params, make_tiny_diffusers_wan, original_layout_state_dict,
                                wan_config_from_diffusers, write_original_layout)


def assert_params_equal(params, expected, dtype=np.float32):
  assert jax.tree.structure(params) == jax.tree.structure(expected)
  for (path, leaf), want in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(expected)):
    assert leaf.dtype == np.dtype(dtype), path
    assert leaf.shape == want.shape, path
    np.testing.assert_array_equal(np.asarray(leaf, np.float32), want.astype(dtype).astype(np.float32),
                                  err_msg=jax.tree_util.keystr(path))


def assert_shapes_match_config(params, cfg):
  shapes = jax.tree.map(lambda leaf: leaf.shape, params)
  assert shapes == jax.tree.map(tuple, target_shapes(cfg), is_leaf=lambda x: isinstance(x, tuple))


@pytest.mark.parametrize("fixture", ["tiny_diffusers", "tiny_diffusers_sharded"])
def test_diffusers_layout(fixture, request, tmp_path):
  model, directory = request.getfixturevalue(fixture)
  messages = []
  cfg = convert_wan_checkpoint(directory, tmp_path / "out", progress=messages.append)
  assert cfg == wan_config_from_diffusers(model)
  assert any("diffusers layout" in message for message in messages)
  read_cfg, params = read_converted(tmp_path / "out")
  assert read_cfg == cfg
  assert_shapes_match_config(params, cfg)
  assert_params_equal(params, expected_jax_params(model))
  conversion = json.loads((tmp_path / "out" / "conversion.json").read_text())
  assert conversion["layout"] == "diffusers" and conversion["num_tensors"] == 69
  assert conversion["dtype"] == "float32" and conversion["source_dtypes"] == ["F32"]


def test_diffusers_repo_root(tiny_diffusers, tmp_path):
  model, directory = tiny_diffusers
  shutil.copytree(directory, tmp_path / "repo" / "transformer")
  (tmp_path / "repo" / "model_index.json").write_text("{}")
  convert_wan_checkpoint(tmp_path / "repo", tmp_path / "out", progress=None)
  assert_params_equal(read_converted(tmp_path / "out")[1], expected_jax_params(model))


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_original_layout_single_file(prefix, tiny_diffusers, tiny_config, tmp_path):
  model, _ = tiny_diffusers
  path = write_original_layout(original_layout_state_dict(model), tmp_path / "src" / "wan.safetensors", prefix)
  assert detect_layout(set(open_safetensors_source(path).tensors)) == "original"
  # No config.json: dim 24 is no released width, so the head count must be given.
  cfg = convert_wan_checkpoint(path, tmp_path / "out", num_heads=2, progress=None)
  assert cfg == tiny_config
  assert_params_equal(read_converted(tmp_path / "out")[1], expected_jax_params(model))
  assert json.loads((tmp_path / "out" / "conversion.json").read_text())["stripped_prefix"] == prefix


def test_original_layout_with_release_config(tiny_diffusers, tiny_config, tmp_path):
  """A release-style config.json (no text_dim / patch_size: ignore_for_config) plus the shapes fix the config."""
  model, _ = tiny_diffusers
  path = write_original_layout(original_layout_state_dict(model), tmp_path / "src" / "wan.safetensors",
                               config=tiny_config)
  assert "text_dim" not in json.loads((path.parent / "config.json").read_text())
  cfg = convert_wan_checkpoint(path.parent, tmp_path / "out", progress=None)
  assert cfg == tiny_config


def test_config_detection_from_shapes_alone(tiny_original_file, tiny_config, tiny_diffusers, tmp_path):
  source = open_safetensors_source(tiny_original_file)
  assert detect_config(source, "original", num_heads=2) == tiny_config
  # Diffusers shapes without config.json give the same answer.
  _, directory = tiny_diffusers
  bare = tmp_path / "bare"
  bare.mkdir()
  shutil.copy(directory / "diffusion_pytorch_model.safetensors", bare)
  assert detect_config(open_safetensors_source(bare), "diffusers", num_heads=2) == tiny_config


def test_released_widths_need_no_head_count():
  assert config_fields_from_json({"_class_name": "WanTransformer3DModel", "num_attention_heads": 12,
                                  "attention_head_dim": 128, "patch_size": [1, 2, 2]})["dim"] == 1536
  assert (default_num_heads(1536), default_num_heads(5120), default_num_heads(2048)) == (12, 40, 16)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_bfloat16_source(dtype, tmp_path):
  model, directory = make_tiny_diffusers_wan(tmp_path, torch_dtype=torch.bfloat16, max_shard_size="30KB")
  convert_wan_checkpoint(directory, tmp_path / "out", dtype=dtype, progress=None)
  params = read_converted(tmp_path / "out")[1]
  np_dtype = np.float32 if dtype == "float32" else ml_dtypes.bfloat16
  # bf16 values are exact in float32, so both targets reproduce the torch weights bit for bit.
  assert_params_equal(params, expected_jax_params(model), np_dtype)


def test_float32_to_bfloat16_rounds_like_torch(tiny_diffusers, tmp_path):
  model, directory = tiny_diffusers
  convert_wan_checkpoint(directory, tmp_path / "out", dtype="bfloat16", progress=None)
  params = read_converted(tmp_path / "out")[1]
  assert_params_equal(params, expected_jax_params(copy.deepcopy(model).to(torch.bfloat16)), ml_dtypes.bfloat16)


def test_restore_into_sharded_target(tiny_diffusers, tmp_path):
  _, directory = tiny_diffusers
  cfg = convert_wan_checkpoint(directory, tmp_path / "out", progress=None)
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  target = jax.tree.map(lambda shape: jax.ShapeDtypeStruct(shape, jax.numpy.bfloat16, sharding=replicated),
                        target_shapes(cfg), is_leaf=lambda x: isinstance(x, tuple))
  restored = restore_params(tmp_path / "out", target)
  leaf = restored["blocks"]["ffn"]["fc1"]["kernel"]
  assert isinstance(leaf, jax.Array) and leaf.sharding == replicated and leaf.dtype == jax.numpy.bfloat16
  numpy_params = restore_params(tmp_path / "out")
  np.testing.assert_array_equal(np.asarray(leaf, np.float32),
                                numpy_params["blocks"]["ffn"]["fc1"]["kernel"].astype(ml_dtypes.bfloat16)
                                .astype(np.float32))


def test_overwrite_replaces_the_destination(tiny_diffusers, tmp_path):
  _, directory = tiny_diffusers
  convert_wan_checkpoint(directory, tmp_path / "out", progress=None)
  convert_wan_checkpoint(directory, tmp_path / "out", dtype="bfloat16", overwrite=True, progress=None)
  assert read_converted(tmp_path / "out")[1]["head"]["modulation"].dtype == ml_dtypes.bfloat16
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_relative_paths(tiny_diffusers, tmp_path, monkeypatch):
  _, directory = tiny_diffusers
  shutil.copytree(directory, tmp_path / "src")
  monkeypatch.chdir(tmp_path)
  convert_wan_checkpoint("src", "out", progress=None)
  assert read_converted("out")[0].dim == 24
