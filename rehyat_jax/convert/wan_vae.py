"""Converting the Wan2.1 VAE into an Orbax checkpoint, and loading it as a ``WanVAE``.

Sources: the diffusers ``AutoencoderKLWan`` safetensors (``vae/diffusion_pytorch_model.safetensors``, with its
config.json) or the original ``Wan2.1_VAE.pth`` (``wan/modules/vae.py`` ``WanVAE_`` state dict; reading it needs
torch, imported only then). Steps: open (shapes first) -> ``detect_vae_layout`` -> config (diffusers
config.json, else inferred from the shapes) -> ``check_vae_source`` (every missing / unexpected / mis-shaped
key in one ``CheckpointError``, before anything is written) -> copy each tensor into its leaf -> the DiT
converter's ``write_converted``: ``dst/{config.json (WanVAEConfig), conversion.json, params/}``.

The key table (``vae_key_table``) is one list of rows (parameter path, diffusers key, original key, layout
transform), built by walking the model's modules and naming each from the small literal per-module tables below;
the original numbers the decoder's residual blocks and upsamplers in one flat list, which the walk counts.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rehyat_jax.convert.safetensors_source import CheckpointError
from rehyat_jax.convert.tensor_source import TORCH_SUFFIXES, TensorSource, open_safetensors, open_torch_file
from rehyat_jax.convert.wan_dit import CONFIG_FILE, PARAMS_DIR, SOURCE_FLOAT_DTYPES, TARGET_DTYPES, restore_params, write_converted
from rehyat_jax.models.wan_vae import (VIDEO_CHANNELS, Downsample, ResidualBlock, Upsample, WanVAE,
                                       WanVAEConfig)

Layout = Literal["diffusers", "original"]
# conv3d: [out, in, kt, kh, kw] -> [kt, kh, kw, in, out]; conv2d: [out, in, kh, kw] -> [kh, kw, in, out];
# norm_video / norm_image: RMS_norm gamma [C, 1, 1, 1] / [C, 1, 1] -> [C].
Transform = Literal["conv3d", "conv2d", "norm_video", "norm_image", "copy"]
Progress = Callable[[str], None] | None
ParamPath = tuple[str | int, ...]

DIFFUSERS_SUBFOLDER = "vae"
MAX_LISTED_PER_PROBLEM = 20


@dataclasses.dataclass(frozen=True)
class KeyRow:
  """One parameter: its path in the ``WanVAE`` tree and its key in either checkpoint layout."""

  path: ParamPath
  diffusers: str
  original: str
  transform: Transform

  def key(self, layout: Layout) -> str:
    return self.diffusers if layout == "diffusers" else self.original


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


def vae_key_table(cfg: WanVAEConfig) -> tuple[KeyRow, ...]:
  """Every parameter of a ``WanVAE(cfg)`` with its diffusers and original key."""
  vae = _abstract_vae(cfg)
  rows: list[KeyRow] = []

  def add(table: _Rows, path: ParamPath, diffusers: str, original: str) -> None:
    rows.extend(KeyRow(path + sub, f"{diffusers}.{d}", f"{original}.{o}", t) for sub, d, o, t in table)

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
  return tuple(rows)


def target_shapes(cfg: WanVAEConfig) -> dict[ParamPath, tuple[int, ...]]:
  """Parameter path -> shape of a ``WanVAE(cfg)``."""
  state = nnx.to_pure_dict(nnx.state(_abstract_vae(cfg)))
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  return {tuple(getattr(k, "key", k) for k in path): tuple(leaf.shape) for path, leaf in leaves}


def source_shape(transform: Transform, target: tuple[int, ...]) -> tuple[int, ...]:
  """The torch shape of the tensor that becomes a leaf of shape ``target``."""
  if transform == "conv3d":
    kt, kh, kw, cin, cout = target
    return (cout, cin, kt, kh, kw)
  if transform == "conv2d":
    kh, kw, cin, cout = target
    return (cout, cin, kh, kw)
  if transform == "norm_video":
    return (target[0], 1, 1, 1)
  if transform == "norm_image":
    return (target[0], 1, 1)
  return target


def to_target_layout(tensor: np.ndarray, transform: Transform) -> np.ndarray:
  """A view of a torch-layout tensor in the JAX layout."""
  if transform == "conv3d":
    return tensor.transpose(2, 3, 4, 1, 0)
  if transform == "conv2d":
    return tensor.transpose(2, 3, 1, 0)
  if transform in ("norm_video", "norm_image"):
    return tensor.reshape(tensor.shape[0])
  return tensor


def expected_source_keys(cfg: WanVAEConfig, layout: Layout) -> dict[str, tuple[int, ...]]:
  """Every key a ``layout`` checkpoint of ``cfg`` holds -> its torch shape."""
  shapes = target_shapes(cfg)
  table = vae_key_table(cfg)
  if {row.path for row in table} != set(shapes):
    raise AssertionError("the VAE key table does not cover the WanVAE parameters one to one")
  return {row.key(layout): source_shape(row.transform, shapes[row.path]) for row in table}


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
      return open_torch_file(torch_files[0])
  elif path.suffix in TORCH_SUFFIXES:
    return open_torch_file(path)
  return open_safetensors(path)


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
  if layout == "diffusers" and source.config_path is not None:
    try:
      config = json.loads(source.config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
      raise CheckpointError(f"{source.config_path}: unreadable config ({e})") from e
    return config_from_diffusers_json(config, source.config_path)
  return infer_vae_config(source.shapes, layout)


def check_vae_source(source: TensorSource, layout: Layout, cfg: WanVAEConfig) -> None:
  """Raises one CheckpointError listing every missing, unexpected, mis-shaped or non-float tensor."""
  expected = expected_source_keys(cfg, layout)
  found = source.shapes
  problems = [
      ("missing", [f"{k}  expected {list(s)}" for k, s in expected.items() if k not in found]),
      ("unexpected", [f"{k}  {list(found[k])}" for k in sorted(found) if k not in expected]),
      ("mis-shaped", [f"{k}: expected {list(s)}, found {list(found[k])}"
                      for k, s in expected.items() if k in found and tuple(found[k]) != s]),
      ("non-float", [f"{k}: {source.dtype_names[k]}" for k in expected
                     if k in found and source.dtype_names[k] not in SOURCE_FLOAT_DTYPES]),
  ]
  if not any(items for _, items in problems):
    return
  lines = [f"{source.path} does not match a Wan2.1 VAE ({layout} layout, base_dim={cfg.base_dim}, "
           f"z_dim={cfg.z_dim}, dim_mult={list(cfg.dim_mult)}, num_res_blocks={cfg.num_res_blocks}, "
           f"temperal_downsample={list(cfg.temperal_downsample)}):"]
  for kind, items in problems:
    if items:
      lines.append(f"  {len(items)} {kind} key{'s' if len(items) > 1 else ''}:")
      lines.extend(f"    {item}" for item in items[:MAX_LISTED_PER_PROBLEM])
      if len(items) > MAX_LISTED_PER_PROBLEM:
        lines.append(f"    ... and {len(items) - MAX_LISTED_PER_PROBLEM} more")
  raise CheckpointError("\n".join(lines))


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
  if dtype not in TARGET_DTYPES:
    raise CheckpointError(f"unsupported target dtype {dtype!r}; choose one of {sorted(TARGET_DTYPES)}")
  source = open_vae_source(src)
  layout = detect_vae_layout(set(source.shapes))
  cfg = config if config is not None else detect_vae_config(source, layout)
  check_vae_source(source, layout, cfg)

  params = jax.tree_util.tree_map(lambda leaf: None, nnx.to_pure_dict(nnx.state(_abstract_vae(cfg))))
  for row in vae_key_table(cfg):
    leaf = to_target_layout(np.asarray(source.read(row.key(layout))), row.transform)
    parent = params
    for name in row.path[:-1]:
      parent = parent[name]
    parent[row.path[-1]] = np.ascontiguousarray(leaf, dtype=TARGET_DTYPES[dtype])
  if progress is not None:
    progress(f"{source.path}: {layout} layout, {len(source.shapes)} tensors -> {dtype}; writing {dst}")
  conversion = {
      "model": "wan2.1-vae",
      "source": str(source.path.resolve()),
      "layout": layout,
      "dtype": dtype,
      "num_tensors": len(source.shapes),
      "converted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "seconds_to_convert": round(time.perf_counter() - start, 2),
  }
  write_converted(dst, params, cfg, conversion, overwrite=overwrite)
  return cfg


def read_wan_vae_config(path: str | os.PathLike) -> WanVAEConfig:
  """The ``WanVAEConfig`` of a converted VAE directory."""
  config_file = Path(path) / CONFIG_FILE
  if not config_file.is_file() or not (Path(path) / PARAMS_DIR).is_dir():
    raise CheckpointError(f"{path} is not a converted checkpoint (expected {CONFIG_FILE} and {PARAMS_DIR}/; "
                          "create one with convert_wan_vae)")
  try:
    return WanVAEConfig.from_dict(json.loads(config_file.read_text()))
  except (UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError) as e:
    raise CheckpointError(f"{config_file}: not a Wan2.1 VAE config ({e})") from e


def load_wan_vae(path: str | os.PathLike, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32) -> WanVAE:
  """The ``WanVAE`` stored at ``path`` by ``convert_wan_vae``; parameters restored straight into ``param_dtype``."""
  cfg = read_wan_vae_config(path)
  abstract = nnx.eval_shape(lambda: WanVAE(cfg, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype))
  graphdef, state = nnx.split(abstract)
  target = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), nnx.to_pure_dict(state))
  nnx.replace_by_pure_dict(state, restore_params(path, target))
  return nnx.merge(graphdef, state)
