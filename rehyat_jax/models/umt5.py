"""The umT5-XXL text encoder of Wan2.1 in Flax NNX (encoder only), a drop-in for transformers' ``UMT5EncoderModel``.

Call: token ids [B, L] int, attention mask [B, L] (1 = token, 0 = padding) -> hidden states [B, L, d_model]
float32. Architecture (T5 v1.1 as used by umT5): token embedding; per block a pre-norm self-attention with a
relative-position bias table of its OWN (umT5; T5 shares layer 0's) and a pre-norm gated-GELU FFN; a final
norm. T5 conventions: RMS norms without mean subtraction or bias, no 1/sqrt(d) attention scaling, no biases.

Blocks are stacked (every block parameter leads with [num_layers]) and run under ``nnx.scan``; that stacked
tree is also the on-disk layout of converted checkpoints (``rehyat_jax.convert.umt5``).

Precision follows ``PrecisionPolicy``: the big matmuls in ``compute_dtype`` (float32 accumulation for the
attention scores); the residual stream, norms, position bias, masking, softmax and GELU in float32. The
reference (Wan's ``T5Encoder`` in bf16) keeps its residual stream in bf16, so the bf16 policy here is at
least as accurate as the original.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rehyat_jax.models.config import PrecisionPolicy
from rehyat_jax.models.layers import RMSNorm, annotated_param
from rehyat_jax.core.sharding import logical

# transformers' name for the tanh-approximated GELU of T5 v1.1's gated FFN ("gated-gelu").
GATED_GELU = "gated-gelu"


@dataclasses.dataclass(frozen=True)
class UMT5Config:
  """Architecture of a umT5 encoder; field names follow transformers' ``UMT5Config``."""

  vocab_size: int = 256384
  d_model: int = 4096
  d_kv: int = 64
  num_heads: int = 64
  d_ff: int = 10240
  num_layers: int = 24
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  eps: float = 1e-6
  feed_forward_proj: str = GATED_GELU

  def __post_init__(self):
    if self.feed_forward_proj != GATED_GELU:
      raise ValueError(f"UMT5Config: only feed_forward_proj={GATED_GELU!r} (umT5's tanh-GELU gated FFN) is "
                       f"supported; got {self.feed_forward_proj!r}")
    # Bidirectional buckets: half per direction, and half of those exact, so 4 is the smallest usable count.
    if self.relative_attention_num_buckets < 4 or self.relative_attention_num_buckets % 4:
      raise ValueError(f"UMT5Config: relative_attention_num_buckets={self.relative_attention_num_buckets} must be "
                       "a positive multiple of 4")
    for name in ("vocab_size", "d_model", "d_kv", "num_heads", "d_ff", "num_layers"):
      if getattr(self, name) < 1:
        raise ValueError(f"UMT5Config: {name}={getattr(self, name)} must be positive")

  @property
  def inner_dim(self) -> int:
    """Width of q, k, v (num_heads * d_kv; equals d_model for the released model but need not)."""
    return self.num_heads * self.d_kv

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "UMT5Config":
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"UMT5Config: unknown fields {unknown}")
    return cls(**d)


UMT5_XXL = UMT5Config()
# Tiny sizes for tests (the transformers parity test builds the same config).
UMT5_TINY = UMT5Config(vocab_size=128, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=3,
                       relative_attention_num_buckets=8, relative_attention_max_distance=16)

PRESETS = {"umt5-xxl": UMT5_XXL, "tiny": UMT5_TINY}


def relative_position_buckets(query_len: int, key_len: int, num_buckets: int, max_distance: int) -> np.ndarray:
  """Bidirectional T5 bucket of every (query, key) pair, int32 [query_len, key_len]; computed on the host.

  Half the buckets hold keys after the query, half keys before (or at) it; within each half, distances below
  a quarter of the buckets get one bucket each and longer ones share logarithmically wider buckets up to
  ``max_distance``. The logarithm is taken in float32 exactly as the PyTorch references do: at distances
  that are exact bucket boundaries (16, 32, 64 for umT5-XXL) float rounding decides the bucket, and only the
  same float32 arithmetic lands on the same side.
  """
  relative = np.arange(key_len, dtype=np.int64)[None, :] - np.arange(query_len, dtype=np.int64)[:, None]
  per_direction = num_buckets // 2
  exact = per_direction // 2
  offset = np.where(relative > 0, per_direction, 0)
  distance = np.abs(relative)
  # max(., 1): the log of distances below ``exact`` is unused, and log(0) would warn.
  ratio = (np.log(np.maximum(distance, 1).astype(np.float32) / np.float32(exact))
           / np.float32(math.log(max_distance / exact)))
  logarithmic = exact + (ratio * np.float32(per_direction - exact)).astype(np.int64)
  logarithmic = np.minimum(logarithmic, per_direction - 1)
  return (offset + np.where(distance < exact, distance, logarithmic)).astype(np.int32)


