"""The compiled pieces of one generation: the flow schedule, the text encoder (and ``text_encoder_on_device``,
which holds its weights on the accelerator only while prompts are encoded), the whole guided sampling loop
(teacher or student, parallel or recurrent DiT forward) and the latent shape of a video.

Also used by the dataset writers (``rehyat_jax.data.latent_generation``), so teacher latents in a dataset
are sampled exactly as a generated video is.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec, Sharding, SingleDeviceSharding

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


def _text_encoder_program(pipeline: Pipeline) -> Callable[[nnx.State, Sequence[str]], jax.Array]:
  """(encoder state, texts) -> Wan's text embeddings; the state is an argument so no closure pins the weights."""
  graphdef = nnx.graphdef(pipeline.text_encoder)
  text_len = pipeline.dit.cfg.text_len

  @jax.jit
  def encode(state, ids, mask):
    hidden = nnx.merge(graphdef, state)(ids, mask)
    return encode_for_wan(hidden, mask, text_len)

  def encode_texts(state: nnx.State, texts: Sequence[str]) -> jax.Array:
    ids, mask = pipeline.tokenizer(list(texts))
    return encode(state, jnp.asarray(ids), jnp.asarray(mask))

  return encode_texts


def make_text_encoder(pipeline: Pipeline) -> Callable[[Sequence[str]], jax.Array]:
  """texts -> Wan's text embeddings [B, text_len, d_model] (padding zeroed), one compiled program, run on the
  encoder's weights wherever they are at the call (the state's variables are the module's own)."""
  state = nnx.state(pipeline.text_encoder)
  program = _text_encoder_program(pipeline)
  return lambda texts: program(state, texts)


def device_sharding(device: jax.Device | None = None) -> SingleDeviceSharding:
  """The accelerator's own memory on ``device`` (default: the first local device)."""
  device = jax.local_devices()[0] if device is None else device
  return SingleDeviceSharding(device, memory_kind=device.default_memory().kind)


def host_sharding(device: jax.Device | None = None) -> Sharding:
  """Where the text encoder waits between generations: ``device``'s pinned host memory where the backend has
  one (the copy back is a DMA at full link speed), else the CPU device."""
  device = jax.local_devices()[0] if device is None else device
  if any(memory.kind == "pinned_host" for memory in device.addressable_memories()):
    return SingleDeviceSharding(device, memory_kind="pinned_host")
  return SingleDeviceSharding(jax.devices("cpu")[0])


def _is_array(leaf) -> bool:
  # load_umt5 leaves numpy arrays (orbax restores without a sharding into host memory).
  return isinstance(leaf, (jax.Array, np.ndarray))


def _state_arrays(module: nnx.Module) -> list[jax.Array | np.ndarray]:
  return [leaf for leaf in jax.tree.leaves(nnx.state(module)) if _is_array(leaf)]


def _set_state_arrays(module: nnx.Module, arrays: Sequence[jax.Array]) -> None:
  """Replaces the arrays of ``module``'s state, in ``_state_arrays`` order (other leaves kept)."""
  leaves, treedef = jax.tree.flatten(nnx.state(module))
  arrays = iter(arrays)
  # A new State (new variables): nnx.state's own variables are the module's, so it cannot be a snapshot.
  nnx.update(module, jax.tree.unflatten(treedef, [next(arrays) if _is_array(leaf) else leaf
                                                   for leaf in leaves]))


@contextlib.contextmanager
def text_encoder_on_device(pipeline: Pipeline) -> Iterator[Callable[[Sequence[str]], jax.Array]]:
  """Puts ``pipeline.text_encoder``'s weights on the first local device, yields texts -> Wan's text embeddings
  (``make_text_encoder``'s program), and on exit puts the weights in host memory (``host_sharding``) and
  deletes their device buffers, so umT5-XXL (~11 GiB in bf16) is off the accelerator while the DiT samples and
  the VAE decodes.

  The module stays usable: the next ``with`` copies its weights back to the device, bit for bit. A host copy
  found on entry is kept and reinstated on exit (the weights do not change), so only the first exit copies
  device -> host. The yielded function raises after the block. Deleting the device buffers explicitly frees
  them even where something else still references them (such a reference is invalidated, not kept alive).
  """
  encoder, host = pipeline.text_encoder, host_sharding()
  before = _state_arrays(encoder)
  host_copy = before if all(isinstance(a, jax.Array) and a.sharding.is_equivalent_to(host, a.ndim)
                           for a in before) else None
  _set_state_arrays(encoder, jax.device_put(before, device_sharding()))
  del before
  program = _text_encoder_program(pipeline)
  held = [nnx.state(encoder)]

  def encode_texts(texts: Sequence[str]) -> jax.Array:
    if not held:
      raise RuntimeError("text_encoder_on_device: the text encoder is back in host memory; encode inside the "
                         "with block")
    return program(held[0], texts)

  try:
    yield encode_texts
  finally:
    held.clear()
    on_device = _state_arrays(encoder)
    _set_state_arrays(encoder, jax.device_put(on_device, host) if host_copy is None else host_copy)
    kept = {id(a) for a in _state_arrays(encoder)}
    for array in on_device:
      if id(array) not in kept and isinstance(array, jax.Array) and not array.is_deleted():
        array.delete()


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
