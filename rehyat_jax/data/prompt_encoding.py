"""Encoding prompts into a ``PromptEmbeddingsDataset``, host-sharded and resumable; the shared shard loop.

The work is cut into shards deterministically: example ``i`` of ``n`` goes to shard ``i // examples_per_shard``
(so the shards keep the input order and every host computes the same plan from the same input). Host ``h`` of
``H`` writes the shards ``s`` with ``s % H == h``. Each shard file appears atomically (``builders.write_shard``),
so a rerun skips the shards whose file exists and an interrupted job resumes where it stopped. The last host
(``host_index == num_hosts - 1``) finalises the dataset once every shard exists; if it finishes before the
others, run it again (it skips everything and finalises) or call ``finalize_when_complete``.

A resumed run must see the same input and ``examples_per_shard``: shards are matched by index only.

``write_host_shards`` is the loop ``video_encoding`` reuses; ``encode_texts`` is the text half of both tools.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from rehyat_jax.data.builders import NEGATIVE_SPLIT, PromptEmbeddingsDataset, RecordBuilder, finalize_dataset, \
    shard_path, write_shard
from rehyat_jax.models.tokenizer import UMT5Tokenizer
from rehyat_jax.models.umt5 import UMT5Encoder, encode_for_wan
from rehyat_jax.sampling.guidance import WAN_NEGATIVE_PROMPT

SPLIT = "train"


@dataclasses.dataclass(frozen=True)
class EncodingSummary:
  """What one host's run did; ``dataset_dir`` is set when the dataset is finalised (by this run or before)."""

  examples: int
  shards_total: int
  shards_written: int
  shards_skipped: int
  seconds: float
  dataset_dir: Path | None

  def describe(self) -> str:
    state = f"dataset at {self.dataset_dir}" if self.dataset_dir else "dataset not finalised yet"
    return (f"{self.examples} examples in {self.shards_total} shards: {self.shards_written} written, "
            f"{self.shards_skipped} skipped (already there) in {self.seconds:.1f} s; {state}")


# --- the shard plan -----------------------------------------------------------------------------------------------


def shard_ranges(num_examples: int, examples_per_shard: int) -> list[range]:
  """The example indices of each shard: consecutive runs of ``examples_per_shard`` (the last may be shorter)."""
  if num_examples < 1:
    raise ValueError(f"nothing to encode: got {num_examples} examples")
  if examples_per_shard < 1:
    raise ValueError(f"examples_per_shard must be positive, got {examples_per_shard}")
  return [range(start, min(start + examples_per_shard, num_examples))
          for start in range(0, num_examples, examples_per_shard)]


def host_shards(num_shards: int, host_index: int, num_hosts: int) -> list[int]:
  """The shard indices host ``host_index`` of ``num_hosts`` writes (round robin)."""
  if num_hosts < 1 or not 0 <= host_index < num_hosts:
    raise ValueError(f"host_index must be in [0, num_hosts), got host_index={host_index}, num_hosts={num_hosts}")
  return list(range(host_index, num_shards, num_hosts))


def finalize_when_complete(builder: RecordBuilder, num_shards: int) -> Path | None:
  """Finalises the dataset if every shard exists and it is not finalised yet; returns its dir, or None."""
  if builder.is_prepared():
    return Path(builder.data_path)
  if all(shard_path(builder, SPLIT, i, num_shards).exists() for i in range(num_shards)):
    return finalize_dataset(builder)
  return None


def write_host_shards(builder: RecordBuilder, num_examples: int,
                      make_examples: Callable[[range], Iterable[Mapping[str, Any]]], *, host_index: int,
                      num_hosts: int, examples_per_shard: int, finalize: bool | None = None,
                      description: str = "shards") -> EncodingSummary:
  """Writes this host's missing shards, ``make_examples(indices)`` giving each shard's examples.

  ``finalize``: None finalises on the last host only (so that hosts finishing together do not both write the
  metadata); True / False force it on / off. Finalising happens only when all shards exist.
  """
  start = time.perf_counter()
  ranges = shard_ranges(num_examples, examples_per_shard)
  mine = host_shards(len(ranges), host_index, num_hosts)
  written = skipped = 0
  for shard in tqdm(mine, desc=description, unit="shard"):
    # A finalised dataset has every shard, so this also makes a rerun after finalising a no-op.
    if shard_path(builder, SPLIT, shard, len(ranges)).exists():
      skipped += 1
      continue
    write_shard(builder, make_examples(ranges[shard]), split=SPLIT, shard_index=shard, num_shards=len(ranges))
    written += 1
  if finalize is None:
    finalize = host_index == num_hosts - 1
  dataset_dir = finalize_when_complete(builder, len(ranges)) if finalize else None
  if dataset_dir is None and builder.is_prepared():
    dataset_dir = Path(builder.data_path)
  return EncodingSummary(examples=num_examples, shards_total=len(ranges), shards_written=written,
                         shards_skipped=skipped, seconds=time.perf_counter() - start, dataset_dir=dataset_dir)


