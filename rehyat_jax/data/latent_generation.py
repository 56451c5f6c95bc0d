"""Teacher latents: prompts -> a teacher DiT samples clean latents -> a ``WanLatentsDataset`` (no VAE needed).

Each record is one prompt's sample from Wan2.1's flow sampler with classifier-free guidance (the pieces of
``rehyat_jax.inference``: same schedule, sampler and negative prompt), keyed ``p{index:08d}-s{seed}``. The
teacher is conditioned on the text embeddings as the record stores them (rounded to bfloat16), so a student
trained on the record sees exactly the teacher's condition. The noise of prompt ``i`` is drawn from
``jax.random.key(seed + i)`` whatever the host split, so resuming or changing the number of hosts gives the
same records. Latent shape: ``[in_dim, (frames - 1) / 4 + 1, height / 8,
width / 8]`` (the Wan VAE's compression). Shards, hosts and resuming work as in ``prompt_encoding``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rehyat_jax.data.builders import LatentShapes, WanLatentsDataset, bf16_bits_to_float32, to_bf16_bits
from rehyat_jax.data.prompt_encoding import EncodingSummary, encode_texts, text_shape, write_host_shards
from rehyat_jax.inference.pipeline import WAN_SIZE_MULTIPLE, WAN_TEMPORAL_FACTOR, check_prompts, check_video_shape
from rehyat_jax.inference.sampler import make_sampler, make_schedule
from rehyat_jax.models.tokenizer import UMT5Tokenizer
from rehyat_jax.models.umt5 import UMT5Encoder
from rehyat_jax.models.wan import WanDiT
from rehyat_jax.sampling import WAN_NEGATIVE_PROMPT, WAN_T2V_GUIDANCE_SCALE, WAN_T2V_SAMPLING_STEPS, WAN_T2V_SHIFT

WAN_SPATIAL_FACTOR = 8


def as_stored(embedding: np.ndarray) -> np.ndarray:
  """The embedding rounded to bfloat16 as the dataset stores it: the teacher conditions on exactly what a
  student trained on the record will see."""
  return bf16_bits_to_float32(to_bf16_bits(embedding))


def teacher_latent_shape(dit: WanDiT, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
  return (dit.cfg.in_dim, (frames - 1) // WAN_TEMPORAL_FACTOR + 1, height // WAN_SPATIAL_FACTOR,
          width // WAN_SPATIAL_FACTOR)


def record_key(index: int, seed: int) -> str:
  return f"p{index:08d}-s{seed}"


def generate_latents(prompts: Sequence[str], dit: WanDiT, tokenizer: UMT5Tokenizer, encoder: UMT5Encoder,
                     out_dir: str | os.PathLike, *, frames: int = 81, height: int = 480, width: int = 832,
                     steps: int = WAN_T2V_SAMPLING_STEPS, guidance: float | None = WAN_T2V_GUIDANCE_SCALE,
                     shift: float = WAN_T2V_SHIFT, solver: str = "unipc", seed: int = 0,
                     negative_prompt: str = WAN_NEGATIVE_PROMPT, host_index: int = 0, num_hosts: int = 1,
                     examples_per_shard: int = 64, batch_size: int = 8,
                     finalize: bool | None = None) -> EncodingSummary:
  """Writes this host's shards of teacher samples of ``prompts`` (see the module docstring).

  ``batch_size`` is the text encoder's; the DiT samples one prompt at a time (as ``generate``). Bad arguments
  (``inference.GenerationError``, a ``ValueError``) are raised before anything is compiled.
  """
  prompts = check_prompts(prompts)
  check_video_shape(frames, height, width, size_multiple=WAN_SIZE_MULTIPLE)
  if encoder.cfg.d_model != dit.cfg.text_dim or tokenizer.text_len > dit.cfg.text_len:
    raise ValueError(f"the text encoder (width {encoder.cfg.d_model}, {tokenizer.text_len} tokens) does not fit "
                     f"the DiT (text_dim {dit.cfg.text_dim}, text_len {dit.cfg.text_len})")
  schedule = make_schedule(solver, steps, shift)
  shape = teacher_latent_shape(dit, frames, height, width)
  builder = WanLatentsDataset(data_dir=out_dir, shapes=LatentShapes(latents=shape,
                                                                   text=text_shape(tokenizer, encoder)))
  # Built once: the sampler compiles on its first call and is reused for every shard.
  sampler = make_sampler(dit, schedule, solver=solver, guidance=guidance, forward="parallel")
  ((negative_embedding, _),) = encode_texts([negative_prompt], tokenizer, encoder, batch_size=1)
  # The DiT takes text_len tokens; the tokenizer may pad to fewer (the rest is zero, as Wan pads).
  pad_rows = ((0, dit.cfg.text_len - tokenizer.text_len), (0, 0))
  negative_text = jnp.asarray(np.pad(as_stored(negative_embedding), pad_rows)[None])

  def make_examples(indices: range) -> Iterator[dict[str, Any]]:
    shard_prompts = [prompts[i] for i in indices]
    texts = encode_texts(shard_prompts, tokenizer, encoder, batch_size)
    for index, prompt, (embedding, length) in zip(indices, shard_prompts, texts):
      noise = jax.random.normal(jax.random.key(seed + index), (1, *shape), jnp.float32)
      latents = sampler(noise, jnp.asarray(np.pad(as_stored(embedding), pad_rows)[None]), negative_text)
      yield {"key": record_key(index, seed), "caption": prompt, "latents": np.asarray(latents, np.float32)[0],
             "text_embedding": embedding, "text_length": length}

  return write_host_shards(builder, len(prompts), make_examples, host_index=host_index, num_hosts=num_hosts,
                           examples_per_shard=examples_per_shard, finalize=finalize,
                           description="teacher shards")
