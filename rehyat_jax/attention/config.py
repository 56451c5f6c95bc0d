"""Configuration of a ReHyAt student: which blocks are converted and how their attention runs."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from rehyat_jax.attention.feature_maps import FeatureMapConfig

from rehyat_jax.attention.hybrid import MODES
PHI_INPUTS = ("post_rope", "pre_rope")


@dataclasses.dataclass(frozen=True)
class RehyatConfig:
  """ReHyAt self-attention settings (method.md); ``None`` in the model means the softmax teacher.

  ``converted_blocks``: ``"all"``, a count n (n blocks spread evenly over the depth, first and
  last included, a placeholder until a ranking from held-out distillation error exists), or
  an explicit sequence of block ids. The other blocks keep the teacher's full softmax.
  """

  chunk_frames: int = 3
  overlap_frames: int = 1
  causal: bool = True
  mode: str = "parallel"
  phi_input: str = "post_rope"
  converted_blocks: str | int | Sequence[int] = "all"
  feature_map: FeatureMapConfig = FeatureMapConfig()

  def __post_init__(self):
    if isinstance(self.chunk_frames, bool) or not isinstance(self.chunk_frames, int) or self.chunk_frames < 1:
      raise ValueError(f"rehyat.chunk_frames must be an int >= 1, got {self.chunk_frames!r}")
    if isinstance(self.overlap_frames, bool) or not isinstance(self.overlap_frames, int) or self.overlap_frames < 0:
      raise ValueError(f"rehyat.overlap_frames must be an int >= 0, got {self.overlap_frames!r}")
    if self.mode not in MODES:
      raise ValueError(f"rehyat.mode must be one of {MODES}, got {self.mode!r}")
    if self.mode == "scan" and not self.causal:
      raise ValueError("rehyat.mode='scan' needs causal=True (the recurrent form is causal only)")
    if self.phi_input not in PHI_INPUTS:
      raise ValueError(f"rehyat.phi_input must be one of {PHI_INPUTS}, got {self.phi_input!r}")
    if not isinstance(self.converted_blocks, (str, int)):
      object.__setattr__(self, "converted_blocks", tuple(int(b) for b in self.converted_blocks))

  def converted_mask(self, num_layers: int) -> tuple[bool, ...]:
    """Per block: True where self-attention is ReHyAt. Raises ValueError naming bad block ids."""
    spec = self.converted_blocks
    if isinstance(spec, str):
      if spec != "all":
        raise ValueError(f"rehyat.converted_blocks must be 'all', a count or a list of ids, got {spec!r}")
      return (True,) * num_layers
    if isinstance(spec, int) and not isinstance(spec, bool):
      if not 0 <= spec <= num_layers:
        raise ValueError(f"rehyat.converted_blocks count {spec} is outside 0..{num_layers}")
      ids = set(np.round(np.linspace(0, num_layers - 1, spec)).astype(int).tolist()) if spec else set()
      return tuple(i in ids for i in range(num_layers))
    bad = sorted(b for b in spec if not 0 <= b < num_layers)
    if bad:
      raise ValueError(f"rehyat.converted_blocks has unknown block ids {bad}; the model has {num_layers} blocks")
    if len(set(spec)) != len(spec):
      raise ValueError(f"rehyat.converted_blocks lists a block twice: {list(spec)}")
    return tuple(i in set(spec) for i in range(num_layers))
