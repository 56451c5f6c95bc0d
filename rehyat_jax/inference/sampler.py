"""The compiled pieces of one generation: the flow schedule, the text encoder, the whole guided sampling loop
(teacher or student, parallel or recurrent DiT forward) and the latent shape of a video.

Also used by the dataset writers (``rehyat_jax.data.latent_generation``), so teacher latents in a dataset
are sampled exactly as a generated video is.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from rehyat_jax.inference.pipeline import GenerationError, Pipeline
from rehyat_jax.models.umt5 import encode_for_wan
from rehyat_jax.models.wan import WanDiT
from rehyat_jax.sampling import SOLVERS, FlowSchedule, euler_flow_schedule, sample, unipc_flow_schedule


def make_schedule(solver: str, steps: int, shift: float) -> FlowSchedule:
  """The host tables of ``solver`` ('unipc' | 'euler'); GenerationError for an unknown solver or bad values."""
  if solver not in SOLVERS:
    raise GenerationError(f"unknown solver {solver!r}; choose one of {SOLVERS}")
  try:
    return unipc_flow_schedule(steps, shift) if solver == "unipc" else euler_flow_schedule(steps, shift)
  except (TypeError, ValueError) as e:
    raise GenerationError(str(e)) from None


def make_text_encoder(pipeline: Pipeline) -> Callable[[Sequence[str]], jax.Array]:
  """texts -> Wan's text embeddings [B, text_len, d_model] (padding zeroed), one compiled program."""
  graphdef, state = nnx.split(pipeline.text_encoder)
  text_len = pipeline.dit.cfg.text_len

  @jax.jit
  def encode(state, ids, mask):
    hidden = nnx.merge(graphdef, state)(ids, mask)
    return encode_for_wan(hidden, mask, text_len)

  def encode_texts(texts: Sequence[str]) -> jax.Array:
    ids, mask = pipeline.tokenizer(list(texts))
    return encode(state, jnp.asarray(ids), jnp.asarray(mask))

  return encode_texts


def make_sampler(dit: WanDiT, schedule: FlowSchedule, *, solver: str, guidance: float | None,
                 forward: str = "parallel") -> Callable[[jax.Array, jax.Array, jax.Array], jax.Array]:
  """(noise, text, negative text) -> final latents, the whole sampling loop as one compiled program.

  ``forward``: 'parallel' (the DiT's ``__call__``) or 'recurrent' (``WanDiT.recurrent_forward``; checked by
  ``check_forward`` beforehand). With guidance (any scale but None and 1) the DiT runs twice per step, on
  the prompt and on the negative prompt; two passes rather than a batch of two keep peak activation memory
  at one video's.
  """
  graphdef, state = nnx.split(dit)
  guided = guidance is not None and guidance != 1.0

  @jax.jit
  def run(state, noise, text, negative_text):
    def denoise(x, timesteps):
      # Merged inside the traced loop: the weights are the jit's arguments, never baked-in constants.
      model = nnx.merge(graphdef, state)
      call = model.recurrent_forward if forward == "recurrent" else model
      cond = call(x, timesteps, text)
      return (cond, call(x, timesteps, negative_text)) if guided else cond

    return sample(denoise, noise, schedule=schedule, solver=solver, guidance_scale=guidance if guided else None)

  return lambda noise, text, negative_text: run(state, noise, text, negative_text)


def latent_shape(pipeline: Pipeline, frames: int, height: int, width: int) -> tuple[int, ...]:
  """The noise / latents of one video: [1, z_dim, (frames - 1) / temporal + 1, H / spatial, W / spatial]."""
  vae = pipeline.vae.cfg
  return (1, vae.z_dim, (frames - 1) // vae.temporal_factor + 1, height // vae.spatial_factor,
          width // vae.spatial_factor)
