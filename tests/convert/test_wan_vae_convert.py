"""The Wan2.1 VAE converter: its key table against diffusers at full size, the original ``Wan2.1_VAE.pth``
naming, and the errors it reports.

The original names are checked independently of our table: diffusers' own single-file converter
(``convert_wan_vae_to_diffusers``, written for the released num_res_blocks=2 layout) must map them back to
exactly the keys of a full-size ``AutoencoderKLWan``, built on the meta device (no memory, no weights).
"""

import json

import jax
import numpy as np
import pytest
import safetensors.torch
import torch
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
from flax import nnx

from rehyat_jax.convert.sources import CheckpointError
from rehyat_jax.convert.wan_vae import (convert_wan_vae, expected_source_keys, infer_vae_config, load_wan_vae,
                                        vae_key_table)
from rehyat_jax.models.wan_vae import WanVAEConfig

TOLERANCE = 1e-4
RELEASED_PARAMETERS = 126_892_531


def rel_err(ours, ref) -> float:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape
  return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def full_size_diffusers_shapes() -> dict[str, tuple[int, ...]]:
  with torch.device("meta"):
    model = AutoencoderKLWan()  # the released Wan2.1 VAE config
  return {key: tuple(value.shape) for key, value in model.state_dict().items()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[AutoencoderKLWan, object]:
  """(diffusers tiny VAE with seeded random weights, its save_pretrained folder)."""
  torch.manual_seed(5)
  model = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True]).eval()
  with torch.no_grad():
    for name, param in model.named_parameters():
      if name.endswith("gamma"):
        param.copy_(1.0 + 0.1 * torch.randn_like(param))
  folder = tmp_path_factory.mktemp("diffusers_vae")
  model.save_pretrained(folder)
  return model, folder


def original_to_diffusers(cfg: WanVAEConfig) -> dict[str, str]:
  """Original key -> diffusers key of every VAE parameter, paired through the parameter path they fill."""
  diffusers = {row.path: key for key, row in vae_key_table(cfg, "diffusers").items()}
  return {key: diffusers[row.path] for key, row in vae_key_table(cfg, "original").items()}


def test_full_size_key_table_matches_diffusers(full_size_diffusers_shapes):
  cfg = WanVAEConfig()
  assert expected_source_keys(cfg, "diffusers") == full_size_diffusers_shapes
  assert sum(int(np.prod(s)) for s in full_size_diffusers_shapes.values()) == RELEASED_PARAMETERS


def test_full_size_original_names_match_diffusers_single_file_converter(full_size_diffusers_shapes):
  cfg = WanVAEConfig()
  rename = original_to_diffusers(cfg)
  assert len(set(rename.values())) == len(rename) == len(full_size_diffusers_shapes)
  # Tag every tensor with its diffusers key, rename it the original way, and let diffusers rename it back.
  original_state = dict(rename)
  assert convert_wan_vae_to_diffusers(original_state) == {diffusers: diffusers for diffusers in rename.values()}
  original_shapes = expected_source_keys(cfg, "original")
  assert {original: full_size_diffusers_shapes[diffusers] for original, diffusers in rename.items()} == original_shapes
  assert infer_vae_config(original_shapes, "original") == cfg
  assert infer_vae_config(full_size_diffusers_shapes, "diffusers") == cfg


def test_original_pth_converts_to_the_same_vae(tiny, tmp_path):
  model, folder = tiny
  diffusers_cfg = convert_wan_vae(folder, tmp_path / "from_diffusers", progress=None)
  state = model.state_dict()
  rename = original_to_diffusers(diffusers_cfg)
  assert set(rename.values()) == set(state)
  pth = tmp_path / "Wan2.1_VAE.pth"
  torch.save({original: state[diffusers] for original, diffusers in rename.items()}, pth)

  cfg = convert_wan_vae(pth, tmp_path / "from_pth", progress=None)  # no config.json: inferred from shapes
  assert cfg == diffusers_cfg == WanVAEConfig.tiny()
  from_pth, from_diffusers = load_wan_vae(tmp_path / "from_pth"), load_wan_vae(tmp_path / "from_diffusers")
  jax.tree_util.tree_map(np.testing.assert_array_equal, nnx.to_pure_dict(nnx.state(from_pth)),
                         nnx.to_pure_dict(nnx.state(from_diffusers)))

  latents = torch.randn(1, 16, 2, 2, 3, generator=torch.Generator().manual_seed(0))
  with torch.no_grad():
    ref = model.decode(latents).sample
  video = jax.jit(lambda vae, z: vae.decode(z))(from_pth, from_pth.normalize_latents(latents.numpy()))
  assert rel_err(video, ref) <= TOLERANCE


def test_converted_dtype_and_lone_safetensors_file(tiny, tmp_path):
  _, folder = tiny
  file = folder / "diffusion_pytorch_model.safetensors"
  lone = tmp_path / "vae.safetensors"
  lone.write_bytes(file.read_bytes())  # no config.json beside it: the config comes from the shapes
  cfg = convert_wan_vae(lone, tmp_path / "bf16", dtype="bfloat16", progress=None)
  assert cfg == WanVAEConfig.tiny()
  conversion = json.loads((tmp_path / "bf16" / "conversion.json").read_text())
  assert conversion["layout"] == "diffusers" and conversion["dtype"] == "bfloat16"
  vae = load_wan_vae(tmp_path / "bf16")  # restored into float32 parameters
  assert vae.decoder.conv_out.kernel[...].dtype == np.float32


def test_every_problem_is_listed_in_one_error(tiny, tmp_path):
  model, folder = tiny
  state = {key: value.clone() for key, value in model.state_dict().items()}
  del state["decoder.up_blocks.0.upsamplers.0.time_conv.bias"]
  state["encoder.conv_in.weight"] = state["encoder.conv_in.weight"][:, :, :1].contiguous()
  state["encoder.extra.weight"] = torch.zeros(2)
  broken = tmp_path / "broken"
  broken.mkdir()
  safetensors.torch.save_file(state, broken / "diffusion_pytorch_model.safetensors")
  (broken / "config.json").write_text((folder / "config.json").read_text())
  with pytest.raises(CheckpointError) as error:
    convert_wan_vae(broken, tmp_path / "out", progress=None)
  message = str(error.value)
  assert "1 missing key" in message and "decoder.up_blocks.0.upsamplers.0.time_conv.bias" in message
  assert "1 shape mismatch" in message
  assert "encoder.conv_in.weight: expected [3, 3, 3, 3, 3], found [3, 3, 1, 3, 3]" in message
  assert "1 unexpected key" in message and "encoder.extra.weight" in message
  assert not (tmp_path / "out").exists()


def test_unreadable_sources(tmp_path):
  with pytest.raises(CheckpointError, match="no such file"):
    convert_wan_vae(tmp_path / "absent.pth", tmp_path / "out", progress=None)
  (tmp_path / "not_a_checkpoint.pth").write_bytes(b"garbage")
  with pytest.raises(CheckpointError, match="cannot load as a PyTorch checkpoint"):
    convert_wan_vae(tmp_path / "not_a_checkpoint.pth", tmp_path / "out", progress=None)
  torch.save({"some.other.weight": torch.zeros(1)}, tmp_path / "other.pth")
  with pytest.raises(CheckpointError, match="unknown VAE checkpoint layout"):
    convert_wan_vae(tmp_path / "other.pth", tmp_path / "out", progress=None)
  with pytest.raises(CheckpointError, match="not a converted Wan2.1 VAE checkpoint"):
    load_wan_vae(tmp_path)
