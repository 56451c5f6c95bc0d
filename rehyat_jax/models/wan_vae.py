"""The Wan2.1 video VAE (3D causal, 4x8x8 compression) in Flax NNX, a drop-in for diffusers' ``AutoencoderKLWan``.

Public layout: videos [B, 3, T, H, W] in [-1, 1] with T = 4k + 1 and H, W divisible by 8; latents
[B, 16, 1 + (T - 1) / 4, H / 8, W / 8], normalised with the published per-channel mean / std (what the DiT
sees). Inside, activations are channels-last [B, T, H, W, C].

Time is causal everywhere: a time convolution sees only earlier frames (zeros before the first frame), and
attention mixes positions within one frame. Like the original, the encoder runs on the first frame alone and
then on groups of 4 frames, and the decoder on one latent frame at a time, each chunk carrying a feature cache:
for every causal conv the last ``CACHE_T`` input frames of the previous chunk. The cache here is a pytree
returned by every call (``None`` means "start of the video"), so both directions are a first step followed by
a ``jax.lax.scan`` over the remaining chunks, with memory independent of the video length apart from the
output. The first chunk differs from the rest only in the temporal resamplers: the first frame is neither
duplicated (decoder) nor merged with later ones (encoder), which is what makes T = 1 + 4k.

API: ``encode`` (normalised latents) / ``encode_moments`` (raw posterior mean and log-variance); ``decode``
(whole video, scanned); ``decode_step(cache, latent_frame)`` (one latent frame, starting from ``cache=None``)
and ``decode_stream`` (a generator of frame groups over a compiled ``decode_step``, for writers);
``normalize_latents`` / ``denormalize_latents``. Checkpoints: ``rehyat_jax.convert.wan_vae``.

All methods trace cleanly; wrap them in ``jax.jit`` with the module as an argument
(``jax.jit(lambda vae, z: vae.decode(z))``) so parameters are inputs rather than baked-in constants.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rehyat_jax.models.layers import annotated_param, ones, zeros

# Frames of conv input each causal conv carries from one chunk to the next (its kernel's reach into the past).
CACHE_T = 2
VIDEO_CHANNELS = 3
RMS_NORM_EPS = 1e-12  # torch.nn.functional.normalize's floor on the norm
LOGVAR_RANGE = (-30.0, 20.0)  # diffusers' DiagonalGaussianDistribution clamp

# Published per-channel statistics of the Wan2.1 latent space (the original release's ``WanVAE`` mean / std, also in diffusers' ``AutoencoderKLWan`` config).
WAN21_LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715,
                      0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652,
                     1.5579, 1.6382, 1.1253, 2.8251, 1.9160)

CONV_KERNEL_AXES_3D = (None, None, None, "conv_in", "conv_out")
CONV_KERNEL_AXES_2D = (None, None, "conv_in", "conv_out")
conv_init = nnx.initializers.lecun_normal()  # fan-in over kernel window x input channels

Cache = Any  # a pytree of cached frames, or None at the start of the video
DecodeCache = Any


@dataclasses.dataclass(frozen=True)
class WanVAEConfig:
  """Architecture of the Wan2.1 VAE; field names follow diffusers' ``AutoencoderKLWan`` (typo included)."""

  base_dim: int = 96
  z_dim: int = 16
  dim_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  attn_scales: tuple[float, ...] = ()
  temperal_downsample: tuple[bool, ...] = (False, True, True)
  latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
  latents_std: tuple[float, ...] = WAN21_LATENTS_STD

  def __post_init__(self):
    for name, kind in (("dim_mult", int), ("attn_scales", float), ("temperal_downsample", bool),
                       ("latents_mean", float), ("latents_std", float)):
      object.__setattr__(self, name, tuple(kind(v) for v in getattr(self, name)))
    if self.attn_scales:
      raise ValueError(f"WanVAEConfig: attn_scales={self.attn_scales} is not supported (Wan2.1 uses none)")
    if len(self.temperal_downsample) != len(self.dim_mult) - 1:
      raise ValueError(f"WanVAEConfig: temperal_downsample needs {len(self.dim_mult) - 1} entries (one per "
                       f"downsampling stage), got {self.temperal_downsample}")
    if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
      raise ValueError(f"WanVAEConfig: latents_mean / latents_std need z_dim={self.z_dim} entries, got "
                       f"{len(self.latents_mean)} / {len(self.latents_std)}")
    if min(self.latents_std) <= 0:
      raise ValueError("WanVAEConfig: latents_std must be positive")

  @classmethod
  def tiny(cls) -> "WanVAEConfig":
    """The tiny VAE of diffusers' Wan pipeline tests (same compression, base_dim 3)."""
    return cls(base_dim=3, z_dim=16, dim_mult=(1, 1, 1, 1), num_res_blocks=1)

  @property
  def temporal_factor(self) -> int:
    return 2 ** sum(self.temperal_downsample)

  @property
  def spatial_factor(self) -> int:
    return 2 ** (len(self.dim_mult) - 1)

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    return {name: list(value) if isinstance(value, tuple) else value for name, value in d.items()}

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "WanVAEConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"WanVAEConfig: unknown fields {unknown}")
    return cls(**d)


