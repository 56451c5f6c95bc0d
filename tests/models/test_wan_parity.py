"""End-to-end parity: diffusers ``WanTransformer3DModel`` (random weights) -> save -> convert -> load -> same output.

Reference: diffusers on CPU in float32 (the original Wan code needs CUDA flash-attention) with its
timestep sinusoid computed in float64 as the original Wan does (diffusers' float32 version is off by
up to ~3e-5 near t=1000, which at the 1.3B width alone shows as ~1e-5 output error). Error is
max |ours - torch| / max |torch| over the whole output.
"""

import numpy as np
import pytest
import torch
from flax import nnx
from diffusers.models.transformers.transformer_wan import WanTransformerBlock

from rehyat_jax.convert import convert_wan_checkpoint, load_pretrained
from rehyat_jax.models import rope as rope_lib
from rehyat_jax.models.wan import Geometry, RuntimeConfig
from wan_torch_fixtures import (make_tiny_diffusers_wan, original_layout_state_dict, use_original_time_embedding,
                                write_original_layout)

TOLERANCE = 1e-5


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / np.abs(b).max())


def torch_inputs(model, batch, frames, height, width, text_len, seed=0):
  g = torch.Generator().manual_seed(seed)
  c = model.config
  x = torch.randn(batch, c.in_channels, frames, height, width, generator=g)
  t = torch.tensor([999, 3, 500, 250][:batch], dtype=torch.int64)
  text = torch.randn(batch, text_len, c.text_dim, generator=g)
  return x, t, text


def run_both(model, jax_model, inputs):
  use_original_time_embedding(model)
  with torch.no_grad():
    ref = model(*inputs, return_dict=False)[0].numpy()
  ours = np.asarray(jax_model(*(i.numpy() for i in inputs)))
  assert ours.shape == ref.shape
  return rel_err(ours, ref)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  model, directory = make_tiny_diffusers_wan(tmp_path_factory.mktemp("tiny"), seed=3)
  out = tmp_path_factory.mktemp("conv") / "ckpt"
  convert_wan_checkpoint(directory, out, progress=lambda *_: None)
  return model, out


@pytest.mark.parametrize("frames,height,width", [(1, 4, 6), (3, 6, 4), (5, 8, 10)])
@pytest.mark.parametrize("scan_layers", [True, False])
def test_tiny_diffusers_layout(tiny, frames, height, width, scan_layers):
  model, ckpt = tiny
  jax_model = load_pretrained(ckpt, run=RuntimeConfig(scan_layers=scan_layers))
  err = run_both(model, jax_model, torch_inputs(model, 2, frames, height, width, text_len=7))
  print(f"tiny diffusers layout F={frames} {height}x{width} scan={scan_layers}: rel err {err:.2e}")
  assert err <= TOLERANCE


def test_tiny_original_layout_with_prefix(tiny, tmp_path):
  model, _ = tiny
  src = write_original_layout(original_layout_state_dict(model), tmp_path / "wan.safetensors",
                              prefix="model.diffusion_model.")
  convert_wan_checkpoint(src, tmp_path / "ckpt", num_heads=model.config.num_attention_heads, progress=lambda *_: None)
  jax_model = load_pretrained(tmp_path / "ckpt")
  err = run_both(model, jax_model, torch_inputs(model, 2, 3, 6, 8, text_len=5, seed=1))
  assert err <= TOLERANCE


def test_one_block_matches_diffusers_block(tiny):
  """A single block with the same e0, text and RoPE inputs (no embeddings around it)."""
  model, ckpt = tiny
  jax_model = load_pretrained(ckpt, run=RuntimeConfig(scan_layers=False))
  torch_block: WanTransformerBlock = model.blocks[1]
  g = torch.Generator().manual_seed(5)
  b, f, h, w, dim = 2, 3, 2, 4, model.config.num_attention_heads * model.config.attention_head_dim
  x = torch.randn(b, f * h * w, dim, generator=g)
  text = torch.randn(b, 6, dim, generator=g)
  temb = torch.randn(b, 6, dim, generator=g)
  rotary = model.rope(torch.zeros(b, 1, f, 2 * h, 2 * w))
  with torch.no_grad():
    ref = torch_block(x, text, temb, rotary).numpy()
  rope = rope_lib.rope_tables(model.config.attention_head_dim, (f, h, w))
  ours = jax_model.blocks[1](x.numpy(), temb.numpy(), text.numpy(), rope, Geometry(f, h, w))
  assert rel_err(ours, ref) <= TOLERANCE


def test_real_1_3b_width(tmp_path):
  """Wan2.1-1.3B widths (dim 1536, 12 heads of 128, ffn 8960, text 4096, freq 256), 2 layers, small latent."""
  model, directory = make_tiny_diffusers_wan(
      tmp_path, seed=7, num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
      text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=2, rope_max_seq_len=1024)
  convert_wan_checkpoint(directory, tmp_path / "ckpt", progress=lambda *_: None)
  jax_model = load_pretrained(tmp_path / "ckpt")
  assert jax_model.cfg.head_dim == 128 and jax_model.cfg.dim == 1536
  err = run_both(model, jax_model, torch_inputs(model, 2, 3, 6, 10, text_len=512, seed=2))
  print(f"1.3B width, 2 layers, F=3 6x10, text 512: rel err {err:.2e}")
  assert err <= TOLERANCE


def test_load_pretrained_student_keeps_teacher_weights(tiny):
  from rehyat_jax.attention.config import RehyatConfig
  from rehyat_jax.attention.feature_maps import FeatureMapConfig, PhiParam
  from rehyat_jax.models.params import canonical_params

  model, ckpt = tiny
  teacher = load_pretrained(ckpt)
  student = load_pretrained(ckpt, rehyat=RehyatConfig(feature_map=FeatureMapConfig(hidden=8, feature_dim=4)))
  a, b = canonical_params(teacher), canonical_params(student)
  np.testing.assert_array_equal(a["blocks"]["self_attn"]["q"]["kernel"], b["blocks"]["self_attn"]["q"]["kernel"])
  phi = nnx.to_pure_dict(nnx.state(student, PhiParam))["blocks"]["self_attn"]["phi_q"]["w1"]
  assert np.abs(np.asarray(phi)).max() > 0
