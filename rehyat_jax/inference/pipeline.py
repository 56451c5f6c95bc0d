"""The four loaded parts of Wan2.1 text-to-video (``Pipeline``, ``load_pipeline``) and every check of a
generation request that needs no compiled model: prompts, video shape, the DiT forward, and whether the
DiT, text encoder, tokenizer and VAE fit each other. ``GenerationError`` is what these checks raise.

The DiT is the softmax teacher, or a ReHyAt student loaded from a student export
(``rehyat_jax.convert.student``): the export says what the student is, so nothing here takes ReHyAt
settings. Only how it runs (``RuntimeConfig``: precision, hybrid form, window backend) is chosen here.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

from rehyat_jax.attention.config import RehyatConfig
from rehyat_jax.convert.loading import load_pretrained
from rehyat_jax.convert.umt5 import load_umt5
from rehyat_jax.convert.wan_vae import load_wan_vae
from rehyat_jax.models.tokenizer import UMT5Tokenizer
from rehyat_jax.models.umt5 import UMT5Encoder
from rehyat_jax.models.wan import RuntimeConfig, WanDiT
from rehyat_jax.models.wan_vae import WanVAE

# How the DiT runs over a whole video: one parallel forward, or ``WanDiT.recurrent_forward`` chunk by chunk
# (flat memory; every block causal ReHyAt). Not the attention's hybrid form, which is ``RuntimeConfig``'s.
FORWARDS = ("parallel", "recurrent")
# Wan2.1's VAE compresses time by 4 and space by 8, and the DiT patches space by 2: sizes checked before any
# model is loaded use these; ``check_pipeline`` re-checks against the loaded models' own factors.
WAN_TEMPORAL_FACTOR = 4
WAN_SIZE_MULTIPLE = 16


class GenerationError(ValueError):
  """An argument that cannot produce a video; raised before any work starts."""


@dataclasses.dataclass
class Pipeline:
  """The four loaded parts of Wan2.1 text-to-video; the DiT is a student when ``dit.rehyat`` is set."""

  dit: WanDiT
  text_encoder: UMT5Encoder
  tokenizer: UMT5Tokenizer
  vae: WanVAE


# ----------------------------------------------------------------------------------------------------------
# Checks of a request (cheap, before anything is loaded or compiled)
# ----------------------------------------------------------------------------------------------------------

def check_video_shape(frames: int, height: int, width: int, *, temporal_factor: int = WAN_TEMPORAL_FACTOR,
                      size_multiple: int = WAN_SIZE_MULTIPLE) -> None:
  """Frames must be ``temporal_factor * k + 1`` and height / width multiples of ``size_multiple``."""
  if frames < 1 or (frames - 1) % temporal_factor:
    below = (max(frames - 1, 0) // temporal_factor) * temporal_factor + 1
    raise GenerationError(f"frames={frames} is not of the form {temporal_factor}k+1 (the VAE keeps the first frame "
                          f"and compresses the rest by {temporal_factor}); try {below} or "
                          f"{below + temporal_factor}")
  for name, value in (("height", height), ("width", width)):
    if value < size_multiple or value % size_multiple:
      raise GenerationError(f"{name}={value} is not a positive multiple of {size_multiple} (VAE stride x DiT "
                            f"patch size)")


def check_prompts(prompts: Sequence[str], source: str = "prompts") -> list[str]:
  """The prompts as a list; an empty list or a blank prompt is an error."""
  if isinstance(prompts, str):
    prompts = [prompts]
  prompts = list(prompts)
  if not prompts:
    raise GenerationError(f"{source}: no prompts")
  blank = [i for i, p in enumerate(prompts) if not p.strip()]
  if blank:
    raise GenerationError(f"{source}: prompt {blank[0]} is empty")
  return prompts


def read_prompts_file(path: str | os.PathLike) -> list[str]:
  """One prompt per line; blank lines are skipped; a file with no prompt is an error."""
  path = Path(path)
  if not path.is_file():
    raise GenerationError(f"prompts file {path} does not exist")
  prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
  if not prompts:
    raise GenerationError(f"prompts file {path} is empty (one prompt per line expected)")
  return prompts


def check_forward(forward: str, rehyat: RehyatConfig | None, num_layers: int) -> None:
  """``forward`` known, and for the recurrent forward a student (``rehyat``, None for the teacher) whose every
  block is causal ReHyAt."""
  if forward not in FORWARDS:
    raise GenerationError(f"unknown forward {forward!r}; choose one of {FORWARDS}")
  if forward != "recurrent":
    return
  if rehyat is None:
    raise GenerationError("forward='recurrent' needs a causal ReHyAt student (a student export); the softmax "
                          "teacher runs with forward='parallel' only")
  if not rehyat.causal:
    raise GenerationError("forward='recurrent' needs a causal ReHyAt student; this one is non-causal")
  try:
    mask = rehyat.converted_mask(num_layers)
  except ValueError as e:
    raise GenerationError(str(e)) from None
  softmax_blocks = [i for i, converted in enumerate(mask) if not converted]
  if softmax_blocks:
    raise GenerationError(f"forward='recurrent' needs every block converted to ReHyAt; blocks {softmax_blocks} "
                          f"of {num_layers} keep full softmax (partially converted student): use "
                          "forward='parallel'")


def check_compatible(pipeline: Pipeline) -> None:
  """The DiT's latent channels are the VAE's, its text width the encoder's, its text length >= the
  tokenizer's."""
  dit, vae = pipeline.dit, pipeline.vae
  if dit.cfg.in_dim != vae.cfg.z_dim or dit.cfg.out_dim != vae.cfg.z_dim:
    raise GenerationError(f"the DiT's latent channels (in {dit.cfg.in_dim}, out {dit.cfg.out_dim}) differ from the "
                          f"VAE's z_dim={vae.cfg.z_dim}")
  if pipeline.text_encoder.cfg.d_model != dit.cfg.text_dim:
    raise GenerationError(f"the text encoder's width {pipeline.text_encoder.cfg.d_model} differs from the DiT's "
                          f"text_dim={dit.cfg.text_dim}")
  if pipeline.tokenizer.text_len > dit.cfg.text_len:
    raise GenerationError(f"tokenizer text_len={pipeline.tokenizer.text_len} exceeds the DiT's "
                          f"text_len={dit.cfg.text_len}")


