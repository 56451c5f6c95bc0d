"""Converting the Wan2.1 VAE into a converted checkpoint, and loading it as a ``WanVAE``.

Sources: the diffusers ``AutoencoderKLWan`` safetensors (``vae/diffusion_pytorch_model.safetensors``, with its
config.json) or the original ``Wan2.1_VAE.pth`` (the original Wan2.1 release's ``wan/modules/vae.py`` ``WanVAE_`` state dict; reading it needs
torch, imported only then). What is the VAE's own: the key table, the layout probes and the config (diffusers
config.json, else inferred from the shapes); validation, streaming and writing are the core's.

The key table (``vae_key_table``) walks the model's modules and names each parameter from the small literal
per-module tables below (parameter sub-path, diffusers suffix, original suffix, transform); the original numbers
the decoder's residual blocks and upsamplers in one flat list, which the walk counts.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from rehyat_jax.convert import key_rows, storage
from rehyat_jax.convert.key_rows import KeyRow, ParamPath, Shape, Transform
from rehyat_jax.convert.sources import TORCH_SUFFIXES, CheckpointError, TensorSource, open_weights_file
from rehyat_jax.convert.storage import Progress, report
from rehyat_jax.models.wan_vae import (VIDEO_CHANNELS, Downsample, ResidualBlock, Upsample, WanVAE,
                                       WanVAEConfig)

Layout = Literal["diffusers", "original"]

DIFFUSERS_SUBFOLDER = "vae"
KIND = "Wan2.1 VAE"  # names converted VAE checkpoints in errors


# Per-module rows: (sub-path, diffusers suffix, original suffix, transform).
_Rows = tuple[tuple[ParamPath, str, str, Transform], ...]
_CONV: _Rows = ((("kernel",), "weight", "weight", "conv3d"), (("bias",), "bias", "bias", "copy"))
_NORM: _Rows = ((("scale",), "gamma", "gamma", "norm_video"),)
_RESIDUAL: _Rows = (
    (("norm1", "scale"), "norm1.gamma", "residual.0.gamma", "norm_video"),
    (("conv1", "kernel"), "conv1.weight", "residual.2.weight", "conv3d"),
    (("conv1", "bias"), "conv1.bias", "residual.2.bias", "copy"),
    (("norm2", "scale"), "norm2.gamma", "residual.3.gamma", "norm_video"),
    (("conv2", "kernel"), "conv2.weight", "residual.6.weight", "conv3d"),
    (("conv2", "bias"), "conv2.bias", "residual.6.bias", "copy"),
)
_SHORTCUT: _Rows = (
    (("conv_shortcut", "kernel"), "conv_shortcut.weight", "shortcut.weight", "conv3d"),
    (("conv_shortcut", "bias"), "conv_shortcut.bias", "shortcut.bias", "copy"),
)
_ATTENTION: _Rows = (
    (("norm", "scale"), "norm.gamma", "norm.gamma", "norm_image"),
    (("to_qkv", "kernel"), "to_qkv.weight", "to_qkv.weight", "conv2d"),
    (("to_qkv", "bias"), "to_qkv.bias", "to_qkv.bias", "copy"),
    (("proj", "kernel"), "proj.weight", "proj.weight", "conv2d"),
    (("proj", "bias"), "proj.bias", "proj.bias", "copy"),
)
# Both layouts keep torch's nn.Sequential index of the resampler's Conv2d (0 is the pad or the upsampling).
_RESAMPLE: _Rows = (
    (("conv", "kernel"), "resample.1.weight", "resample.1.weight", "conv2d"),
    (("conv", "bias"), "resample.1.bias", "resample.1.bias", "copy"),
)
_TIME_CONV: _Rows = (
    (("time_conv", "kernel"), "time_conv.weight", "time_conv.weight", "conv3d"),
    (("time_conv", "bias"), "time_conv.bias", "time_conv.bias", "copy"),
)


def _abstract_vae(cfg: WanVAEConfig, param_dtype: Any = jnp.float32) -> WanVAE:
  return nnx.eval_shape(lambda: WanVAE(cfg, rngs=nnx.Rngs(0), param_dtype=param_dtype))


def vae_key_table(cfg: WanVAEConfig, layout: Layout) -> dict[str, KeyRow]:
  """Every parameter of a ``WanVAE(cfg)``, by its key in a ``layout`` checkpoint."""
  if layout not in ("diffusers", "original"):
    raise ValueError(f"unknown VAE checkpoint layout {layout!r}; expected 'diffusers' or 'original'")
  vae = _abstract_vae(cfg)
  rows: list[KeyRow] = []

  def add(table: _Rows, path: ParamPath, diffusers: str, original: str) -> None:
    for sub, diffusers_suffix, original_suffix, transform in table:
      key = f"{diffusers}.{diffusers_suffix}" if layout == "diffusers" else f"{original}.{original_suffix}"
      rows.append(KeyRow(key, path + sub, transform))

  def add_block(block: nnx.Module, path: ParamPath, diffusers: str, original: str) -> None:
    if isinstance(block, ResidualBlock):
      add(_RESIDUAL, path, diffusers, original)
      if block.conv_shortcut is not None:
        add(_SHORTCUT, path, diffusers, original)
    elif isinstance(block, (Downsample, Upsample)):
      add(_RESAMPLE, path, diffusers, original)
      if block.time_conv is not None:
        add(_TIME_CONV, path, diffusers, original)
    else:
      raise TypeError(f"no key table for {type(block).__name__}")

  def add_mid_block(side: str) -> None:
    # The original's `middle` is one Sequential: residual block, attention, residual block.
    add_block(getattr(vae, side).mid_block.resnets[0], (side, "mid_block", "resnets", 0),
              f"{side}.mid_block.resnets.0", f"{side}.middle.0")
    add(_ATTENTION, (side, "mid_block", "attentions", 0), f"{side}.mid_block.attentions.0", f"{side}.middle.1")
    add_block(getattr(vae, side).mid_block.resnets[1], (side, "mid_block", "resnets", 1),
              f"{side}.mid_block.resnets.1", f"{side}.middle.2")

  add(_CONV, ("encoder", "conv_in"), "encoder.conv_in", "encoder.conv1")
  for i, block in enumerate(vae.encoder.down_blocks):
    add_block(block, ("encoder", "down_blocks", i), f"encoder.down_blocks.{i}", f"encoder.downsamples.{i}")
  add_mid_block("encoder")
  add(_NORM, ("encoder", "norm_out"), "encoder.norm_out", "encoder.head.0")
  add(_CONV, ("encoder", "conv_out"), "encoder.conv_out", "encoder.head.2")
  add(_CONV, ("quant_conv",), "quant_conv", "conv1")
  add(_CONV, ("post_quant_conv",), "post_quant_conv", "conv2")
  add(_CONV, ("decoder", "conv_in"), "decoder.conv_in", "decoder.conv1")
  add_mid_block("decoder")
  flat = 0  # index in the original's single `decoder.upsamples` list
  for i, up_block in enumerate(vae.decoder.up_blocks):
    for j, resnet in enumerate(up_block.resnets):
      add_block(resnet, ("decoder", "up_blocks", i, "resnets", j), f"decoder.up_blocks.{i}.resnets.{j}",
                f"decoder.upsamples.{flat}")
      flat += 1
    if up_block.upsampler is not None:
      add_block(up_block.upsampler, ("decoder", "up_blocks", i, "upsampler"),
                f"decoder.up_blocks.{i}.upsamplers.0", f"decoder.upsamples.{flat}")
      flat += 1
  add(_NORM, ("decoder", "norm_out"), "decoder.norm_out", "decoder.head.0")
  add(_CONV, ("decoder", "conv_out"), "decoder.conv_out", "decoder.head.2")
  table = {row.key: row for row in rows}
  if len(table) != len(rows):
    raise AssertionError(f"the VAE key table names {len(rows) - len(table)} keys twice")
  return table


def target_shapes(cfg: WanVAEConfig) -> dict[str | int, Any]:
  """The parameter tree of a ``WanVAE(cfg)`` with shapes as leaves (list entries keyed by their index)."""
  return jax.tree_util.tree_map(lambda leaf: tuple(leaf.shape), nnx.to_pure_dict(nnx.state(_abstract_vae(cfg))))


def expected_source_keys(cfg: WanVAEConfig, layout: Layout) -> dict[str, Shape]:
  """Every key a ``layout`` checkpoint of ``cfg`` holds -> its torch shape."""
  shapes = target_shapes(cfg)
  table = vae_key_table(cfg, layout)
  leaves = jax.tree_util.tree_flatten_with_path(shapes, is_leaf=lambda leaf: isinstance(leaf, tuple))[0]
  if {row.path for row in table.values()} != {tuple(getattr(k, "key", k) for k in path) for path, _ in leaves}:
    raise AssertionError("the VAE key table does not cover the WanVAE parameters one to one")
  return key_rows.expected_shapes(table, shapes)


# ----------------------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------------------

def open_vae_source(path: str | os.PathLike) -> TensorSource:
  """A .safetensors file, a .pth / .pt file, a directory holding one, or a diffusers repo root (uses ``vae/``)."""
  path = Path(path)
  if not path.exists():
    raise CheckpointError(f"{path}: no such file or directory")
  if path.is_dir():
    if (path / DIFFUSERS_SUBFOLDER).is_dir():
      return open_vae_source(path / DIFFUSERS_SUBFOLDER)
    torch_files = sorted(p for p in path.iterdir() if p.suffix in TORCH_SUFFIXES)
    if not list(path.glob("*.safetensors")) and len(torch_files) == 1:
      return open_weights_file(torch_files[0])
  return open_weights_file(path)


# ----------------------------------------------------------------------------------------------------------
# Layout and config
# ----------------------------------------------------------------------------------------------------------

# Per layout: (encoder input conv, encoder block list prefix, residual first-conv suffix, post-quant conv).
_SHAPE_PROBES: dict[Layout, tuple[str, str, str, str]] = {
    "diffusers": ("encoder.conv_in.weight", "encoder.down_blocks.", "conv1.weight", "post_quant_conv.weight"),
    "original": ("encoder.conv1.weight", "encoder.downsamples.", "residual.2.weight", "conv2.weight"),
}


def detect_vae_layout(keys: set[str] | list[str]) -> Layout:
  """'diffusers' or 'original', by the encoder's input conv."""
  found = [layout for layout, probes in _SHAPE_PROBES.items() if probes[0] in keys]
  if len(found) != 1:
    sample = ", ".join(sorted(keys)[:5]) or "(no tensors)"
    raise CheckpointError(f"unknown VAE checkpoint layout: expected encoder.conv_in.weight (diffusers "
                          f"AutoencoderKLWan) or encoder.conv1.weight (original Wan2.1_VAE.pth); first keys: {sample}")
  return found[0]


