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
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from rehyat_jax.attention import (FEATURE_MAP_BACKENDS, FORMS, SOFTMAX_BACKENDS, RecurrentState, build_feature_map,
                                  check_window_chunks_per_step, check_window_settings, hybrid_attention, init_recurrent_state,
                                  recurrent_chunk_step, softmax_attention)
from rehyat_jax.attention.config import RehyatConfig
from rehyat_jax.core.sharding import shard_tokens
from rehyat_jax.models import rope as rope_lib
from rehyat_jax.models.config import PrecisionPolicy, WanConfig
from rehyat_jax.models.layers import (AffineLayerNorm, MLP2, PatchEmbed, RMSNorm, annotated_param, dense,
                                      layer_norm, sinusoidal_embedding, zeros)

# hook(self_attn, x, rope, geometry, converted) -> (attention output [B, N, dim], aux)
AttentionHook = Callable[..., tuple[jnp.ndarray, object]]

REMAT_POLICIES: dict[str, Callable | None] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
  """How a model runs (not what it is): precision, layer scan, remat, attention implementations.

  None of these change the function a model computes (up to round-off), so they are chosen per
  run and never stored with a student. ``softmax_backend``: full softmax attention
  (``attention.SOFTMAX_BACKENDS``). ReHyAt blocks: ``hybrid_form`` ('reference' | 'parallel' |
  'recurrent', ``attention.FORMS``); ``window_backend`` / ``window_backward``: the softmax
  window's forward and backward implementation (``attention.WINDOW_BACKENDS``; backward 'auto'
  = the running backend's default: the fused kernels on GPU, JAX autodiff of XLA elsewhere);
  ``window_chunks_per_step``: with the XLA window, materialise the window scores this many
  chunks at a time (None: all chunks at once), which bounds per-layer memory at long lengths.
  ``feature_map_backend``: how phi_q, phi_k run ('xla', or 'pallas': the fused kernel of
  ``attention/feature_maps/mlp_power_triton.py``, experimental until measured on a GPU).
  """

  precision: str = "fp32"
  scan_layers: bool = True
  remat: str = "none"
  softmax_backend: str = "auto"
  hybrid_form: str = "parallel"
  window_backend: str = "auto"
  window_backward: str = "auto"
  window_chunks_per_step: int | None = None
  feature_map_backend: str = "xla"

  def __post_init__(self):
    PrecisionPolicy.named(self.precision)
    if self.softmax_backend not in SOFTMAX_BACKENDS:
      raise ValueError(f"unknown softmax_backend {self.softmax_backend!r}; choose one of {SOFTMAX_BACKENDS}")
    if self.hybrid_form not in FORMS:
      raise ValueError(f"unknown hybrid_form {self.hybrid_form!r}; choose one of {FORMS}")
    check_window_settings(self.window_backend, self.window_backward)
    check_window_chunks_per_step(self.window_chunks_per_step)
    if self.feature_map_backend not in FEATURE_MAP_BACKENDS:
      raise ValueError(f"unknown feature_map_backend {self.feature_map_backend!r}; choose one of "
                       f"{FEATURE_MAP_BACKENDS}")
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
  """q/k/v/o projections, RMSNorm over the full width before the head split, 3D RoPE, attention.

  With a ``RehyatConfig`` the module also owns phi_q, phi_k and can run the hybrid instead of
  full softmax (``converted``), or one chunk of the causal RNN (``recurrent_step``). ``qkv``,
  ``softmax``, ``hybrid`` and ``output`` are public so an attention hook (``WanDiT.forward_with_hook``)
  can compose them differently, e.g. stage-1 distillation runs both branches on one q, k, v.
  """

  def __init__(self, cfg: WanConfig, run: RuntimeConfig, rehyat: RehyatConfig | None = None, *,
               rngs: nnx.Rngs):
    p = run.policy
    self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
    self.compute_dtype = p.compute_dtype
    self.softmax_backend = run.softmax_backend
    self.hybrid_form = run.hybrid_form
    self.window_backend, self.window_backward = run.window_backend, run.window_backward
    self.window_chunks_per_step = run.window_chunks_per_step
    self.feature_map_backend = run.feature_map_backend
    self.rehyat = rehyat
    mk = functools.partial(dense, rngs=rngs, param_dtype=p.param_dtype, dtype=p.compute_dtype)
    self.q = mk(cfg.dim, cfg.dim, ("embed", "heads"))
    self.k = mk(cfg.dim, cfg.dim, ("embed", "heads"))
    self.v = mk(cfg.dim, cfg.dim, ("embed", "heads"))
    self.o = mk(cfg.dim, cfg.dim, ("heads", "embed"))
    self.norm_q = RMSNorm(cfg.dim, cfg.eps, rngs=rngs)
    self.norm_k = RMSNorm(cfg.dim, cfg.eps, rngs=rngs)
    if rehyat is not None:
      self.phi_q = build_feature_map(rehyat.feature_map, cfg.num_heads, cfg.head_dim, rngs=rngs)
      self.phi_k = build_feature_map(rehyat.feature_map, cfg.num_heads, cfg.head_dim, rngs=rngs)

  def qkv(self, x: jnp.ndarray, rope: rope_lib.RopeTables):
    """Post-RoPE q, k and v as [B, N, H, D] in the compute dtype, plus the inputs phi sees."""
    b, n, _ = x.shape
    split = lambda t: t.reshape(b, n, self.num_heads, self.head_dim)
    q_pre, k_pre = split(self.norm_q(self.q(x))), split(self.norm_k(self.k(x)))
    cast = lambda t: t.astype(self.compute_dtype)
    q, k = cast(rope_lib.apply_rope(q_pre, rope)), cast(rope_lib.apply_rope(k_pre, rope))
    v = cast(split(self.v(x)))
    phi_inputs = (q, k) if self.rehyat is None or self.rehyat.phi_input == "post_rope" else (q_pre, k_pre)
    return q, k, v, phi_inputs

  def features(self, phi_inputs) -> tuple[jnp.ndarray, jnp.ndarray]:
    """phi_q and phi_k of ``qkv``'s phi inputs, run by the ``feature_map_backend``."""
    return (self.phi_q(phi_inputs[0], backend=self.feature_map_backend),
            self.phi_k(phi_inputs[1], backend=self.feature_map_backend))

  def softmax(self, q, k, v) -> jnp.ndarray:
    """The teacher's full softmax attention, [B, N, H, D]."""
    return softmax_attention(q, k, v, backend=self.softmax_backend)

  def hybrid(self, q, k, v, phi_inputs, geometry: Geometry) -> jnp.ndarray:
    """ReHyAt over the whole sequence, [B, N, H, D] in q's dtype (``phi_inputs`` from ``qkv``).

    The parallel form runs sequence-parallel when the context mesh (``jax.set_mesh``) has a
    "sequence" axis of size > 1 (``attention.sequence_parallel_hybrid_attention``)."""
    r = self.rehyat
    return hybrid_attention(q, k, v, *self.features(phi_inputs),
                            tokens_per_frame=geometry.tokens_per_frame, chunk_frames=r.chunk_frames,
                            overlap_frames=r.overlap_frames, causal=r.causal, form=self.hybrid_form,
                            window_backend=self.window_backend, window_backward=self.window_backward,
                            window_chunks_per_step=self.window_chunks_per_step).astype(q.dtype)

  def output(self, heads: jnp.ndarray) -> jnp.ndarray:
    """[B, N, H, D] attention output -> the output projection, [B, N, dim]."""
    return self.o(heads.reshape(*heads.shape[:2], -1))

  def __call__(self, x: jnp.ndarray, rope: rope_lib.RopeTables, geometry: Geometry,
               converted: bool | jnp.ndarray = False) -> jnp.ndarray:
    """``converted``: a Python bool, or a traced bool (one scanned stack mixing both kinds)."""
    q, k, v, phi_inputs = self.qkv(x, rope)
    softmax = lambda: self.softmax(q, k, v)
    hybrid = lambda: self.hybrid(q, k, v, phi_inputs, geometry)
    if self.rehyat is None or converted is False:
      out = softmax()
    elif converted is True:
      out = hybrid()
    else:
      out = jax.lax.cond(converted, hybrid, softmax)
    return self.output(out)

  def recurrent_step(self, x: jnp.ndarray, rope: rope_lib.RopeTables, geometry: Geometry,
                     state: RecurrentState) -> tuple[jnp.ndarray, RecurrentState]:
    """One chunk of the causal ReHyAt RNN; ``x`` holds the chunk's tokens only."""
    q, k, v, phi_inputs = self.qkv(x, rope)
    state, out = recurrent_chunk_step(state, q, k, v, *self.features(phi_inputs),
                                      tokens_per_frame=geometry.tokens_per_frame,
                                      window_backend=self.window_backend,
                                      window_backward=self.window_backward)
    return self.output(out.astype(q.dtype)), state

  def initial_state(self, batch: int, geometry: Geometry) -> RecurrentState:
    return init_recurrent_state(batch, self.num_heads, self.head_dim, self.rehyat.feature_map.output_dim,
                                tokens_per_frame=geometry.tokens_per_frame,
                                overlap_frames=self.rehyat.overlap_frames, dtype=self.compute_dtype,
                                phi_dtype=self.compute_dtype)


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

  def __init__(self, cfg: WanConfig, run: RuntimeConfig, rehyat: RehyatConfig | None = None, *,
               rngs: nnx.Rngs):
    self.eps = cfg.eps
    self.compute_dtype = run.policy.compute_dtype
    self.modulation = annotated_param(_modulation_init(cfg.dim), (None, None, "norm"), rngs, (1, 6, cfg.dim))
    self.self_attn = SelfAttention(cfg, run, rehyat, rngs=rngs)
    self.norm3 = AffineLayerNorm(cfg.dim, cfg.eps, rngs=rngs)
    self.cross_attn = CrossAttention(cfg, run, rngs=rngs)
    self.ffn = FeedForward(cfg, run, rngs=rngs)

  def _residual(self, x, e0, context, attend):
    """The block around its self-attention; ``attend(h) -> (out, aux)``, returns (x, aux)."""
    mod = self.modulation[...].astype(jnp.float32) + e0  # [B, 6, dim]
    shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = (mod[:, i:i + 1] for i in range(6))
    cd = self.compute_dtype
    h = layer_norm(x, self.eps) * (1 + scale_sa) + shift_sa
    out, aux = attend(h.astype(cd))
    x = x + out.astype(jnp.float32) * gate_sa
    x = x + self.cross_attn(self.norm3(x).astype(cd), context).astype(jnp.float32)
    h = layer_norm(x, self.eps) * (1 + scale_ff) + shift_ff
    return x + self.ffn(h.astype(cd)).astype(jnp.float32) * gate_ff, aux

  def __call__(self, x: jnp.ndarray, e0: jnp.ndarray, context: jnp.ndarray, rope: rope_lib.RopeTables,
               geometry: Geometry, converted: bool | jnp.ndarray = False) -> jnp.ndarray:
    attend = lambda h: (self.self_attn(h, rope, geometry, converted), None)
    return self._residual(x, e0, context, attend)[0]

  def hooked(self, x, e0, context, rope, geometry, converted, hook: AttentionHook):
    """(x after the block, the hook's aux) with self-attention computed by ``hook``."""
    attend = lambda h: hook(self.self_attn, h, rope, geometry, converted)
    return self._residual(x, e0, context, attend)

  def recurrent_step(self, x, e0, context, rope, geometry, state: RecurrentState):
    attend = lambda h: self.self_attn.recurrent_step(h, rope, geometry, state)
    return self._residual(x, e0, context, attend)


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