def check_pipeline(pipeline: Pipeline, frames: int, height: int, width: int, forward: str) -> None:
  """A request against the loaded models: their own compression / patch factors, the forward against the
  DiT's student config (if any), and ``check_compatible``."""
  dit, vae = pipeline.dit, pipeline.vae
  _, ph, pw = dit.cfg.patch_size
  check_video_shape(frames, height, width, temporal_factor=vae.cfg.temporal_factor,
                    size_multiple=vae.cfg.spatial_factor * max(ph, pw))
  check_forward(forward, dit.rehyat, dit.cfg.num_layers)
  check_compatible(pipeline)


# ----------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------

def load_pipeline(dit_path: str | os.PathLike, t5_path: str | os.PathLike, tokenizer_path: str | os.PathLike,
                  vae_path: str | os.PathLike, *, student: str | os.PathLike | None = None,
                  run: RuntimeConfig | None = None) -> Pipeline:
  """The converted checkpoints as a ``Pipeline``.

  With ``student`` (a student export folder) the DiT is that student on top of the ``dit_path`` teacher;
  ``load_pretrained`` raises ``StudentExportError`` (a ValueError) when the export is malformed or was
  distilled from another teacher. The DiT is loaded first, so such an error comes before umT5 is read.
  ``run`` (default: bf16) says how the DiT runs; its precision applies to umT5 too; the VAE runs in float32.
  """
  run = RuntimeConfig(precision="bf16") if run is None else run
  dit = load_pretrained(dit_path, run=run, student=student)
  text_encoder = load_umt5(t5_path, run.policy)
  tokenizer = UMT5Tokenizer(tokenizer_path, text_len=dit.cfg.text_len)
  pipeline = Pipeline(dit=dit, text_encoder=text_encoder, tokenizer=tokenizer, vae=load_wan_vae(vae_path))
  check_compatible(pipeline)
  return pipeline