def infer_vae_config(shapes: dict[str, tuple[int, ...]], layout: Layout) -> WanVAEConfig:
  """The architecture fixed by the tensor shapes (the latent statistics are the published Wan2.1 ones)."""
  conv_in, prefix, residual_conv, post_quant = _SHAPE_PROBES[layout]
  if conv_in not in shapes or post_quant not in shapes or len(shapes[conv_in]) != 5:
    raise CheckpointError(f"cannot infer the VAE config: {conv_in} or {post_quant} is missing or not a Conv3d "
                          "weight; pass config=")
  base_dim, z_dim = shapes[conv_in][0], shapes[post_quant][0]
  stages: list[list[int]] = [[]]  # output widths of the residual blocks of each encoder stage
  temporal: list[bool] = []
  i = 0
  while True:
    if f"{prefix}{i}.{residual_conv}" in shapes:
      stages[-1].append(shapes[f"{prefix}{i}.{residual_conv}"][0])
    elif f"{prefix}{i}.resample.1.weight" in shapes:
      temporal.append(f"{prefix}{i}.time_conv.weight" in shapes)
      stages.append([])
    else:
      break
    i += 1
  num_res_blocks = len(stages[0])
  if not num_res_blocks or any(len(s) != num_res_blocks or len(set(s)) != 1 or s[0] % base_dim for s in stages):
    raise CheckpointError(f"cannot infer the VAE config from the encoder blocks {stages} (base_dim {base_dim}); "
                          "pass config=")
  try:
    return WanVAEConfig(base_dim=base_dim, z_dim=z_dim, dim_mult=tuple(s[0] // base_dim for s in stages),
                        num_res_blocks=num_res_blocks, temperal_downsample=tuple(temporal))
  except ValueError as e:
    raise CheckpointError(f"cannot infer the VAE config: {e}; pass config=") from e


def config_from_diffusers_json(config: dict[str, Any], path: Path | str) -> WanVAEConfig:
  """The ``WanVAEConfig`` of a diffusers ``AutoencoderKLWan`` config.json (Wan2.1 variants only)."""
  if config.get("_class_name", "AutoencoderKLWan") != "AutoencoderKLWan":
    raise CheckpointError(f"{path}: not an AutoencoderKLWan config (_class_name {config['_class_name']!r})")
  unsupported = {"is_residual": (False, None), "patch_size": (None,), "in_channels": (VIDEO_CHANNELS, None),
                 "out_channels": (VIDEO_CHANNELS, None), "decoder_base_dim": (None, config.get("base_dim"))}
  bad = {name: config[name] for name, allowed in unsupported.items() if config.get(name) not in allowed}
  if bad:
    raise CheckpointError(f"{path}: unsupported AutoencoderKLWan settings {bad} (only the Wan2.1 VAE is supported)")
  names = [f.name for f in dataclasses.fields(WanVAEConfig)]
  try:
    return WanVAEConfig(**{name: config[name] for name in names if name in config})
  except (TypeError, ValueError) as e:
    raise CheckpointError(f"{path}: inconsistent VAE config: {e}") from e


def detect_vae_config(source: TensorSource, layout: Layout) -> WanVAEConfig:
  """config.json next to a diffusers checkpoint when present, else the shapes."""
  config = source.read_config_json() if layout == "diffusers" else None
  if config is not None:
    return config_from_diffusers_json(config, source.config_path)
  return infer_vae_config(source.shapes, layout)


def check_vae_source(source: TensorSource, layout: Layout, cfg: WanVAEConfig) -> None:
  """Raises one CheckpointError listing every missing, unexpected, mis-shaped or non-float tensor."""
  key_rows.check_source(source, expected_source_keys(cfg, layout),
                        f"a Wan2.1 VAE ({layout} layout, base_dim={cfg.base_dim}, z_dim={cfg.z_dim}, "
                        f"dim_mult={list(cfg.dim_mult)}, num_res_blocks={cfg.num_res_blocks}, "
                        f"temperal_downsample={list(cfg.temperal_downsample)})")


# ----------------------------------------------------------------------------------------------------------
# Conversion and loading
# ----------------------------------------------------------------------------------------------------------

def convert_wan_vae(src: str | os.PathLike, dst: str | os.PathLike, *, dtype: str = "float32",
                    config: WanVAEConfig | None = None, overwrite: bool = False,
                    progress: Progress = print) -> WanVAEConfig:
  """Converts a Wan2.1 VAE checkpoint at ``src`` into the directory ``dst`` and returns its config.

  Args:
    src: diffusers ``vae/`` folder or its safetensors file, a diffusers repo root, or ``Wan2.1_VAE.pth``.
    dst: the directory to create.
    dtype: 'float32' (default; the VAE runs in fp32) or 'bfloat16'.
    config: the architecture, skipping detection (still checked against the tensors).
    overwrite: replace an existing ``dst``.
    progress: called with one-line status messages; None for silence.

  Raises:
    CheckpointError: unreadable source, unknown layout, or tensors that do not match (all listed), before
      anything is written.
  """
  start = time.perf_counter()
  storage.target_dtype(dtype)
  storage.check_destination(dst, overwrite)
  source = open_vae_source(src)
  layout = detect_vae_layout(set(source.tensors))
  cfg = config if config is not None else detect_vae_config(source, layout)
  check_vae_source(source, layout, cfg)
  table = vae_key_table(cfg, layout)
  report(progress, f"{source.path}: {layout} layout, {len(table)} tensors -> {dtype}")
  conversion = {"model": "wan2.1-vae", "source": str(source.path.resolve()), "layout": layout, "dtype": dtype,
                "num_tensors": len(table)}
  storage.write_tensors(dst, source, table, target_shapes(cfg), cfg, conversion, dtype=dtype, overwrite=overwrite,
                        progress=progress, start=start)
  return cfg


def read_wan_vae_config(path: str | os.PathLike) -> WanVAEConfig:
  """The ``WanVAEConfig`` of a converted VAE directory."""
  return storage.read_config(path, WanVAEConfig.from_dict, KIND, "vae")


def load_wan_vae(path: str | os.PathLike, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32) -> WanVAE:
  """The ``WanVAE`` stored at ``path`` by ``convert_wan_vae``; parameters restored straight into ``param_dtype``."""
  cfg = read_wan_vae_config(path)
  abstract = nnx.eval_shape(lambda: WanVAE(cfg, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype))
  graphdef, state = nnx.split(abstract)
  nnx.replace_by_pure_dict(state, storage.restore_into(path, nnx.to_pure_dict(state)))
  return nnx.merge(graphdef, state)
