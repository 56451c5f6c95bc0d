"""Tiny PyTorch Wan2.1 DiTs and their safetensors checkpoints, for converter and model-parity tests.

Everything here reads the torch model through its module attributes (``model.blocks[i].attn1.to_q.weight``), not
through ``rehyat_jax.convert.wan_dit_keys``, so tests that compare against it check the key table independently.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from diffusers import WanTransformer3DModel

from rehyat_jax.models.config import WanConfig

# The tiny T2V transformer of diffusers' own tests, with a smaller freq_dim.
TINY_DIFFUSERS_WAN_KWARGS: dict[str, Any] = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
    text_dim=16, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    rope_max_seq_len=32)

# Norm weights are randomised around 1 (as trained ones are), everything else around 0.
NORM_SCALE_SUFFIXES = ("norm_q.weight", "norm_k.weight", "norm2.weight")

# The original release stores these without the ignore_for_config fields (text_dim, patch_size).
ORIGINAL_CONFIG_FIELDS = ("dim", "eps", "ffn_dim", "freq_dim", "in_dim", "num_heads", "num_layers", "out_dim",
                          "text_len")


def build_tiny_diffusers_wan(seed: int = 0, **overrides: Any) -> WanTransformer3DModel:
  """A tiny ``WanTransformer3DModel`` whose every parameter is random (no zero biases, no unit norms)."""
  torch.manual_seed(seed)
  model = WanTransformer3DModel(**{**TINY_DIFFUSERS_WAN_KWARGS, **overrides}).eval()
  with torch.no_grad():
    for name, param in model.named_parameters():
      is_norm_scale = name.endswith(NORM_SCALE_SUFFIXES)
      noise = 0.1 * torch.randn_like(param)
      param.copy_(1.0 + noise if is_norm_scale else noise)
  return model


def make_tiny_diffusers_wan(tmp_path: Path, *, seed: int = 0, max_shard_size: str | None = None,
                            torch_dtype: torch.dtype = torch.float32, **overrides: Any
                            ) -> tuple[WanTransformer3DModel, Path]:
  """(model, directory) with the model saved by ``save_pretrained`` (sharded when ``max_shard_size`` is small)."""
  model = build_tiny_diffusers_wan(seed, **overrides).to(torch_dtype)
  directory = Path(tmp_path) / "diffusers_transformer"
  kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
  model.save_pretrained(directory, safe_serialization=True, **kwargs)
  return model, directory


def wan_config_from_diffusers(model: WanTransformer3DModel, text_len: int = 512) -> WanConfig:
  """The WanConfig that describes ``model``."""
  c = model.config
  return WanConfig(dim=c.num_attention_heads * c.attention_head_dim, ffn_dim=c.ffn_dim,
                   num_heads=c.num_attention_heads, num_layers=c.num_layers, patch_size=tuple(c.patch_size),
                   freq_dim=c.freq_dim, in_dim=c.in_channels, out_dim=c.out_channels, text_dim=c.text_dim,
                   text_len=text_len, eps=c.eps)


def original_layout_state_dict(model: WanTransformer3DModel) -> dict[str, torch.Tensor]:
  """The state dict of ``model`` under original Wan2.1 (``WanModel``) key names."""
  embed = model.condition_embedder
  state = {
      "patch_embedding.weight": model.patch_embedding.weight,
      "patch_embedding.bias": model.patch_embedding.bias,
      "text_embedding.0.weight": embed.text_embedder.linear_1.weight,
      "text_embedding.0.bias": embed.text_embedder.linear_1.bias,
      "text_embedding.2.weight": embed.text_embedder.linear_2.weight,
      "text_embedding.2.bias": embed.text_embedder.linear_2.bias,
      "time_embedding.0.weight": embed.time_embedder.linear_1.weight,
      "time_embedding.0.bias": embed.time_embedder.linear_1.bias,
      "time_embedding.2.weight": embed.time_embedder.linear_2.weight,
      "time_embedding.2.bias": embed.time_embedder.linear_2.bias,
      "time_projection.1.weight": embed.time_proj.weight,
      "time_projection.1.bias": embed.time_proj.bias,
      "head.modulation": model.scale_shift_table,
      "head.head.weight": model.proj_out.weight,
      "head.head.bias": model.proj_out.bias,
  }
  for i, block in enumerate(model.blocks):
    state[f"blocks.{i}.modulation"] = block.scale_shift_table
    for original, attention in (("self_attn", block.attn1), ("cross_attn", block.attn2)):
      for name, linear in (("q", attention.to_q), ("k", attention.to_k), ("v", attention.to_v),
                           ("o", attention.to_out[0])):
        state[f"blocks.{i}.{original}.{name}.weight"] = linear.weight
        state[f"blocks.{i}.{original}.{name}.bias"] = linear.bias
      state[f"blocks.{i}.{original}.norm_q.weight"] = attention.norm_q.weight
      state[f"blocks.{i}.{original}.norm_k.weight"] = attention.norm_k.weight
    state[f"blocks.{i}.norm3.weight"] = block.norm2.weight
    state[f"blocks.{i}.norm3.bias"] = block.norm2.bias
    state[f"blocks.{i}.ffn.0.weight"] = block.ffn.net[0].proj.weight
    state[f"blocks.{i}.ffn.0.bias"] = block.ffn.net[0].proj.bias
    state[f"blocks.{i}.ffn.2.weight"] = block.ffn.net[2].weight
    state[f"blocks.{i}.ffn.2.bias"] = block.ffn.net[2].bias
  return {key: tensor.detach() for key, tensor in state.items()}


def write_original_layout(state_dict: dict[str, torch.Tensor], path: Path, prefix: str = "",
                          config: WanConfig | None = None) -> Path:
  """Writes ``state_dict`` (original key names) as one safetensors file, keys prefixed with ``prefix`` (e.g.
  ``model.diffusion_model.``); with ``config``, also an original-release config.json next to it."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  safetensors.torch.save_file({prefix + key: tensor.contiguous() for key, tensor in state_dict.items()}, path)
  if config is not None:
    fields = {name: getattr(config, name) for name in ORIGINAL_CONFIG_FIELDS}
    (path.parent / "config.json").write_text(json.dumps(
        {"_class_name": "WanModel", "_diffusers_version": "0.30.0", "model_type": "t2v", **fields}, indent=2))
  return path


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> Path:
  """Writes ``tensors`` to one safetensors file."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  safetensors.torch.save_file({key: tensor.contiguous() for key, tensor in tensors.items()}, path)
  return path


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
  """float32 numpy copy of a tensor of any float dtype (bf16 values are exact in float32)."""
  return tensor.detach().float().cpu().numpy()


def expected_jax_params(model: WanTransformer3DModel) -> dict[str, Any]:
  """The converted parameter tree (float32, scanned layout) that ``model`` must produce."""
  def linear(module: torch.nn.Linear) -> dict[str, np.ndarray]:
    return {"kernel": to_numpy(module.weight).T, "bias": to_numpy(module.bias)}

  def stacked(per_block: list[Any]) -> Any:
    if isinstance(per_block[0], dict):
      return {name: stacked([tree[name] for tree in per_block]) for name in per_block[0]}
    return np.stack(per_block)

  def attention(module: torch.nn.Module) -> dict[str, Any]:
    return {"q": linear(module.to_q), "k": linear(module.to_k), "v": linear(module.to_v),
            "o": linear(module.to_out[0]), "norm_q": {"scale": to_numpy(module.norm_q.weight)},
            "norm_k": {"scale": to_numpy(module.norm_k.weight)}}

  blocks = [{
      "modulation": to_numpy(block.scale_shift_table),
      "self_attn": attention(block.attn1),
      "norm3": {"scale": to_numpy(block.norm2.weight), "bias": to_numpy(block.norm2.bias)},
      "cross_attn": attention(block.attn2),
      "ffn": {"fc1": linear(block.ffn.net[0].proj), "fc2": linear(block.ffn.net[2])},
  } for block in model.blocks]
  embed = model.condition_embedder
  return {
      "patch_embedding": {"kernel": to_numpy(model.patch_embedding.weight).transpose(2, 3, 4, 1, 0),
                          "bias": to_numpy(model.patch_embedding.bias)},
      "text_embedding": {"linear_1": linear(embed.text_embedder.linear_1),
                         "linear_2": linear(embed.text_embedder.linear_2)},
      "time_embedding": {"linear_1": linear(embed.time_embedder.linear_1),
                         "linear_2": linear(embed.time_embedder.linear_2)},
      "time_projection": linear(embed.time_proj),
      "blocks": stacked(blocks),
      "head": {"modulation": to_numpy(model.scale_shift_table), "head": linear(model.proj_out)},
  }


class OriginalTimesteps(torch.nn.Module):
  """Wan's own ``sinusoidal_embedding_1d``: float64 math, [cos, sin], cast to float32.

  diffusers' ``Timesteps`` computes the same in float32, which is off by up to ~3e-5 for t near
  1000; rehyat-jax follows the original, so parity tests put the original formula back.
  """

  def __init__(self, dim: int):
    super().__init__()
    self.dim = dim

  def forward(self, t: torch.Tensor) -> torch.Tensor:
    half = self.dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64) / half)
    args = torch.outer(t.to(torch.float64), freqs)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1).to(torch.float32)


def use_original_time_embedding(model: WanTransformer3DModel) -> WanTransformer3DModel:
  model.condition_embedder.timesteps_proj = OriginalTimesteps(model.config.freq_dim)
  return model
