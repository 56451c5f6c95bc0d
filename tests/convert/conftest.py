"""Shared fixtures of the converter tests: one tiny diffusers Wan DiT saved in the layouts the converter reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wan_torch_fixtures import (make_tiny_diffusers_wan, original_layout_state_dict, wan_config_from_diffusers,
                                write_original_layout)


@pytest.fixture(scope="session")
def tiny_diffusers(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
  """(model, directory): fp32, one safetensors file + config.json, as ``save_pretrained`` writes it."""
  return make_tiny_diffusers_wan(tmp_path_factory.mktemp("single"))


@pytest.fixture(scope="session")
def tiny_diffusers_sharded(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
  """(model, directory): the same model, saved in several shards with an index."""
  model, directory = make_tiny_diffusers_wan(tmp_path_factory.mktemp("sharded"), max_shard_size="20KB")
  assert len(list(directory.glob("*.safetensors"))) > 1
  return model, directory


@pytest.fixture(scope="session")
def tiny_original_file(tiny_diffusers, tmp_path_factory) -> Path:
  """The tiny model as one original-layout safetensors file with no config.json beside it."""
  model, _ = tiny_diffusers
  return write_original_layout(original_layout_state_dict(model),
                               tmp_path_factory.mktemp("original") / "diffusion_pytorch_model.safetensors")


@pytest.fixture(scope="session")
def tiny_config(tiny_diffusers):
  return wan_config_from_diffusers(tiny_diffusers[0])