def _normal(std: float):
  return nnx.initializers.normal(std)


class UMT5Attention(nnx.Module):
  """Unscaled multi-head self-attention with this layer's relative-position bias table [buckets, heads]."""

  def __init__(self, cfg: UMT5Config, policy: PrecisionPolicy, *, rngs: nnx.Rngs):
    self.num_heads, self.d_kv = cfg.num_heads, cfg.d_kv
    self.compute_dtype = policy.compute_dtype
    # Initial scales as transformers' UMT5 init (only matters for models not loaded from a checkpoint).
    linear = functools.partial(nnx.Linear, use_bias=False, dtype=policy.compute_dtype,
                               param_dtype=policy.param_dtype, rngs=rngs)
    in_axes, out_axes = ("embed", "heads"), ("heads", "embed")
    self.q = linear(cfg.d_model, cfg.inner_dim, kernel_init=logical(_normal((cfg.d_model * cfg.d_kv) ** -0.5),
                                                                    in_axes))
    self.k = linear(cfg.d_model, cfg.inner_dim, kernel_init=logical(_normal(cfg.d_model ** -0.5), in_axes))
    self.v = linear(cfg.d_model, cfg.inner_dim, kernel_init=logical(_normal(cfg.d_model ** -0.5), in_axes))
    self.o = linear(cfg.inner_dim, cfg.d_model, kernel_init=logical(_normal(cfg.inner_dim ** -0.5), out_axes))
    # float32 like the norms: 32 x heads values, added to float32 scores.
    self.relative_bias = annotated_param(_normal(cfg.d_model ** -0.5), ("relpos_buckets", "heads"), rngs,
                                         (cfg.relative_attention_num_buckets, cfg.num_heads))

  def __call__(self, x: jnp.ndarray, buckets: jnp.ndarray, key_mask: jnp.ndarray) -> jnp.ndarray:
    """x [B, L, d_model] (compute dtype), buckets [L, L] int32, key_mask [B, L] bool -> [B, L, d_model]."""
    b, n, _ = x.shape
    split = lambda t: t.reshape(b, n, self.num_heads, self.d_kv)
    q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    bias = jnp.take(self.relative_bias[...].astype(jnp.float32), buckets, axis=0)  # [L, L, heads]
    scores = scores + bias.transpose(2, 0, 1)[None]
    # Padded keys get the lowest float, as the references' masks do (a fully padded row becomes uniform).
    scores = jnp.where(key_mask[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(self.compute_dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    return self.o(out.reshape(b, n, self.num_heads * self.d_kv))


class UMT5FeedForward(nnx.Module):
  """wo(gelu_tanh(wi_0 x) * wi_1 x), the elementwise part in float32."""

  def __init__(self, cfg: UMT5Config, policy: PrecisionPolicy, *, rngs: nnx.Rngs):
    self.compute_dtype = policy.compute_dtype
    linear = functools.partial(nnx.Linear, use_bias=False, dtype=policy.compute_dtype,
                               param_dtype=policy.param_dtype, rngs=rngs)
    self.wi_0 = linear(cfg.d_model, cfg.d_ff, kernel_init=logical(_normal(cfg.d_model ** -0.5), ("embed", "mlp")))
    self.wi_1 = linear(cfg.d_model, cfg.d_ff, kernel_init=logical(_normal(cfg.d_model ** -0.5), ("embed", "mlp")))
    self.wo = linear(cfg.d_ff, cfg.d_model, kernel_init=logical(_normal(cfg.d_ff ** -0.5), ("mlp", "embed")))

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    gate = jax.nn.gelu(self.wi_0(x).astype(jnp.float32), approximate=True)
    hidden = gate * self.wi_1(x).astype(jnp.float32)
    return self.wo(hidden.astype(self.compute_dtype))


class UMT5Block(nnx.Module):
  """x + attn(norm(x)), then x + ffn(norm(x)); the residual stream stays float32."""

  def __init__(self, cfg: UMT5Config, policy: PrecisionPolicy, *, rngs: nnx.Rngs):
    self.compute_dtype = policy.compute_dtype
    self.attn_norm = RMSNorm(cfg.d_model, cfg.eps, rngs=rngs)
    self.attn = UMT5Attention(cfg, policy, rngs=rngs)
    self.ffn_norm = RMSNorm(cfg.d_model, cfg.eps, rngs=rngs)
    self.ffn = UMT5FeedForward(cfg, policy, rngs=rngs)

  def __call__(self, x: jnp.ndarray, buckets: jnp.ndarray, key_mask: jnp.ndarray) -> jnp.ndarray:
    # RMSNorm of a float32 input is float32 (normalise and scale), as T5's norm with float32 weights.
    x = x + self.attn(self.attn_norm(x).astype(self.compute_dtype), buckets, key_mask).astype(jnp.float32)
    return x + self.ffn(self.ffn_norm(x).astype(self.compute_dtype)).astype(jnp.float32)


def _stacked_blocks(cfg: UMT5Config, policy: PrecisionPolicy, rngs: nnx.Rngs) -> UMT5Block:
  @nnx.split_rngs(splits=cfg.num_layers)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def make(rngs):
    return UMT5Block(cfg, policy, rngs=rngs)
  return make(rngs)


class UMT5Encoder(nnx.Module):
  """umT5 encoder: ``(token_ids [B, L] int, attention_mask [B, L]) -> hidden [B, L, d_model]`` float32.

  Positions where ``attention_mask`` is 0 are never attended to; their own outputs are computed anyway (as
  transformers and Wan do) and are meaningless: ``encode_for_wan`` zeroes them.
  """

  def __init__(self, cfg: UMT5Config, policy: PrecisionPolicy = PrecisionPolicy(), *, rngs: nnx.Rngs):
    self.cfg, self.policy = cfg, policy
    # No dtype: the lookup gathers rows in the stored dtype; casting the whole table first would copy it.
    self.token_embedding = nnx.Embed(cfg.vocab_size, cfg.d_model, param_dtype=policy.param_dtype,
                                     embedding_init=logical(_normal(1.0), ("vocab", "embed")), rngs=rngs)
    self.blocks = _stacked_blocks(cfg, policy, rngs)
    self.final_norm = RMSNorm(cfg.d_model, cfg.eps, rngs=rngs)

  def __call__(self, token_ids: jnp.ndarray, attention_mask: jnp.ndarray) -> jnp.ndarray:
    if token_ids.ndim != 2 or attention_mask.shape != token_ids.shape:
      raise ValueError(f"token_ids and attention_mask must both be [B, L]; got {token_ids.shape} and "
                       f"{attention_mask.shape}")
    if not jnp.issubdtype(token_ids.dtype, jnp.integer):
      raise ValueError(f"token_ids must be integers; got {token_ids.dtype}")
    length = token_ids.shape[1]
    buckets = jnp.asarray(relative_position_buckets(length, length, self.cfg.relative_attention_num_buckets,
                                                    self.cfg.relative_attention_max_distance))
    key_mask = attention_mask != 0
    x = self.token_embedding(token_ids).astype(jnp.float32)

    def body(x, block):
      return block(x, buckets, key_mask)

    # Tree mode, as the DiT: the stacked blocks are a plain pytree to the scan, so a model rebuilt with
    # nnx.merge inside jit/grad works too.
    x = nnx.scan(body, in_axes=(nnx.Carry, 0), out_axes=nnx.Carry, graph=False)(x, self.blocks)
    return self.final_norm(x)


def encode_for_wan(hidden: jnp.ndarray, attention_mask: jnp.ndarray, text_len: int = 512) -> jnp.ndarray:
  """Encoder output as the Wan2.1 DiT receives it: [B, text_len, d_model] with padding positions zeroed.

  Wan keeps the first ``sum(mask)`` positions of each row (``u[:seq_len]``, which assumes right padding, as
  the tokenizer produces) and pads them with zeros to ``text_len``; so does this, with shapes kept static.
  """
  b, length, _ = hidden.shape
  if attention_mask.shape != (b, length):
    raise ValueError(f"attention_mask must be [B={b}, L={length}]; got {attention_mask.shape}")
  if length > text_len:
    raise ValueError(f"sequence length {length} exceeds text_len={text_len}; tokenize to at most text_len tokens")
  seq_lens = jnp.sum(attention_mask != 0, axis=1)
  keep = jnp.arange(length)[None, :] < seq_lens[:, None]
  kept = jnp.where(keep[:, :, None], hidden, jnp.zeros((), hidden.dtype))
  return jnp.pad(kept, ((0, 0), (0, text_len - length), (0, 0)))
