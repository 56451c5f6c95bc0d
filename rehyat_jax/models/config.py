"""Wan2.1 DiT architecture configs (what a checkpoint fixes) and the precision policy (what a run chooses)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class WanConfig:
  """Architecture of a Wan2.1 text-to-video DiT; field names follow the original release."""

  dim: int
  ffn_dim: int
  num_heads: int
  num_layers: int
  patch_size: tuple[int, int, int] = (1, 2, 2)
  freq_dim: int = 256
  in_dim: int = 16
  out_dim: int = 16
  text_dim: int = 4096
  text_len: int = 512
  eps: float = 1e-6
  rope_theta: float = 10000.0

  def __post_init__(self):
    if self.dim % self.num_heads:
      raise ValueError(f"WanConfig: dim={self.dim} is not divisible by num_heads={self.num_heads}")
    if self.head_dim % 2:
      raise ValueError(f"WanConfig: head_dim={self.head_dim} must be even for RoPE pairs")
    object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))

  @property
  def head_dim(self) -> int:
    return self.dim // self.num_heads

  @property
  def patch_volume(self) -> int:
    pt, ph, pw = self.patch_size
    return pt * ph * pw

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["patch_size"] = list(self.patch_size)
    return d

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "WanConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"WanConfig: unknown fields {unknown}")
    return cls(**d)


WAN_T2V_1_3B = WanConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30)
WAN_T2V_14B = WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)
# Tiny sizes for tests and the CPU demo; head_dim 12 exercises the general RoPE split (4, 4, 4).
WAN_TINY = WanConfig(dim=24, ffn_dim=32, num_heads=2, num_layers=2, in_dim=4, out_dim=4, text_dim=16,
                     freq_dim=256, text_len=12)

PRESETS = {"t2v-1.3b": WAN_T2V_1_3B, "t2v-14b": WAN_T2V_14B, "tiny": WAN_TINY}


@dataclasses.dataclass(frozen=True)
class PrecisionPolicy:
  """Where a run keeps float32 and where it computes in a lower precision.

  ``param_dtype`` is the storage dtype of the big matmul weights (fp32 master or bf16);
  ``compute_dtype`` is the dtype of the matmuls in attention, FFN, text and patch embedding.
  The time path, modulation, norms, gated residual adds, RoPE and the head always run in
  float32, as in the original ``WanModel`` under autocast.
  """

  param_dtype: Any = jnp.float32
  compute_dtype: Any = jnp.float32

  @classmethod
  def named(cls, name: str) -> "PrecisionPolicy":
    table = {
        "fp32": cls(jnp.float32, jnp.float32),
        "bf16": cls(jnp.float32, jnp.bfloat16),        # fp32 master weights, bf16 matmuls
        "bf16_params": cls(jnp.bfloat16, jnp.bfloat16),  # inference / memory-bound runs
    }
    if name not in table:
      raise ValueError(f"unknown precision policy {name!r}; choose one of {sorted(table)}")
    return table[name]