def _part(cache: Cache, *keys) -> Cache:
  """``cache[k0][k1]...``, or None (start of the video) when ``cache`` is None."""
  for key in keys:
    if cache is None:
      return None
    cache = cache[key]
  return cache


# ----------------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------------

class CausalConv3d(nnx.Module):
  """Conv3d that sees only the past in time and is zero-padded ``k // 2`` on each side in space.

  Its input is prefixed with ``past_frames`` earlier frames (zeros at the start of the video) and convolved
  without time padding. Kernel [kt, kh, kw, in, out] (torch: [out, in, kt, kh, kw]).
  """

  def __init__(self, in_dim: int, out_dim: int, kernel_size: tuple[int, int, int], *, rngs: nnx.Rngs,
               stride_t: int = 1, past_frames: int | None = None, dtype: Any = jnp.float32,
               param_dtype: Any = jnp.float32):
    kt, kh, kw = kernel_size
    self.past_frames = kt - 1 if past_frames is None else past_frames
    self.stride_t = stride_t
    self.spatial_padding = ((kh // 2, kh // 2), (kw // 2, kw // 2))
    self.dtype = dtype
    self.kernel = annotated_param(conv_init, CONV_KERNEL_AXES_3D, rngs, (kt, kh, kw, in_dim, out_dim), param_dtype)
    self.bias = annotated_param(zeros, ("conv_out",), rngs, (out_dim,), param_dtype)

  def __call__(self, x: jax.Array, past: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """x [B, T, H, W, C]; past [B, past_frames, H, W, C] or None.

    Returns the output and the last ``past_frames`` frames of [past, x] (the next chunk's past).
    """
    if past is None:
      past = jnp.zeros((x.shape[0], self.past_frames, *x.shape[2:]), x.dtype)
    x = jnp.concatenate([past.astype(x.dtype), x], axis=1)
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), self.kernel[...].astype(self.dtype), window_strides=(self.stride_t, 1, 1),
        padding=((0, 0), *self.spatial_padding), dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
    return y + self.bias[...].astype(self.dtype), x[:, x.shape[1] - self.past_frames:]


class PointwiseConv3d(nnx.Module):
  """1x1x1 Conv3d: a per-position linear map of the channels (no time reach, so no cache).

  The kernel keeps the Conv3d shape [1, 1, 1, in, out] so checkpoints map one to one.
  """

  def __init__(self, in_dim: int, out_dim: int, *, rngs: nnx.Rngs, dtype: Any = jnp.float32,
               param_dtype: Any = jnp.float32):
    self.dtype = dtype
    self.kernel = annotated_param(conv_init, CONV_KERNEL_AXES_3D, rngs, (1, 1, 1, in_dim, out_dim), param_dtype)
    self.bias = annotated_param(zeros, ("conv_out",), rngs, (out_dim,), param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.kernel[...].reshape(self.kernel.shape[-2:]).astype(self.dtype)
    return x.astype(self.dtype) @ kernel + self.bias[...].astype(self.dtype)


class FrameConv2d(nnx.Module):
  """Conv2d applied to every frame on its own. Kernel [kh, kw, in, out] (torch: [out, in, kh, kw])."""

  def __init__(self, in_dim: int, out_dim: int, kernel_size: int, *, rngs: nnx.Rngs, stride: int = 1,
               padding: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0)), dtype: Any = jnp.float32,
               param_dtype: Any = jnp.float32):
    self.stride = stride
    self.padding = padding
    self.dtype = dtype
    self.kernel = annotated_param(conv_init, CONV_KERNEL_AXES_2D, rngs,
                                  (kernel_size, kernel_size, in_dim, out_dim), param_dtype)
    self.bias = annotated_param(zeros, ("conv_out",), rngs, (out_dim,), param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    """x [B, T, H, W, C] -> [B, T, H', W', out]."""
    b, t = x.shape[:2]
    y = jax.lax.conv_general_dilated(
        x.reshape(b * t, *x.shape[2:]).astype(self.dtype), self.kernel[...].astype(self.dtype),
        window_strides=(self.stride, self.stride), padding=self.padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = y + self.bias[...].astype(self.dtype)
    return y.reshape(b, t, *y.shape[1:])


class ChannelRMSNorm(nnx.Module):
  """Wan's RMS_norm: ``x / max(||x||, 1e-12) * sqrt(C) * scale`` over channels, in float32."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs, param_dtype: Any = jnp.float32):
    self.scale = annotated_param(ones, ("norm",), rngs, (dim,), param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    xf = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(jnp.square(xf), axis=-1, keepdims=True))
    y = xf / jnp.maximum(norm, RMS_NORM_EPS) * math.sqrt(x.shape[-1]) * self.scale[...].astype(jnp.float32)
    return y.astype(x.dtype)


class ResidualBlock(nnx.Module):
  """norm -> SiLU -> causal conv, twice, plus a (1x1x1-projected when widths differ) shortcut."""

  def __init__(self, in_dim: int, out_dim: int, *, rngs: nnx.Rngs, dtype: Any = jnp.float32,
               param_dtype: Any = jnp.float32):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.norm1 = ChannelRMSNorm(in_dim, rngs=rngs, param_dtype=param_dtype)
    self.conv1 = CausalConv3d(in_dim, out_dim, (3, 3, 3), **kw)
    self.norm2 = ChannelRMSNorm(out_dim, rngs=rngs, param_dtype=param_dtype)
    self.conv2 = CausalConv3d(out_dim, out_dim, (3, 3, 3), **kw)
    self.conv_shortcut = PointwiseConv3d(in_dim, out_dim, **kw) if in_dim != out_dim else None

  def __call__(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
    h, conv1 = self.conv1(jax.nn.silu(self.norm1(x)), _part(cache, "conv1"))
    h, conv2 = self.conv2(jax.nn.silu(self.norm2(h)), _part(cache, "conv2"))
    return h + shortcut, {"conv1": conv1, "conv2": conv2}


class AttentionBlock(nnx.Module):
  """Single-head self-attention over the positions of each frame (no mixing across time), residual."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.norm = ChannelRMSNorm(dim, rngs=rngs, param_dtype=param_dtype)
    self.to_qkv = FrameConv2d(dim, 3 * dim, 1, **kw)
    self.proj = FrameConv2d(dim, dim, 1, **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, h, w, c = x.shape
    q, k, v = jnp.split(self.to_qkv(self.norm(x)).reshape(b * t, h * w, 3 * c), 3, axis=-1)
    scores = jnp.einsum("nqc,nkc->nqk", q, k).astype(jnp.float32) / math.sqrt(c)
    attended = jnp.einsum("nqk,nkc->nqc", jax.nn.softmax(scores, axis=-1).astype(v.dtype), v)
    return x + self.proj(attended.reshape(b, t, h, w, c))


class MidBlock(nnx.Module):
  """Residual block, attention, residual block (the bottleneck of encoder and decoder)."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.resnets = nnx.List([ResidualBlock(dim, dim, **kw), ResidualBlock(dim, dim, **kw)])
    self.attentions = nnx.List([AttentionBlock(dim, **kw)])

  def __call__(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    x, first = self.resnets[0](x, _part(cache, "resnets", 0))
    x = self.attentions[0](x)
    x, second = self.resnets[1](x, _part(cache, "resnets", 1))
    return x, {"resnets": (first, second)}


class Downsample(nnx.Module):
  """Halves H and W (pad right / bottom by one, 3x3 conv, stride 2); with ``temporal`` also halves time.

  The time conv (kernel 3, stride 2) sees the previous chunk's last frame followed by this chunk. The first
  chunk (the first frame alone) skips it, so 1 + 2k frames become 1 + k.
  """

  def __init__(self, dim: int, temporal: bool, *, rngs: nnx.Rngs, dtype: Any = jnp.float32,
               param_dtype: Any = jnp.float32):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.conv = FrameConv2d(dim, dim, 3, stride=2, padding=((0, 1), (0, 1)), **kw)
    self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride_t=2, past_frames=1, **kw) if temporal else None

  def __call__(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    x = self.conv(x)
    if self.time_conv is None:
      return x, None
    if cache is None:
      return x, x[:, -1:]
    return self.time_conv(x, cache)


class Upsample(nnx.Module):
  """Doubles H and W (nearest, then a 3x3 conv to ``out_dim``); with ``temporal`` first doubles time.

  The time conv maps C channels to 2C, read as two consecutive frames (channels [0, C) first). The first
  chunk (the first latent frame) skips it, so 1 + k frames become 1 + 2k; the conv's cache starts from zeros
  at the second chunk.
  """

  def __init__(self, dim: int, out_dim: int, temporal: bool, *, rngs: nnx.Rngs, dtype: Any = jnp.float32,
               param_dtype: Any = jnp.float32):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), **kw) if temporal else None
    self.conv = FrameConv2d(dim, out_dim, 3, padding=((1, 1), (1, 1)), **kw)

  def __call__(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    next_cache = None
    if self.time_conv is not None:
      b, t, h, w, c = x.shape
      if cache is None:
        next_cache = jnp.zeros((b, CACHE_T, h, w, c), x.dtype)
      else:
        y, next_cache = self.time_conv(x, cache)
        x = y.reshape(b, t, h, w, 2, c).transpose(0, 1, 4, 2, 3, 5).reshape(b, 2 * t, h, w, c)
    # Nearest-neighbour x2 ("nearest-exact" at an integer scale) repeats every pixel.
    x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
    return self.conv(x), next_cache


class UpBlock(nnx.Module):
  """``num_resnets`` residual blocks, then an optional upsampler."""

  def __init__(self, in_dim: int, out_dim: int, num_resnets: int, *, upsample: bool, temporal: bool,
               rngs: nnx.Rngs, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.resnets = nnx.List([ResidualBlock(in_dim if i == 0 else out_dim, out_dim, **kw)
                             for i in range(num_resnets)])
    # Wan2.1's upsamplers halve the width; the next block starts from that.
    self.upsampler = Upsample(out_dim, out_dim // 2, temporal, **kw) if upsample else None

  def __call__(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    resnets = []
    for i, resnet in enumerate(self.resnets):
      x, c = resnet(x, _part(cache, "resnets", i))
      resnets.append(c)
    upsampler = None
    if self.upsampler is not None:
      x, upsampler = self.upsampler(x, _part(cache, "upsampler"))
    return x, {"resnets": tuple(resnets), "upsampler": upsampler}


# ----------------------------------------------------------------------------------------------------------
# Encoder and decoder
# ----------------------------------------------------------------------------------------------------------

class Encoder(nnx.Module):
  """Video chunk [B, T, H, W, 3] -> posterior moments [B, T', H/8, W/8, 2 z_dim] (before quant_conv)."""

  def __init__(self, cfg: WanVAEConfig, *, rngs: nnx.Rngs, dtype: Any = jnp.float32,
               param_dtype: Any = jnp.float32):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
    self.conv_in = CausalConv3d(VIDEO_CHANNELS, dims[0], (3, 3, 3), **kw)
    # One flat list in diffusers' order (residual blocks of a stage, then its downsampler), as checkpoints number it.
    blocks: list[nnx.Module] = []
    for stage, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
      for i in range(cfg.num_res_blocks):
        blocks.append(ResidualBlock(in_dim if i == 0 else out_dim, out_dim, **kw))
      if stage < len(cfg.dim_mult) - 1:
        blocks.append(Downsample(out_dim, cfg.temperal_downsample[stage], **kw))
    self.down_blocks = nnx.List(blocks)
    self.mid_block = MidBlock(dims[-1], **kw)
    self.norm_out = ChannelRMSNorm(dims[-1], rngs=rngs, param_dtype=param_dtype)
    self.conv_out = CausalConv3d(dims[-1], 2 * cfg.z_dim, (3, 3, 3), **kw)

  def __call__(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    x, conv_in = self.conv_in(x, _part(cache, "conv_in"))
    down_blocks = []
    for i, block in enumerate(self.down_blocks):
      x, c = block(x, _part(cache, "down_blocks", i))
      down_blocks.append(c)
    x, mid_block = self.mid_block(x, _part(cache, "mid_block"))
    x, conv_out = self.conv_out(jax.nn.silu(self.norm_out(x)), _part(cache, "conv_out"))
    return x, {"conv_in": conv_in, "down_blocks": tuple(down_blocks), "mid_block": mid_block,
               "conv_out": conv_out}


class Decoder(nnx.Module):
  """Latent chunk [B, T', h, w, z_dim] (after post_quant_conv) -> video [B, T, 8h, 8w, 3], unclamped."""

  def __init__(self, cfg: WanVAEConfig, *, rngs: nnx.Rngs, dtype: Any = jnp.float32,
               param_dtype: Any = jnp.float32):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    dims = [cfg.base_dim * m for m in (cfg.dim_mult[-1], *reversed(cfg.dim_mult))]
    temporal_upsample = tuple(reversed(cfg.temperal_downsample))
    self.conv_in = CausalConv3d(cfg.z_dim, dims[0], (3, 3, 3), **kw)
    self.mid_block = MidBlock(dims[0], **kw)
    blocks = []
    for stage, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
      upsample = stage < len(cfg.dim_mult) - 1
      blocks.append(UpBlock(in_dim if stage == 0 else in_dim // 2, out_dim, cfg.num_res_blocks + 1,
                            upsample=upsample, temporal=upsample and temporal_upsample[stage], **kw))
    self.up_blocks = nnx.List(blocks)
    self.norm_out = ChannelRMSNorm(dims[-1], rngs=rngs, param_dtype=param_dtype)
    self.conv_out = CausalConv3d(dims[-1], VIDEO_CHANNELS, (3, 3, 3), **kw)

  def __call__(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    x, conv_in = self.conv_in(x, _part(cache, "conv_in"))
    x, mid_block = self.mid_block(x, _part(cache, "mid_block"))
    up_blocks = []
    for i, block in enumerate(self.up_blocks):
      x, c = block(x, _part(cache, "up_blocks", i))
      up_blocks.append(c)
    x, conv_out = self.conv_out(jax.nn.silu(self.norm_out(x)), _part(cache, "conv_out"))
    return x, {"conv_in": conv_in, "mid_block": mid_block, "up_blocks": tuple(up_blocks), "conv_out": conv_out}


# ----------------------------------------------------------------------------------------------------------
# The autoencoder
# ----------------------------------------------------------------------------------------------------------

def _channels_last(x: jax.Array) -> jax.Array:
  return jnp.moveaxis(x, 1, -1)


def _channels_first(x: jax.Array) -> jax.Array:
  return jnp.moveaxis(x, -1, 1)


class WanVAE(nnx.Module):
  """Wan2.1 VAE: ``encode`` videos to normalised latents, ``decode`` them back (see the module docstring)."""

  def __init__(self, cfg: WanVAEConfig = WanVAEConfig(), *, rngs: nnx.Rngs, dtype: Any = jnp.float32,
               param_dtype: Any = jnp.float32):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.cfg = cfg
    self.dtype = dtype
    self.encoder = Encoder(cfg, **kw)
    self.quant_conv = PointwiseConv3d(2 * cfg.z_dim, 2 * cfg.z_dim, **kw)
    self.post_quant_conv = PointwiseConv3d(cfg.z_dim, cfg.z_dim, **kw)
    self.decoder = Decoder(cfg, **kw)

  # -- normalisation ------------------------------------------------------------------------------------

  def _stats(self) -> tuple[jax.Array, jax.Array]:
    """(mean, 1/std) as float32 [z_dim], the form the original and diffusers' pipelines compute with."""
    mean = np.asarray(self.cfg.latents_mean, np.float32)
    inv_std = np.float32(1.0) / np.asarray(self.cfg.latents_std, np.float32)
    return jnp.asarray(mean), jnp.asarray(inv_std)

  def normalize_latents(self, mean: jax.Array) -> jax.Array:
    """Posterior mean [B, z, T', h, w] -> what the DiT sees: ``(mean - latents_mean) / latents_std``."""
    mu, inv_std = self._stats()
    return (mean.astype(jnp.float32) - mu[:, None, None, None]) * inv_std[:, None, None, None]

  def denormalize_latents(self, latents: jax.Array) -> jax.Array:
    """The inverse of ``normalize_latents``."""
    mu, inv_std = self._stats()
    return latents.astype(jnp.float32) / inv_std[:, None, None, None] + mu[:, None, None, None]

  # -- encoding -----------------------------------------------------------------------------------------

  def _check_videos(self, videos: jax.Array) -> None:
    f_t, f_s = self.cfg.temporal_factor, self.cfg.spatial_factor
    if videos.ndim != 5 or videos.shape[1] != VIDEO_CHANNELS:
      raise ValueError(f"WanVAE.encode: expected videos [B, {VIDEO_CHANNELS}, T, H, W], got shape "
                       f"{tuple(videos.shape)}")
    _, _, t, h, w = videos.shape
    if t < 1 or (t - 1) % f_t:
      raise ValueError(f"WanVAE.encode: the frame count must be {f_t}k + 1 (1, {f_t + 1}, {2 * f_t + 1}, ...), "
                       f"got T={t}; e.g. keep the first {1 + (max(t, 1) - 1) // f_t * f_t}")
    if h % f_s or w % f_s:
      raise ValueError(f"WanVAE.encode: height and width must be divisible by {f_s}, got H={h}, W={w}")

  def _encode_chunk(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    moments, cache = self.encoder(x, cache)
    return self.quant_conv(moments), cache

  def encode_moments(self, videos: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Videos [B, 3, T, H, W] -> the posterior's (mean, logvar), each [B, z, T', h, w], un-normalised.

    ``mean`` equals diffusers' ``encode(x).latent_dist.mean``; logvar is clamped to [-30, 20] as there.
    """
    self._check_videos(videos)
    x = _channels_last(videos.astype(self.dtype))
    b, t, h, w, c = x.shape
    moments, cache = self._encode_chunk(x[:, :1], None)
    groups = (t - 1) // self.cfg.temporal_factor
    if groups:
      chunks = x[:, 1:].reshape(b, groups, self.cfg.temporal_factor, h, w, c).swapaxes(0, 1)

      def step(cache: Cache, chunk: jax.Array) -> tuple[Cache, jax.Array]:
        out, cache = self._encode_chunk(chunk, cache)
        return cache, out

      _, rest = jax.lax.scan(step, cache, chunks)  # [groups, B, 1, h', w', 2z]
      moments = jnp.concatenate([moments, rest.swapaxes(0, 1).reshape(b, groups, *rest.shape[3:])], axis=1)
    mean, logvar = jnp.split(_channels_first(moments), 2, axis=1)
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)

  def encode(self, videos: jax.Array) -> jax.Array:
    """Videos [B, 3, T, H, W] in [-1, 1] -> normalised latents [B, z, 1 + (T - 1)/4, H/8, W/8] (posterior mean)."""
    mean, _ = self.encode_moments(videos)
    return self.normalize_latents(mean)

  # -- decoding -----------------------------------------------------------------------------------------

  def _check_latents(self, latents: jax.Array, caller: str) -> None:
    if latents.ndim != 5 or latents.shape[1] != self.cfg.z_dim or latents.shape[2] < 1:
      raise ValueError(f"WanVAE.{caller}: expected latents [B, {self.cfg.z_dim}, T', h, w] with T' >= 1, got "
                       f"shape {tuple(latents.shape)}")

  def _decode_input(self, latents: jax.Array) -> jax.Array:
    """Normalised latents [B, z, T', h, w] -> decoder input [B, T', h, w, z]."""
    return self.post_quant_conv(_channels_last(self.denormalize_latents(latents).astype(self.dtype)))

  def decode_step(self, cache: DecodeCache | None, latent_frame: jax.Array) -> tuple[DecodeCache, jax.Array]:
    """Decodes one normalised latent frame [B, z, 1, h, w] given the cache of the frames before it.

    Start with ``cache=None``: the first latent frame gives 1 video frame, every later one 4.
    Returns (the cache for the next frame, video frames [B, 3, 1 or 4, 8h, 8w] clamped to [-1, 1]).
    """
    self._check_latents(latent_frame, "decode_step")
    if latent_frame.shape[2] != 1:
      raise ValueError(f"WanVAE.decode_step: expected one latent frame, got {latent_frame.shape[2]}")
    frames, cache = self.decoder(self._decode_input(latent_frame), cache)
    return cache, _channels_first(jnp.clip(frames, -1.0, 1.0))

  def decode(self, latents: jax.Array) -> jax.Array:
    """Normalised latents [B, z, T', h, w] -> videos [B, 3, 1 + 4(T' - 1), 8h, 8w] in [-1, 1].

    The first latent frame is decoded alone, the others by a ``jax.lax.scan`` carrying the cache, so
    temporary memory does not grow with T' beyond the output.
    """
    self._check_latents(latents, "decode")
    z = self._decode_input(latents)
    video, cache = self.decoder(z[:, :1], None)
    if z.shape[1] > 1:

      def step(cache: DecodeCache, frame: jax.Array) -> tuple[DecodeCache, jax.Array]:
        out, cache = self.decoder(frame[:, None], cache)
        return cache, out

      _, rest = jax.lax.scan(step, cache, z[:, 1:].swapaxes(0, 1))  # [T'-1, B, 4, H, W, 3]
      b = z.shape[0]
      rest = rest.swapaxes(0, 1).reshape(b, -1, *rest.shape[3:])
      video = jnp.concatenate([video, rest], axis=1)
    return _channels_first(jnp.clip(video, -1.0, 1.0))

  def decode_stream(self, latents: jax.Array) -> Iterator[jax.Array]:
    """Yields the video of ``latents`` frame group by frame group ([B, 3, 1, H, W], then [B, 3, 4, H, W] per
    latent frame), each from one compiled ``decode_step``; memory holds one group and the cache."""
    self._check_latents(latents, "decode_stream")
    cache = None
    for i in range(latents.shape[2]):
      cache, frames = _jitted_decode_step(self, cache, latents[:, :, i:i + 1])
      yield frames


@jax.jit
def _jitted_decode_step(vae: WanVAE, cache: DecodeCache | None,
                        latent_frame: jax.Array) -> tuple[DecodeCache, jax.Array]:
  return vae.decode_step(cache, latent_frame)
