"""What a ReHyAt student is: chunking, causality, the feature map and which blocks are converted.

``RehyatConfig`` is written once, as JSON, next to a student's exported adapters
(``rehyat_jax.convert.student``), and read back by training and generation: nobody re-types it.
How a student *runs* (hybrid form, window backend, precision) is not part of it: that is
``rehyat_jax.models.wan.RuntimeConfig``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

import numpy as np

from rehyat_jax.attention.feature_maps import FeatureMapConfig

PHI_INPUTS = ("post_rope", "pre_rope")


def parse_converted_blocks(value: Any) -> str | int | tuple[int, ...]:
  """'all' | a count | block ids, given as a value or as text ('15', '1,5,7', '[1, 5]', '[7]', '7,': a bare
  number is a count; brackets or a comma make it block ids)."""
  if isinstance(value, str) and value != "all":
    bracketed = value.strip().startswith(("[", "("))
    text = value.strip().strip("[]()")
    if not text:
      raise ValueError("rehyat.converted_blocks is empty text; use 'all', a count (0 converts none) or block ids")
    if re.fullmatch(r"\d+", text) and not bracketed:
      return int(text)
    try:
      return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
      raise ValueError(f"rehyat.converted_blocks must be 'all', a count or a list of block ids, "
                       f"got {value!r}") from None
  if isinstance(value, (list, tuple)):
    return tuple(int(b) for b in value)
  return value


@dataclasses.dataclass(frozen=True)
class RehyatConfig:
  """A ReHyAt student (docs/method.md); ``None`` in the model means the softmax teacher.

  ``converted_blocks``: ``"all"``, a count n (n blocks spread evenly over the depth, first and
  last included, a placeholder until a ranking from held-out distillation error exists), or
  an explicit sequence of block ids. The other blocks keep the teacher's full softmax.
  ``phi_input``: whether phi sees q, k after RoPE (``post_rope``) or before it.
  """

  chunk_frames: int = 3
  overlap_frames: int = 1
  causal: bool = True
  phi_input: str = "post_rope"
  converted_blocks: str | int | Sequence[int] = "all"
  feature_map: FeatureMapConfig = FeatureMapConfig()

  def __post_init__(self):
    if isinstance(self.chunk_frames, bool) or not isinstance(self.chunk_frames, int) or self.chunk_frames < 1:
      raise ValueError(f"rehyat.chunk_frames must be an int >= 1, got {self.chunk_frames!r}")
    if isinstance(self.overlap_frames, bool) or not isinstance(self.overlap_frames, int) or self.overlap_frames < 0:
      raise ValueError(f"rehyat.overlap_frames must be an int >= 0, got {self.overlap_frames!r}")
    if not isinstance(self.causal, bool):
      raise ValueError(f"rehyat.causal must be True or False, got {self.causal!r}")
    if self.phi_input not in PHI_INPUTS:
      raise ValueError(f"rehyat.phi_input must be one of {PHI_INPUTS}, got {self.phi_input!r}")
    if not isinstance(self.feature_map, FeatureMapConfig):
      raise ValueError(f"rehyat.feature_map must be a FeatureMapConfig, got {type(self.feature_map).__name__}")
    object.__setattr__(self, "converted_blocks", parse_converted_blocks(self.converted_blocks))

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

  def to_dict(self) -> dict[str, Any]:
    """JSON-able; ``from_dict`` inverts it."""
    blocks = self.converted_blocks
    return {"chunk_frames": self.chunk_frames, "overlap_frames": self.overlap_frames, "causal": self.causal,
            "phi_input": self.phi_input,
            "converted_blocks": list(blocks) if isinstance(blocks, tuple) else blocks,
            "feature_map": self.feature_map.to_dict()}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "RehyatConfig":
    """Inverse of ``to_dict``; ValueError naming unknown fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"rehyat: unknown fields {unknown}; known: {sorted(names)}")
    fields = dict(d)
    if "feature_map" in fields and not isinstance(fields["feature_map"], FeatureMapConfig):
      fields["feature_map"] = FeatureMapConfig.from_dict(dict(fields["feature_map"]))
    return cls(**fields)

  def differences(self, other: "RehyatConfig", *, ignore: Sequence[str] = ()) -> list[str]:
    """'field: a vs b' for every field (feature-map options included) that differs."""
    mine, theirs = self.to_dict(), other.to_dict()
    fm_a, fm_b = mine.pop("feature_map"), theirs.pop("feature_map")
    out = [f"{k}: {mine[k]!r} vs {theirs[k]!r}" for k in mine if k not in ignore and mine[k] != theirs[k]]
    out += [f"feature_map.{k}: {fm_a.get(k)!r} vs {fm_b.get(k)!r}"
            for k in sorted(set(fm_a) | set(fm_b)) if fm_a.get(k) != fm_b.get(k)]
    return out
