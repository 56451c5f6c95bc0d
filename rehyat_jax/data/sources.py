"""Random-access record sources: written TFDS datasets (checked when opened) and a synthetic latent source.

A source has ``len(source)`` and ``source[i]`` -> one stored record (the structure ``builders`` writes):
numpy arrays in their storage dtypes (``text_embedding`` as uint16 bfloat16 bits), ``text_length`` an int and
strings as UTF-8 ``bytes``, as TFDS returns them. ``pipeline.decode_record`` turns a record into training
dtypes.

``open_latent_source`` / ``open_prompt_source`` read through ``tfds.builder_from_directory(d).as_data_source``
(no TensorFlow). They take the dataset directory (``<out>/<name>/<config>/<version>``) or any folder above it,
such as the ``--out`` folder of a dataset tool: the one dataset of the wanted kind below it is opened, and none
or several is an error that lists what was found. TFDS and array_record only notice a missing or truncated shard on the first read that
touches it, deep inside a Grain thread, so opening checks every shard of the split first (that it exists and
that its footer holds the record count the metadata promises: a read of each file's footer, not of its
records) and reports all problems in one ``DataSourceError`` naming the files. A record damaged inside a
shard fails its checksum when read; that error names the record and its shard file.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import operator
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from rehyat_jax.data.builders import LatentShapes, make_latent_record

LATENT_FEATURES = ("latents", "text_embedding", "text_length", "caption", "key")
PROMPT_FEATURES = ("prompt", "text_embedding", "text_length")


class DataSourceError(RuntimeError):
  """A dataset directory that cannot be opened or read; the message names the directory or file."""


@dataclasses.dataclass(frozen=True)
class CheckedSource:
  """A TFDS data source of one split whose read errors name the shard file (picklable for Grain workers)."""

  source: Sequence[dict[str, Any]]
  data_dir: Path
  split: str
  shard_files: tuple[Path, ...]
  shard_ends: tuple[int, ...]  # cumulative record counts: shard i holds [shard_ends[i-1], shard_ends[i])

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    try:
      return self.source[index]
    except IndexError:
      raise
    except Exception as error:  # array_record raises RuntimeError, protobuf DecodeError, ...
      shard = self.shard_files[min(bisect.bisect_right(self.shard_ends, index), len(self.shard_files) - 1)]
      raise DataSourceError(f"reading record {index} of split {self.split!r} of {self.data_dir} failed "
                            f"(in {shard.name}): {type(error).__name__}: {error}") from error


def open_latent_source(data_dir: str | os.PathLike, split: str = "train") -> CheckedSource:
  """Opens a split written by ``write_latent_dataset`` / ``finalize_dataset`` (their directory or a folder above)."""
  return _open_checked(Path(data_dir), split, LATENT_FEATURES, "latent")


def open_prompt_source(data_dir: str | os.PathLike, split: str = "train") -> CheckedSource:
  """Opens a split written by ``write_prompt_dataset`` / ``finalize_dataset`` (their directory or a folder above)."""
  return _open_checked(Path(data_dir), split, PROMPT_FEATURES, "prompt")


def _read_builder(data_dir: Path):
  try:
    return tfds.builder_from_directory(os.fspath(data_dir))
  except Exception as error:  # malformed dataset_info.json / features.json
    raise DataSourceError(f"cannot read the TFDS metadata in {data_dir}: {type(error).__name__}: {error}") \
        from error


def _has_features(builder, features: Sequence[str]) -> bool:
  return set(features) <= set(builder.info.features.keys())


def resolve_dataset_dir(data_dir: str | os.PathLike, features: Sequence[str], kind: str) -> Path:
  """The dataset directory of ``data_dir``: itself if it holds ``dataset_info.json``, else the one finalised
  dataset below it whose features include ``features`` (a tool's ``--out`` folder holds
  ``<name>/<config>/<version>/``). None or several below it is a ``DataSourceError`` listing what is there."""
  data_dir = Path(data_dir)
  if (data_dir / "dataset_info.json").is_file():
    return data_dir
  if not data_dir.is_dir():
    raise DataSourceError(_not_a_dataset_message(data_dir, kind))
  below = sorted(p.parent for p in data_dir.rglob("dataset_info.json") if "incomplete" not in p.parent.name)
  matching = [d for d in below if _has_features(_read_builder(d), features)]
  if len(matching) == 1:
    return matching[0]
  if len(matching) > 1:
    raise DataSourceError(f"{data_dir} holds {len(matching)} {kind} datasets; pass one of them: "
                          + ", ".join(map(str, matching)))
  raise DataSourceError(_not_a_dataset_message(data_dir, kind, others=below))


def _open_checked(data_dir: Path, split: str, features: Sequence[str], kind: str) -> CheckedSource:
  data_dir = resolve_dataset_dir(data_dir, features, kind)
  builder = _read_builder(data_dir)
  found = sorted(builder.info.features.keys())
  if not _has_features(builder, features):
    raise DataSourceError(f"{data_dir} is not a {kind} dataset: its features are {found}, "
                          f"a {kind} dataset has {sorted(features)}")
  if split not in builder.info.splits:
    raise DataSourceError(f"{data_dir} has no split {split!r}; its splits are {sorted(builder.info.splits)}")
  split_info = builder.info.splits[split]
  shard_files = tuple(Path(p) for p in split_info.filepaths)
  problems = _shard_problems(shard_files, split_info.shard_lengths)
  if problems:
    # The reasons are in the message; the inner tracebacks would only bury them.
    raise DataSourceError(f"split {split!r} of {data_dir} is damaged ({len(problems)} of "
                          f"{len(split_info.shard_lengths)} shards); rewrite those shards:\n  "
                          + "\n  ".join(problems)) from None
  return CheckedSource(builder.as_data_source(split), data_dir, split, shard_files,
                       tuple(itertools.accumulate(split_info.shard_lengths)))


def _not_a_dataset_message(data_dir: Path, kind: str, others: Sequence[Path] = ()) -> str:
  if not data_dir.exists():
    return f"dataset directory {data_dir} does not exist"
  if others:
    return (f"no {kind} dataset in {data_dir}; the datasets below it are of another kind: "
            + ", ".join(map(str, others[:4])))
  message = f"no TFDS dataset in {data_dir} or below it (no dataset_info.json)"
  if any(data_dir.rglob("*.array_record-*")):
    return message + ("; it holds shard files: the dataset is not finalised yet (rerun the tool on its last host, "
                      "or with --finalize, once all shards are written; or call builders.finalize_dataset)")
  return message


def _shard_problems(paths: Sequence[Path], expected_lengths: Sequence[int]) -> list[str]:
  problems = []
  for path, expected in zip(paths, expected_lengths):
    if not path.is_file():
      problems.append(f"{path}: missing")
      continue
    try:
      # Opening a reader parses the footer: a truncated or overwritten file fails here.
      length = tfds.core.file_adapters.ArrayRecordFileAdapter.num_examples(path)
    except Exception as error:
      problems.append(f"{path}: unreadable, truncated or corrupted ({type(error).__name__}: {error})")
      continue
    if length != expected:
      problems.append(f"{path}: holds {length} records, the metadata says {expected}")
  return problems


@dataclasses.dataclass(frozen=True)
class SyntheticLatentSource:
  """``num_examples`` random latent records; record ``i`` depends only on ``(seed, i)``, so any process can
  read any index. Latents are standard normal (as normalised Wan latents roughly are); each text embedding
  has a random length in [1, L] and bfloat16-representable values. Records go through the same
  ``make_latent_record`` the writers use, so they can also be written as a dataset.
  """

  num_examples: int
  shapes: LatentShapes = LatentShapes()
  seed: int = 0

  def __post_init__(self):
    if self.num_examples < 1 or self.seed < 0:
      raise ValueError(f"need num_examples >= 1 and seed >= 0, got {self.num_examples}, {self.seed}")

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = operator.index(index)
    if not 0 <= index < self.num_examples:
      raise IndexError(f"index {index} is outside [0, {self.num_examples})")
    rng = np.random.default_rng([self.seed, index])  # a SeedSequence: independent streams per (seed, index)
    max_length, width = self.shapes.text
    text_length = int(rng.integers(1, max_length + 1))
    record = make_latent_record({
        "key": f"synthetic-{self.seed}-{index}",
        "latents": rng.standard_normal(self.shapes.latents, dtype=np.float32),
        "text_embedding": rng.standard_normal((text_length, width), dtype=np.float32) * 0.1,
        "caption": f"synthetic clip {index} of seed {self.seed}",
    }, self.shapes)
    # Strings as bytes and the length as an int, as the TFDS source returns them.
    return dict(record, caption=record["caption"].encode(), key=record["key"].encode(),
                text_length=int(record["text_length"]))