# --- text encoding ------------------------------------------------------------------------------------------------


@nnx.jit
def _encode_tokens(encoder: UMT5Encoder, token_ids: jax.Array, mask: jax.Array) -> jax.Array:
  return encode_for_wan(encoder(token_ids, mask), mask, token_ids.shape[1])


def batches(items: Sequence[Any], batch_size: int) -> Iterator[Sequence[Any]]:
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  for start in range(0, len(items), batch_size):
    yield items[start:start + batch_size]


def encode_texts(texts: Sequence[str], tokenizer: UMT5Tokenizer, encoder: UMT5Encoder,
                 batch_size: int) -> list[tuple[np.ndarray, int]]:
  """Each text -> (``[text_len, d_model]`` float32 embedding as Wan's DiT receives it, its token count).

  Batches are padded to ``batch_size`` with empty prompts, so the encoder compiles once.
  """
  encoded = []
  for batch in batches(list(texts), batch_size):
    ids, mask = tokenizer(list(batch) + [""] * (batch_size - len(batch)))
    embeddings = np.asarray(_encode_tokens(encoder, jnp.asarray(ids), jnp.asarray(mask)), np.float32)
    lengths = mask.sum(axis=1)
    encoded.extend((embeddings[row], int(lengths[row])) for row in range(len(batch)))
  return encoded


def text_shape(tokenizer: UMT5Tokenizer, encoder: UMT5Encoder) -> tuple[int, int]:
  return tokenizer.text_len, encoder.cfg.d_model


# --- prompts ------------------------------------------------------------------------------------------------------


def read_prompts(path: str | os.PathLike) -> list[str]:
  """One prompt per line; blank lines are skipped (surrounding whitespace is kept for the tokenizer to clean)."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"prompt file {path} does not exist")
  prompts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
  if not prompts:
    raise ValueError(f"prompt file {path} holds no prompts (only blank lines)")
  return prompts


def encode_prompts(prompts: Sequence[str], tokenizer: UMT5Tokenizer, encoder: UMT5Encoder,
                   out_dir: str | os.PathLike, *, host_index: int = 0, num_hosts: int = 1,
                   examples_per_shard: int = 1024, batch_size: int = 8,
                   finalize: bool | None = None, negative_prompt: str = WAN_NEGATIVE_PROMPT) -> EncodingSummary:
  """Writes this host's shards of the ``PromptEmbeddingsDataset`` of ``prompts`` under ``out_dir``.

  See the module docstring for the shard plan, resuming and finalising. Record ``i`` of the finished dataset
  is ``prompts[i]``. The host that finalises also writes ``negative_prompt`` (empty: Wan's default, as
  generation does) as split ``NEGATIVE_SPLIT``, the negative branch of the guided teacher trajectories that
  stage 1 distils on.
  """
  prompts = list(prompts)
  if not prompts:
    raise ValueError("nothing to encode: the prompt list is empty")
  builder = PromptEmbeddingsDataset(data_dir=out_dir, text_shape=text_shape(tokenizer, encoder))
  finalizing = host_index == num_hosts - 1 if finalize is None else finalize
  negative_path = shard_path(builder, NEGATIVE_SPLIT, 0, 1)
  if finalizing and not builder.is_prepared() and not negative_path.exists():
    negative_prompt = negative_prompt or WAN_NEGATIVE_PROMPT
    ((embedding, length),) = encode_texts([negative_prompt], tokenizer, encoder, batch_size)
    write_shard(builder, [{"prompt": negative_prompt, "text_embedding": embedding, "text_length": length}],
                split=NEGATIVE_SPLIT, shard_index=0, num_shards=1)

  def make_examples(indices: range) -> Iterator[dict[str, Any]]:
    shard_prompts = [prompts[i] for i in indices]
    for prompt, (embedding, length) in zip(shard_prompts, encode_texts(shard_prompts, tokenizer, encoder,
                                                                       batch_size)):
      yield {"prompt": prompt, "text_embedding": embedding, "text_length": length}

  return write_host_shards(builder, len(prompts), make_examples, host_index=host_index, num_hosts=num_hosts,
                           examples_per_shard=examples_per_shard, finalize=finalize,
                           description="prompt shards")
