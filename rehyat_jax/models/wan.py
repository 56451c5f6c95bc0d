"""The Wan2.1 text-to-video DiT in Flax NNX, a drop-in for diffusers' ``WanTransformer3DModel``.

Call: latents [B, C, F, H, W], timesteps [B], text embeddings [B, L, text_dim] -> flow
prediction [B, C, F, H, W]. Blocks run either stacked under ``nnx.scan`` (parameters carry a
leading [num_layers] axis; the on-disk layout of converted checkpoints) or as a plain list; both
compute the same function. Precision follows ``PrecisionPolicy``: big matmuls in the compute
dtype, and float32 for the time path, modulation, norms, gated residual adds (the residual
stream is float32, as in the original after block 1), RoPE and the head.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from rehyat_jax.attention.softmax import softmax_attention
from rehyat_jax.models import rope as rope_lib
from rehyat_jax.models.config import PrecisionPolicy, WanConfig
from rehyat_jax.models.layers import (AffineLayerNorm, MLP2, PatchEmbed, RMSNorm, annotated_param, dense,
                                      layer_norm, sinusoidal_embedding, zeros)

REMAT_POLICIES: dict[str, Callable | None] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
  """How a model runs (not what it is): precision, layer scan, remat, softmax backend."""

  precision: str = "fp32"
  scan_layers: bool = True
  remat: str = "none"
  softmax_backend: str = "auto"

  def __post_init__(self):
    PrecisionPolicy.named(self.precision)
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"unknown remat policy {self.remat!r}; choose one of {sorted(REMAT_POLICIES)}")

  @property
  def policy(self) -> PrecisionPolicy:
    return PrecisionPolicy.named(self.precision)


@dataclasses.dataclass(frozen=True)
class Geometry:
  """Patch-grid size of the current input (static)."""

  frames: int
  height: int
  width: int

  @property
  def tokens_per_frame(self) -> int:
    return self.height * self.width

  @property
  def tokens(self) -> int:
    return self.frames * self.height * self.width


def _modulation_init(dim: int):
  def init(key, shape, dtype):
    return jax.random.normal(key, shape, dtype) / jnp.sqrt(jnp.asarray(dim, dtype))
  return init


class SelfAttention(nnx.Module):
  """q/k/v/o projections, RMSNorm over the full width before the head split, 3D RoPE, attention."""

  def __init__(self, cfg: WanConfig, run: RuntimeConfig, *, rngs: nnx.Rngs):
    p = run.policy
    self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
    self.compute_dtype = p.compute_dtype
    self.softmax_backend = run.softmax_backend
    mk = functools.partial(dense, rngs=rngs, param_dtype=p.param_dtype, dtype=p.compute_dtype)
    self.q = mk(cfg.dim, cfg.dim, ("embed", "heads"))
    self.k = mk(cfg.dim, cfg.dim, ("embed", "heads"))
    self.v = mk(cfg.dim, cfg.dim, ("embed", "heads"))
    self.o = mk(cfg.dim, cfg.dim, ("heads", "embed"))
    self.norm_q = RMSNorm(cfg.dim, cfg.eps, rngs=rngs)
    self.norm_k = RMSNorm(cfg.dim, cfg.eps, rngs=rngs)

  def qkv(self, x: jnp.ndarray, rope: rope_lib.RopeTables):
    """Post-RoPE q, k and v as [B, N, H, D] in the compute dtype."""
    b, n, _ = x.shape
    split = lambda t: t.reshape(b, n, self.num_heads, self.head_dim)
    q = rope_lib.apply_rope(split(self.norm_q(self.q(x))), rope)
    k = rope_lib.apply_rope(split(self.norm_k(self.k(x))), rope)
    v = split(self.v(x))
    cast = lambda t: t.astype(self.compute_dtype)
    return cast(q), cast(k), cast(v)

  def __call__(self, x: jnp.ndarray, rope: rope_lib.RopeTables, geometry: Geometry) -> jnp.ndarray:
    del geometry  # full softmax needs no frame structure
    q, k, v = self.qkv(x, rope)
    out = softmax_attention(q, k, v, backend=self.softmax_backend)
    return self.o(out.reshape(*x.shape[:2], -1))


class CrossAttention(nnx.Module):
  """Text cross-attention over every text position (Wan passes no text mask)."""

  def __init__(self, cfg: WanConfig, run: RuntimeConfig, *, rngs: nnx.Rngs):
    p = run.policy
    self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
    self.softmax_backend = run.softmax_backend
    mk = functools.partial(dense, rngs=rngs, param_dtype=p.param_dtype, dtype=p.compute_dtype)
    self.q = mk(cfg.dim, cfg.dim, ("embed", "heads"))
    self.k = mk(cfg.dim, cfg.dim, ("embed", "heads"))
    self.v = mk(cfg.dim, cfg.dim, ("embed", "heads"))
    self.o = mk(cfg.dim, cfg.dim, ("heads", "embed"))
    self.norm_q = RMSNorm(cfg.dim, cfg.eps, rngs=rngs)
    self.norm_k = RMSNorm(cfg.dim, cfg.eps, rngs=rngs)

  def __call__(self, x: jnp.ndarray, context: jnp.ndarray) -> jnp.ndarray:
    split = lambda t: t.reshape(*t.shape[:2], self.num_heads, self.head_dim)
    q = split(self.norm_q(self.q(x)))
    k = split(self.norm_k(self.k(context)))
    v = split(self.v(context))
    out = softmax_attention(q, k.astype(q.dtype), v.astype(q.dtype), backend=self.softmax_backend)
    return self.o(out.reshape(*x.shape[:2], -1))


class FeedForward(nnx.Module):
  def __init__(self, cfg: WanConfig, run: RuntimeConfig, *, rngs: nnx.Rngs):
    p = run.policy
    mk = functools.partial(dense, rngs=rngs, param_dtype=p.param_dtype, dtype=p.compute_dtype)
    self.fc1 = mk(cfg.dim, cfg.ffn_dim, ("embed", "mlp"))
    self.fc2 = mk(cfg.ffn_dim, cfg.dim, ("mlp", "embed"))

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=True))


class WanBlock(nnx.Module):
  """One Wan attention block; modulation and gated residual adds in float32."""

  def __init__(self, cfg: WanConfig, run: RuntimeConfig, *, rngs: nnx.Rngs):
    self.eps = cfg.eps
    self.compute_dtype = run.policy.compute_dtype
    self.modulation = annotated_param(_modulation_init(cfg.dim), (None, None, "norm"), rngs, (1, 6, cfg.dim))
    self.self_attn = SelfAttention(cfg, run, rngs=rngs)
    self.norm3 = AffineLayerNorm(cfg.dim, cfg.eps, rngs=rngs)
    self.cross_attn = CrossAttention(cfg, run, rngs=rngs)
    self.ffn = FeedForward(cfg, run, rngs=rngs)

  def __call__(self, x: jnp.ndarray, e0: jnp.ndarray, context: jnp.ndarray, rope: rope_lib.RopeTables,
               geometry: Geometry) -> jnp.ndarray:
    mod = self.modulation[...].astype(jnp.float32) + e0  # [B, 6, dim]
    shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = (mod[:, i:i + 1] for i in range(6))
    cd = self.compute_dtype
    h = layer_norm(x, self.eps) * (1 + scale_sa) + shift_sa
    x = x + self.self_attn(h.astype(cd), rope, geometry).astype(jnp.float32) * gate_sa
    x = x + self.cross_attn(self.norm3(x).astype(cd), context).astype(jnp.float32)
    h = layer_norm(x, self.eps) * (1 + scale_ff) + shift_ff
    return x + self.ffn(h.astype(cd)).astype(jnp.float32) * gate_ff


class Head(nnx.Module):
  """Output norm with its own 2-way modulation from ``e`` (not ``e0``), then the patch projection."""

  def __init__(self, cfg: WanConfig, *, rngs: nnx.Rngs):
    self.eps = cfg.eps
    self.modulation = annotated_param(_modulation_init(cfg.dim), (None, None, "norm"), rngs, (1, 2, cfg.dim))
    self.head = dense(cfg.dim, cfg.patch_volume * cfg.out_dim, ("embed", None), rngs=rngs, kernel_init=zeros)

  def __call__(self, x: jnp.ndarray, e: jnp.ndarray) -> jnp.ndarray:
    mod = self.modulation[...] + e[:, None, :]
    shift, scale = mod[:, 0:1], mod[:, 1:2]
    return self.head(layer_norm(x, self.eps) * (1 + scale) + shift)


def _stacked_blocks(cfg: WanConfig, run: RuntimeConfig, rngs: nnx.Rngs):
  @nnx.split_rngs(splits=cfg.num_layers)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def make(rngs):
    return WanBlock(cfg, run, rngs=rngs)
  return make(rngs)


class WanDiT(nnx.Module):
  """Wan2.1 T2V DiT. ``cfg`` fixes the architecture, ``run`` how it computes."""

  def __init__(self, cfg: WanConfig, run: RuntimeConfig = RuntimeConfig(), *, rngs: nnx.Rngs):
    self.cfg, self.run = cfg, run
    p = run.policy
    normal = nnx.initializers.normal(0.02)
    self.patch_embedding = PatchEmbed(cfg.in_dim, cfg.dim, cfg.patch_size, rngs=rngs,
                                      param_dtype=p.param_dtype, dtype=p.compute_dtype)
    self.text_embedding = MLP2(cfg.text_dim, cfg.dim, lambda t: jax.nn.gelu(t, approximate=True),
                               in_axis="text_embed", rngs=rngs, param_dtype=p.param_dtype, dtype=p.compute_dtype,
                               kernel_init=normal)
    self.time_embedding = MLP2(cfg.freq_dim, cfg.dim, jax.nn.silu, in_axis=None, rngs=rngs, kernel_init=normal)
    self.time_projection = dense(cfg.dim, 6 * cfg.dim, ("embed", "modulation"), rngs=rngs)
    if run.scan_layers:
      self.blocks = _stacked_blocks(cfg, run, rngs)
    else:
      self.blocks = nnx.List([WanBlock(cfg, run, rngs=rngs) for _ in range(cfg.num_layers)])
    self.head = Head(cfg, rngs=rngs)

  def embed(self, latents: jnp.ndarray, timesteps: jnp.ndarray, context: jnp.ndarray):
    """Tokens (float32 residual stream), e [B, dim], e0 [B, 6, dim], text [B, L, dim], geometry."""
    cfg = self.cfg
    if latents.ndim != 5 or latents.shape[1] != cfg.in_dim:
      raise ValueError(f"latents must be [B, {cfg.in_dim}, F, H, W]; got shape {latents.shape}")
    if context.ndim != 3 or context.shape[-1] != cfg.text_dim or context.shape[0] != latents.shape[0]:
      raise ValueError(f"text embeddings must be [B={latents.shape[0]}, L, {cfg.text_dim}]; got {context.shape}")
    if timesteps.shape != (latents.shape[0],):
      raise ValueError(f"timesteps must be [B={latents.shape[0]}]; got {timesteps.shape}")
    pt, ph, pw = cfg.patch_size
    _, _, f, h, w = latents.shape
    geometry = Geometry(f // pt, h // ph, w // pw)
    x = self.patch_embedding(latents).astype(jnp.float32)
    e = self.time_embedding(sinusoidal_embedding(timesteps, cfg.freq_dim))
    e0 = self.time_projection(jax.nn.silu(e)).reshape(-1, 6, cfg.dim)
    text = self.text_embedding(context.astype(self.run.policy.compute_dtype))
    return x, e, e0, text, geometry

  def unpatchify(self, out: jnp.ndarray, geometry: Geometry) -> jnp.ndarray:
    """[B, N, pt*ph*pw*C] in (pt, ph, pw, c) order -> [B, C, F, H, W]."""
    pt, ph, pw = self.cfg.patch_size
    b = out.shape[0]
    out = out.reshape(b, geometry.frames, geometry.height, geometry.width, pt, ph, pw, self.cfg.out_dim)
    out = out.transpose(0, 7, 1, 4, 2, 5, 3, 6)
    return out.reshape(b, self.cfg.out_dim, geometry.frames * pt, geometry.height * ph, geometry.width * pw)

  def run_blocks(self, x, e0, text, rope, geometry):
    policy = REMAT_POLICIES[self.run.remat]

    def body(x, block):
      return block(x, e0, text, rope, geometry)

    if self.run.scan_layers:
      if policy is not None:
        body = nnx.remat(body, policy=policy, prevent_cse=False)
      return nnx.scan(body, in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)(x, self.blocks)
    if policy is not None:
      body = nnx.remat(body, policy=policy)
    for block in self.blocks:
      x = body(x, block)
    return x

  def __call__(self, latents: jnp.ndarray, timesteps: jnp.ndarray, context: jnp.ndarray) -> jnp.ndarray:
    x, e, e0, text, geometry = self.embed(latents, timesteps, context)
    rope = rope_lib.rope_tables(self.cfg.head_dim, (geometry.frames, geometry.height, geometry.width),
                                theta=self.cfg.rope_theta)
    x = self.run_blocks(x, e0, text, rope, geometry)
    return self.unpatchify(self.head(x, e), geometry)