def _stacked_blocks(cfg: WanConfig, run: RuntimeConfig, rehyat: RehyatConfig | None, rngs: nnx.Rngs):
  @nnx.split_rngs(splits=cfg.num_layers)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def make(rngs):
    return WanBlock(cfg, run, rehyat, rngs=rngs)
  return make(rngs)


class WanDiT(nnx.Module):
  """Wan2.1 T2V DiT. ``cfg`` fixes the architecture, ``run`` how it computes.

  ``rehyat=None`` is the softmax teacher. With a ``RehyatConfig`` every block owns feature maps
  (one stacked shape for the scan) and the blocks in ``rehyat.converted_blocks`` run ReHyAt;
  the others keep full softmax.
  """

  def __init__(self, cfg: WanConfig, run: RuntimeConfig = RuntimeConfig(), rehyat: RehyatConfig | None = None,
               *, rngs: nnx.Rngs):
    self.cfg, self.run, self.rehyat = cfg, run, rehyat
    if rehyat is not None and not rehyat.causal and run.hybrid_form == "recurrent":
      raise ValueError("hybrid_form='recurrent' needs a causal student (rehyat.causal=True): the recurrent "
                       "form is causal only; use hybrid_form='parallel' or 'reference'")
    self.converted = rehyat.converted_mask(cfg.num_layers) if rehyat is not None else (False,) * cfg.num_layers
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
      self.blocks = _stacked_blocks(cfg, run, rehyat, rngs)
    else:
      self.blocks = nnx.List([WanBlock(cfg, run, rehyat, rngs=rngs) for _ in range(cfg.num_layers)])
    self.head = Head(cfg, rngs=rngs)

  def _check_inputs(self, latents, timesteps, context) -> Geometry:
    cfg = self.cfg
    if latents.ndim != 5 or latents.shape[1] != cfg.in_dim:
      raise ValueError(f"latents must be [B, {cfg.in_dim}, F, H, W]; got shape {latents.shape}")
    if context.ndim != 3 or context.shape[-1] != cfg.text_dim or context.shape[0] != latents.shape[0]:
      raise ValueError(f"text embeddings must be [B={latents.shape[0]}, L, {cfg.text_dim}]; got {context.shape}")
    if timesteps.shape != (latents.shape[0],):
      raise ValueError(f"timesteps must be [B={latents.shape[0]}]; got {timesteps.shape}")
    pt, ph, pw = cfg.patch_size
    _, _, f, h, w = latents.shape
    if f % pt or h % ph or w % pw:
      raise ValueError(f"latent shape (F={f}, H={h}, W={w}) is not divisible by the patch size {cfg.patch_size}")
    return Geometry(f // pt, h // ph, w // pw)

  def conditioning(self, timesteps: jnp.ndarray, context: jnp.ndarray):
    """Token-independent inputs: e [B, dim] (head), e0 [B, 6, dim] (blocks), text [B, L, dim]."""
    e = self.time_embedding(sinusoidal_embedding(timesteps, self.cfg.freq_dim))
    e0 = self.time_projection(jax.nn.silu(e)).reshape(-1, 6, self.cfg.dim)
    text = self.text_embedding(context.astype(self.run.policy.compute_dtype))
    return e, e0, text

  def embed(self, latents: jnp.ndarray, timesteps: jnp.ndarray, context: jnp.ndarray):
    """Tokens (float32 residual stream), e, e0, text and the patch-grid geometry."""
    geometry = self._check_inputs(latents, timesteps, context)
    # Under a mesh with a sequence axis the token stream is split over it from here on; converted
    # blocks' self-attention then runs sequence-parallel (attention.hybrid_attention), the
    # token-wise rest of every block needs no communication.
    x = shard_tokens(self.patch_embedding(latents).astype(jnp.float32))
    return (x, *self.conditioning(timesteps, context), geometry)

  def unpatchify(self, out: jnp.ndarray, geometry: Geometry) -> jnp.ndarray:
    """[B, N, pt*ph*pw*C] in (pt, ph, pw, c) order -> [B, C, F, H, W]."""
    pt, ph, pw = self.cfg.patch_size
    b = out.shape[0]
    out = out.reshape(b, geometry.frames, geometry.height, geometry.width, pt, ph, pw, self.cfg.out_dim)
    out = out.transpose(0, 7, 1, 4, 2, 5, 3, 6)
    return out.reshape(b, self.cfg.out_dim, geometry.frames * pt, geometry.height * ph, geometry.width * pw)

  def _rope(self, geometry: Geometry) -> rope_lib.RopeTables:
    return rope_lib.rope_tables(self.cfg.head_dim, (geometry.frames, geometry.height, geometry.width),
                                theta=self.cfg.rope_theta)

  def run_blocks(self, x, e0, text, rope, geometry, *, hook: AttentionHook | None = None,
                 converted: jnp.ndarray | None = None):
    """All blocks; with an attention ``hook`` returns (x, the hook's aux stacked over layers).

    ``converted``: a [num_layers] bool array that replaces ``self.converted`` (which blocks run ReHyAt) at run
    time, e.g. traced, so that one compiled program serves every choice (every block owns phi)."""
    policy = REMAT_POLICIES[self.run.remat]
    flags = self.converted
    if converted is not None:
      if self.rehyat is None:
        raise ValueError("converted= needs a ReHyAt student: the teacher has no ReHyAt blocks to switch on")
      if jnp.shape(converted) != (self.cfg.num_layers,):
        raise ValueError(f"converted must be [{self.cfg.num_layers}] bools, got shape {jnp.shape(converted)}")
      flags = jnp.asarray(converted, bool)
    hooked = hook is not None

    def body(x, block, converted):
      if hooked:
        return block.hooked(x, e0, text, rope, geometry, converted, hook)
      return block(x, e0, text, rope, geometry, converted)

    out_axes = (nnx.Carry, 0) if hooked else nnx.Carry
    # Tree mode (graph=False): the stacked blocks are a plain pytree to the scan, so the model
    # can be rebuilt with nnx.merge inside jit/grad from states passed as arguments.
    if self.run.scan_layers:
      if converted is None and (all(flags) or not any(flags)):
        scan_body = lambda x, block: body(x, block, flags[0])
        if policy is not None:
          scan_body = nnx.remat(scan_body, policy=policy, prevent_cse=False, graph=False)
        return nnx.scan(scan_body, in_axes=(nnx.Carry, 0), out_axes=out_axes, graph=False)(x, self.blocks)
      if policy is not None:
        body = nnx.remat(body, policy=policy, prevent_cse=False, graph=False)
      return nnx.scan(body, in_axes=(nnx.Carry, 0, 0), out_axes=out_axes, graph=False)(x, self.blocks, jnp.asarray(flags))
    if policy is not None:
      body = nnx.remat(body, policy=policy, static_argnums=(2,) if converted is None else ())
    stats = []
    for block, flag in zip(self.blocks, flags):
      x = body(x, block, flag)
      if hooked:
        x, block_stats = x
        stats.append(block_stats)
    return (x, jax.tree_util.tree_map(lambda *a: jnp.stack(a), *stats)) if hooked else x

  def __call__(self, latents: jnp.ndarray, timesteps: jnp.ndarray, context: jnp.ndarray, *,
               converted: jnp.ndarray | None = None) -> jnp.ndarray:
    """The flow prediction. ``converted``: optional [num_layers] bools choosing the ReHyAt blocks at run time
    (``run_blocks``); None: the student's own ``rehyat.converted_blocks``."""
    x, e, e0, text, geometry = self.embed(latents, timesteps, context)
    x = self.run_blocks(x, e0, text, self._rope(geometry), geometry, converted=converted)
    return self.unpatchify(self.head(x, e), geometry)

  def forward_with_hook(self, latents: jnp.ndarray, timesteps: jnp.ndarray, context: jnp.ndarray,
                        hook: AttentionHook) -> tuple[jnp.ndarray, object]:
    """``__call__`` with every block's self-attention computed by ``hook``.

    ``hook(self_attn, x, rope, geometry, converted) -> (attention output [B, N, dim], aux)`` gets
    the block's ``SelfAttention`` (``qkv``, ``softmax``, ``hybrid``, ``output``) and whether the
    block is converted (a bool, or a traced bool in a mixed layer scan). Returns (flow, aux with a
    leading [num_layers] axis). Training objectives live with their stage (``train/stages``).
    """
    x, e, e0, text, geometry = self.embed(latents, timesteps, context)
    x, aux = self.run_blocks(x, e0, text, self._rope(geometry), geometry, hook=hook)
    return self.unpatchify(self.head(x, e), geometry), aux

  def recurrent_forward(self, latents: jnp.ndarray, timesteps: jnp.ndarray, context: jnp.ndarray) -> jnp.ndarray:
    """The same function as ``__call__`` for an all-causal-ReHyAt model, run chunk by chunk.

    ``lax.scan`` over chunks of ``chunk_frames`` latent frames; inside, every layer runs on the
    chunk's tokens and carries its own ``RecurrentState``. Peak activation memory is set by one
    chunk, whatever the video length; a shorter last chunk is one more call of the same step.
    """
    r = self.rehyat
    if r is None or not all(self.converted) or not r.causal:
      softmax_ids = [i for i, c in enumerate(self.converted) if not c]
      raise ValueError(
          "recurrent_forward needs every self-attention to be causal ReHyAt; this model has "
          + ("no ReHyAt config" if r is None else
             f"causal={r.causal} and full-softmax blocks {softmax_ids}") + ". Use the parallel forward.")
    geometry = self._check_inputs(latents, timesteps, context)
    e, e0, text = self.conditioning(timesteps, context)
    pt = self.cfg.patch_size[0]
    tc = r.chunk_frames
    n_full, rem = divmod(geometry.frames, tc)
    full_rope = self._rope(geometry)  # per-axis tables: the temporal one is [F, t/2], tiny
    batch = latents.shape[0]

    if self.run.scan_layers:
      graphdef, block_params = nnx.split(self.blocks)
      single = nnx.merge(graphdef, jax.tree_util.tree_map(lambda a: a[0], block_params))
      state0 = single.self_attn.initial_state(batch, geometry)
      states = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (self.cfg.num_layers, *a.shape)), state0)
    else:
      states = [block.self_attn.initial_state(batch, geometry) for block in self.blocks]

    def run_chunk(states, frame0, frames):
      geom = Geometry(frames, geometry.height, geometry.width)
      rope = full_rope._replace(cos_t=jax.lax.dynamic_slice_in_dim(full_rope.cos_t, frame0, frames),
                                sin_t=jax.lax.dynamic_slice_in_dim(full_rope.sin_t, frame0, frames))
      latent_chunk = jax.lax.dynamic_slice_in_dim(latents, frame0 * pt, frames * pt, axis=2)
      x = self.patch_embedding(latent_chunk).astype(jnp.float32)
      if self.run.scan_layers:
        def layer(x, inputs):
          params, state = inputs
          return nnx.merge(graphdef, params).recurrent_step(x, e0, text, rope, geom, state)
        x, states = jax.lax.scan(layer, x, (block_params, states))
      else:
        new_states = []
        for block, state in zip(self.blocks, states):
          x, state = block.recurrent_step(x, e0, text, rope, geom, state)
          new_states.append(state)
        states = new_states
      return states, self.unpatchify(self.head(x, e), geom)

    # Chunks are read from the latents and written into the output in place: no per-chunk
    # stacking, so buffers beyond one chunk's activations are the size of the latents.
    out_shape = (batch, self.cfg.out_dim, *latents.shape[2:])
    output = jnp.zeros(out_shape, jnp.float32)

    def scan_body(carry, index):
      states, output = carry
      states, out = run_chunk(states, index * tc, tc)
      return (states, jax.lax.dynamic_update_slice_in_dim(output, out, index * tc * pt, axis=2)), None

    if n_full:
      (states, output), _ = jax.lax.scan(scan_body, (states, output), jnp.arange(n_full))
    if rem:
      _, tail = run_chunk(states, n_full * tc, rem)
      output = jax.lax.dynamic_update_slice_in_dim(output, tail, n_full * tc * pt, axis=2)
    return output
