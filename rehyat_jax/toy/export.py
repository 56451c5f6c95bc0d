"""A DiT in the converted-checkpoint layout that ``load_pretrained`` reads, made here rather than converted:
the freshly initialised start of the toy teacher (no preset describes its architecture), or any model's
teacher weights (tests build teachers and finetuned students this way)."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from flax import nnx

from rehyat_jax.convert import storage
from rehyat_jax.models.config import WanConfig
from rehyat_jax.models.params import canonical_params
from rehyat_jax.models.wan import RuntimeConfig, WanDiT


def write_dit(model: WanDiT, dst: str | os.PathLike, *, written_by: dict, overwrite: bool = True) -> Path:
  """The model's teacher parameters (adapters excluded) as a converted float32 checkpoint at ``dst``."""
  conversion = {"source": "trained in rehyat_jax", "layout": "canonical", "dtype": "float32",
                "converted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                **written_by}
  return storage.write_converted(dst, canonical_params(model), model.cfg, conversion, overwrite=overwrite)


def write_initial_dit(cfg: WanConfig, dst: str | os.PathLike, *, seed: int) -> Path:
  """A freshly initialised DiT (Wan's initialisation, zero output projection) to train a teacher from."""
  model = WanDiT(cfg, RuntimeConfig(), None, rngs=nnx.Rngs(seed))
  return write_dit(model, dst, written_by={"initialised_from_seed": seed}, overwrite=False)
