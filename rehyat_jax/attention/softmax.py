"""Full softmax attention (the teacher's, and unconverted blocks') behind one function, with a backend
choice (``SOFTMAX_BACKENDS``).

Backends: ``xla`` (``jax.nn.dot_product_attention`` with materialised scores; any dtype, any
device), ``cudnn`` (cuDNN flash attention: GPU, bf16/fp16, head dim <= 256 and a multiple of 8),
``splash`` (TPU splash attention; runs in Pallas interpret mode elsewhere, for tests) and
``auto`` (cuDNN where it applies, XLA otherwise).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from rehyat_jax.attention.kernel_sharding import map_over_batch_and_heads

SOFTMAX_BACKENDS = ("auto", "xla", "cudnn", "splash")


def cudnn_applies(q: jnp.ndarray) -> bool:
  d = q.shape[-1]
  return (jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16)
          and d <= 256 and d % 8 == 0)


def softmax_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, *, backend: str = "auto") -> jnp.ndarray:
  """softmax(q kᵀ / sqrt(D)) v for q [B, T, H, D], k and v [B, S, H, D]; no mask; returns q.dtype."""
  if backend not in SOFTMAX_BACKENDS:
    raise ValueError(f"unknown softmax backend {backend!r}; choose one of {SOFTMAX_BACKENDS}")
  if not (q.dtype == k.dtype == v.dtype):
    raise ValueError(f"softmax_attention: q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})")
  if backend == "auto":
    backend = "cudnn" if cudnn_applies(q) else "xla"
  if backend == "cudnn":
    if not cudnn_applies(q):
      raise ValueError(f"cuDNN attention needs a GPU, bf16/fp16 and head dim <= 256 divisible by 8; got "
                       f"backend={jax.default_backend()}, dtype={q.dtype}, head dim {q.shape[-1]}")
    return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
  if backend == "splash":
    return splash_attention(q, k, v)
  return jax.nn.dot_product_attention(q, k, v, implementation="xla")


def _splash_block(n: int) -> int:
  return 128 if n % 128 == 0 else n


@functools.partial(jax.jit, static_argnames=("interpret",))
def _splash(q, k, v, interpret: bool):
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

  b, t, h, d = q.shape
  s = k.shape[1]
  mask = sm.MultiHeadMask([sm.FullMask((t, s)) for _ in range(h)])
  bq, bk = _splash_block(t), _splash_block(s)
  blocks = sk.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk, block_q_dkv=bq, block_kv_dkv=bk,
                         block_kv_dkv_compute=bk, block_q_dq=bq, block_kv_dq=bk)
  kernel = sk.make_splash_mha(mask, head_shards=1, q_seq_shards=1, block_sizes=blocks, interpret=interpret)
  # splash takes unbatched [H, T, D] and applies no softmax scale.
  scaled = (q * (1.0 / math.sqrt(d))).astype(q.dtype)
  to_htd = lambda x: jnp.swapaxes(x, 1, 2)
  out = jax.vmap(kernel)(to_htd(scaled), to_htd(k), to_htd(v))
  return jnp.swapaxes(out, 1, 2).astype(q.dtype)


def splash_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray) -> jnp.ndarray:
  """TPU splash attention; interpret mode off TPU. Sequence lengths must be multiples of 128 or short.

  Runs per batch/head shard of the context mesh (``kernel_sharding``)."""
  kernel = functools.partial(_splash, interpret=jax.default_backend() != "tpu")
  per_token = (0, 2)  # [B, T, H, D]
  return map_over_batch_and_heads(kernel, (q, k, v), (per_token,) * 3)
