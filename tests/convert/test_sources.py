"""Header-only listing and memory-mapped reading of safetensors files, shard sets and directories."""

from __future__ import annotations

import json
import shutil

import ml_dtypes
import numpy as np
import pytest
import torch

from rehyat_jax.convert import CheckpointError, open_safetensors_source, read_safetensors_header, read_tensor
from wan_torch_fixtures import write_safetensors

TORCH_DTYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: ml_dtypes.bfloat16,
                torch.float64: np.float64, torch.int64: np.int64}


@pytest.fixture
def mixed_file(tmp_path):
  torch.manual_seed(0)
  tensors = {
      "a.weight": torch.randn(5, 3),
      "b": torch.randn(2, 1, 4).bfloat16(),
      "c": torch.randn(7).half(),
      "d": torch.randn(2, 2).double(),
      "e": torch.arange(6).reshape(2, 3),
      "scalar": torch.tensor(3.5),
      "empty": torch.zeros(0, 4),
  }
  return tensors, write_safetensors(tensors, tmp_path / "mixed.safetensors")


def test_header_lists_shapes_and_dtypes(mixed_file):
  tensors, path = mixed_file
  infos = read_safetensors_header(path)
  assert set(infos) == set(tensors)
  for key, tensor in tensors.items():
    assert infos[key].shape == tuple(tensor.shape)
    assert infos[key].dtype == np.dtype(TORCH_DTYPES[tensor.dtype])


def test_tensors_read_exactly_including_bfloat16(mixed_file):
  tensors, path = mixed_file
  source = open_safetensors_source(path)
  for key, tensor in tensors.items():
    array = read_tensor(source.tensors[key])
    assert array.dtype == np.dtype(TORCH_DTYPES[tensor.dtype])
    expected = tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()
    np.testing.assert_array_equal(array.astype(expected.dtype), expected)
  assert not read_tensor(source.tensors["a.weight"]).flags.writeable


def test_single_file_prefix_is_stripped(tmp_path):
  path = write_safetensors({"model.diffusion_model.x": torch.ones(2), "model.diffusion_model.y": torch.ones(3)},
                           tmp_path / "comfy.safetensors")
  source = open_safetensors_source(path)
  assert set(source.tensors) == {"x", "y"}
  assert source.stripped_prefix == "model.diffusion_model."
  assert source.tensors["x"].name == "model.diffusion_model.x"


def test_sharded_set_and_directories(tiny_diffusers_sharded, tiny_diffusers, tmp_path):
  model, directory = tiny_diffusers_sharded
  index = next(directory.glob("*.safetensors.index.json"))
  for path in (directory, index):
    source = open_safetensors_source(path)
    assert set(source.tensors) == set(model.state_dict())
    assert len(source.files) == len(list(directory.glob("*.safetensors")))
    assert source.config_path == directory / "config.json"
  # A diffusers repo root resolves to its transformer/ subfolder.
  repo = tmp_path / "repo"
  shutil.copytree(tiny_diffusers[1], repo / "transformer")
  (repo / "model_index.json").write_text("{}")
  source = open_safetensors_source(repo)
  assert source.files == (repo / "transformer" / "diffusion_pytorch_model.safetensors",)


def test_truncated_file_names_the_file(mixed_file, tmp_path):
  _, path = mixed_file
  data = path.read_bytes()
  for size in (len(data) - 10, 40, 4):
    cut = tmp_path / f"cut{size}.safetensors"
    cut.write_bytes(data[:size])
    with pytest.raises(CheckpointError, match=rf"cut{size}\.safetensors.*truncated"):
      open_safetensors_source(cut)


def test_corrupt_header_names_the_file(tmp_path):
  path = tmp_path / "junk.safetensors"
  path.write_bytes((12).to_bytes(8, "little") + b"not json!!!!" + b"\0" * 16)
  with pytest.raises(CheckpointError, match=r"junk\.safetensors.*corrupt"):
    open_safetensors_source(path)


def test_missing_shard_and_ambiguous_directory(tiny_diffusers_sharded, tmp_path):
  _, directory = tiny_diffusers_sharded
  broken = tmp_path / "broken"
  shutil.copytree(directory, broken)
  victim = sorted(broken.glob("*.safetensors"))[1]
  victim.unlink()
  with pytest.raises(CheckpointError, match=rf"shard {victim.name} is missing"):
    open_safetensors_source(broken)
  loose = tmp_path / "loose"
  loose.mkdir()
  for shard in sorted(directory.glob("*.safetensors"))[:2]:
    shutil.copy(shard, loose)
  with pytest.raises(CheckpointError, match="several .safetensors files"):
    open_safetensors_source(loose)
  with pytest.raises(CheckpointError, match="no such file"):
    open_safetensors_source(tmp_path / "nowhere")


def test_index_pointing_at_the_wrong_shard(tiny_diffusers_sharded, tmp_path):
  _, directory = tiny_diffusers_sharded
  broken = tmp_path / "broken"
  shutil.copytree(directory, broken)
  index_path = next(broken.glob("*.index.json"))
  index = json.loads(index_path.read_text())
  shards = sorted(set(index["weight_map"].values()))
  key = next(k for k, shard in index["weight_map"].items() if shard == shards[0])
  index["weight_map"][key] = shards[1]
  index_path.write_text(json.dumps(index))
  with pytest.raises(CheckpointError, match="not where the index says"):
    open_safetensors_source(broken)
