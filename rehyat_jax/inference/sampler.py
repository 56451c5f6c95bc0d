"""The compiled pieces of one generation: the flow schedule, the text encoder, the whole guided sampling loop
(teacher or student, parallel or recurrent DiT forward) and the latent shape of a video.

Also used by the dataset writers (``rehyat_jax.data.latent_generation``), so teacher latents in a dataset
are sampled exactly as a generated video is.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

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


def branch_mesh(devices: int) -> Mesh | None:
  """A 1-D mesh ('branch') over the first ``devices`` local devices for the two CFG passes; None for 1.

  GenerationError unless ``devices`` is 1 or 2 and that many devices are there."""
  if devices == 1:
    return None
  if devices != 2:
    raise GenerationError(f"the CFG branches run on 1 or 2 devices (one pass each), got {devices}")
  local = jax.local_devices()
  if len(local) < devices:
    raise GenerationError(f"CFG branches on {devices} devices, but this process sees {len(local)} "
                          f"({local[0].platform})")
  return Mesh(np.asarray(local[:devices]), ("branch",))


def make_sampler(dit: WanDiT, schedule: FlowSchedule, *, solver: str, guidance: float | None,
                 forward: str = "parallel", cfg_devices: int = 1) -> "Sampler":
  """(noise, text, negative text) -> final latents, the whole sampling loop as one compiled program.

  ``forward``: 'parallel' (the DiT's ``__call__``) or 'recurrent' (``WanDiT.recurrent_forward``; checked by
  ``check_forward`` beforehand). With guidance (any scale but None and 1) the DiT runs twice per step, on
  the prompt and on the negative prompt. ``cfg_devices=1``: two passes one after the other (peak activation
  memory of one video). ``cfg_devices=2``: the two passes as one batch of two split over two devices (the
  weights replicated), each device running one branch, at the same time; the result is the same function.
  """
  graphdef, state = nnx.split(dit)
  guided = guidance is not None and guidance != 1.0
  mesh = branch_mesh(cfg_devices) if guided else None

  def both_branches(call, x, timesteps, text, negative_text):
    split = NamedSharding(mesh, PartitionSpec("branch"))
    pair = lambda a, b: jax.lax.with_sharding_constraint(jnp.concatenate([a, b]), split)
    out = call(pair(x, x), pair(timesteps, timesteps), pair(text, negative_text))
    out = jax.lax.with_sharding_constraint(out, split)
    return out[:x.shape[0]], out[x.shape[0]:]

  @jax.jit
  def run(state, noise, text, negative_text):
    def denoise(x, timesteps):
      # Merged inside the traced loop: the weights are the jit's arguments, never baked-in constants.
      model = nnx.merge(graphdef, state)
      call = model.recurrent_forward if forward == "recurrent" else model
      if not guided:
        return call(x, timesteps, text)
      if mesh is not None:
        return both_branches(call, x, timesteps, text, negative_text)
      return call(x, timesteps, text), call(x, timesteps, negative_text)

    return sample(denoise, noise, schedule=schedule, solver=solver, guidance_scale=guidance if guided else None)

  if mesh is None:
    return Sampler(run, state, lambda *inputs: inputs)
  replicated = NamedSharding(mesh, PartitionSpec())
  return Sampler(run, jax.device_put(state, replicated), lambda *inputs: jax.device_put(inputs, replicated))


class Sampler:
  """``make_sampler``'s result: call it with (noise, text, negative text); ``lower`` gives the same call's
  ``jax.stages.Lowered`` (its compiled HLO, cost and memory analysis) without running it."""

  def __init__(self, program, state, place):
    self._program, self._state, self._place = program, state, place

  def __call__(self, noise: jax.Array, text: jax.Array, negative_text: jax.Array) -> jax.Array:
    return self._program(self._state, *self._place(noise, text, negative_text))

  def lower(self, noise: jax.Array, text: jax.Array, negative_text: jax.Array):
    return self._program.lower(self._state, *self._place(noise, text, negative_text))


def latent_shape(pipeline: Pipeline, frames: int, height: int, width: int) -> tuple[int, ...]:
  """The noise / latents of one video: [1, z_dim, (frames - 1) / temporal + 1, H / spatial, W / spatial]."""
  vae = pipeline.vae.cfg
  return (1, vae.z_dim, (frames - 1) // vae.temporal_factor + 1, height // vae.spatial_factor,
          width // vae.spatial_factor)
