"""The on-disk record format and its writers: TFDS ``array_record`` datasets readable without TensorFlow.

Two record kinds, each a TFDS ``GeneratorBasedBuilder`` whose shapes come from its builder config:

* ``WanLatentsDataset``: ``latents`` float32 ``[16, F, H, W]`` (Wan2.1 normalised VAE latents),
  ``text_embedding`` ``[L, D]`` (umT5 output), ``text_length`` int32, ``caption`` and ``key`` strings.
* ``PromptEmbeddingsDataset``: ``prompt`` string, ``text_embedding`` ``[L, D]``, ``text_length`` int32; the
  prompts in split 'train', the negative prompt of classifier-free guidance as split ``NEGATIVE_SPLIT``.

Storage dtypes (decided here, read back by ``sources`` and decoded by ``pipeline``):

* ``latents`` are stored as **float32**, exactly as given: the Wan VAE encodes in float32, encoding is the
  expensive step, and halving 8.4 MB per 81-frame 480p clip is not worth a permanent rounding of every target.
* ``text_embedding`` is stored as **bfloat16 bit patterns in uint16** (TFDS has no bfloat16 dtype that reads
  back without TensorFlow). Wan runs umT5 in bfloat16, so its outputs round-trip bit-exactly; float32 input
  is rounded to nearest-even bfloat16 (relative error <= 2^-9). float16 was rejected: its range (65504) and
  subnormal floor are narrower than bfloat16's, so it is not exact for bfloat16 inputs. Rows
  ``>= text_length`` are zero, as Wan pads (it drops the encoder's outputs at padding positions).
* Both tensors use ``Encoding.BYTES`` (raw bytes, ``np.frombuffer`` on read; no int64 widening) and every
  ``array_record`` chunk is zstd-compressed by array_record itself, so the zero padding of a 512-token
  embedding costs almost nothing on disk.

Writers (none needs TensorFlow):

* ``write_latent_dataset`` / ``write_prompt_dataset``: one call, through ``download_and_prepare`` with the
  examples passed in. TFDS shuffles the record order on write (by key hash) and rejects duplicate keys.
* ``write_shard`` + ``finalize_dataset``: for tools that write in parallel (host i of n writes its shards)
  or resumably (a shard file appears atomically; ``shard_path`` says whether it exists). Shards keep their
  input order; ``finalize_dataset`` runs once, after every shard of every split exists, and writes the
  metadata that ``tfds.builder_from_directory`` reads.

Both produce ``<out_dir>/<dataset name>/<config name>/<version>/``, the directory the writers return and
``sources.open_latent_source`` opens.
"""

from __future__ import annotations

import abc
import dataclasses
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import tensorflow_datasets as tfds

Shape = tuple[int, ...]

# Wan2.1 at 480x832, 81 frames: 16 latent channels, 1 + 80/4 latent frames, 8x spatial compression.
WAN_480P_LATENT_SHAPE: Shape = (16, 21, 60, 104)
# umT5-XXL: 512 tokens of width 4096.
UMT5_TEXT_SHAPE: Shape = (512, 4096)
FILE_FORMAT = "array_record"
# The split of a prompt dataset holding the one negative prompt that guidance steers away from (stage 1
# follows the inference sampler, classifier-free guidance included).
NEGATIVE_SPLIT = "negative"


@dataclasses.dataclass(frozen=True)
class LatentShapes:
  """Shapes of one latent-video record: ``latents`` ``[C, F, H, W]`` and ``text`` ``[L, D]``."""

  latents: Shape = WAN_480P_LATENT_SHAPE
  text: Shape = UMT5_TEXT_SHAPE

  def __post_init__(self):
    object.__setattr__(self, "latents", _checked_shape(self.latents, 4, "latents"))
    object.__setattr__(self, "text", _checked_shape(self.text, 2, "text"))


def _checked_shape(shape: Iterable[int], ndim: int, what: str) -> Shape:
  shape = tuple(int(d) for d in shape)
  if len(shape) != ndim or min(shape) < 1:
    raise ValueError(f"{what} shape must be {ndim} positive sizes, got {shape}")
  return shape


def _shape_name(shape: Shape) -> str:
  return "x".join(str(d) for d in shape)


# --- bfloat16 <-> uint16 bit patterns -------------------------------------------------------------------------


def to_bf16_bits(values: Any) -> np.ndarray:
  """Floating values (float32/16, ml_dtypes.bfloat16) -> bfloat16 bit patterns; uint16 input is taken as bits."""
  values = np.asarray(values)
  if values.dtype == np.uint16:
    return values
  if values.dtype == ml_dtypes.bfloat16:
    return values.view(np.uint16)
  if values.dtype.kind != "f":
    raise TypeError(f"expected floating values or uint16 bfloat16 bits, got dtype {values.dtype}")
  return values.astype(ml_dtypes.bfloat16).view(np.uint16)


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
  """bfloat16 bit patterns (uint16) -> float32, exactly (a fresh writable array)."""
  return np.asarray(bits, dtype=np.uint16).view(ml_dtypes.bfloat16).astype(np.float32)


# --- examples -> records ------------------------------------------------------------------------------------------


def _padded_text_embedding(example: Mapping[str, Any], text_shape: Shape, name: str) -> tuple[np.ndarray, int]:
  """The example's ``text_embedding`` ``[n, D]`` (n <= L) as ``[L, D]`` bf16 bits, zero from ``text_length`` on."""
  max_length, width = text_shape
  embedding = np.asarray(example["text_embedding"])
  if embedding.ndim != 2 or embedding.shape[1] != width or embedding.shape[0] > max_length:
    raise ValueError(f"{name}: text_embedding shape {embedding.shape} does not fit [<= {max_length}, {width}]")
  length = example.get("text_length")
  length = embedding.shape[0] if length is None else int(length)
  if not 0 <= length <= embedding.shape[0]:
    raise ValueError(f"{name}: text_length {length} is outside [0, {embedding.shape[0]}] (the embedding's rows)")
  bits = to_bf16_bits(embedding[:length])
  if not np.isfinite(bf16_bits_to_float32(bits)).all():
    raise ValueError(f"{name}: text_embedding has non-finite values")
  padded = np.zeros(text_shape, np.uint16)  # bfloat16 +0.0 is all-zero bits
  padded[:length] = bits
  return padded, length


def make_latent_record(example: Mapping[str, Any], shapes: LatentShapes) -> dict[str, Any]:
  """A latent-video example -> the stored record (the structure ``sources`` return).

  ``example``: ``key`` (str, unique), ``latents`` (floating ``shapes.latents``), ``text_embedding`` (floating
  ``[n, D]``, n <= L, or uint16 bfloat16 bits), optional ``text_length`` (default n; rows from it on are
  dropped) and optional ``caption`` (default "").
  """
  key = example.get("key")
  if not isinstance(key, str) or not key:
    raise ValueError(f"a latent example needs a non-empty string 'key', got {key!r}")
  name = f"example {key!r}"
  latents = np.asarray(example["latents"])
  if latents.dtype.kind != "f" and latents.dtype != ml_dtypes.bfloat16:
    raise TypeError(f"{name}: latents must be floating, got dtype {latents.dtype}")
  if latents.shape != shapes.latents:
    raise ValueError(f"{name}: latents shape {latents.shape} != expected {shapes.latents}")
  latents = latents.astype(np.float32)
  if not np.isfinite(latents).all():
    raise ValueError(f"{name}: latents have non-finite values")
  text_embedding, text_length = _padded_text_embedding(example, shapes.text, name)
  return {
      "latents": latents,
      "text_embedding": text_embedding,
      "text_length": np.int32(text_length),
      "caption": str(example.get("caption") or ""),
      "key": key,
  }


def make_prompt_record(example: Mapping[str, Any], text_shape: Shape) -> dict[str, Any]:
  """A prompt example (``prompt``, ``text_embedding``, optional ``text_length``) -> the stored record."""
  prompt = example.get("prompt")
  if not isinstance(prompt, str):
    raise ValueError(f"a prompt example needs a string 'prompt', got {prompt!r}")
  text_embedding, text_length = _padded_text_embedding(example, text_shape, f"prompt {prompt[:60]!r}")
  return {"prompt": prompt, "text_embedding": text_embedding, "text_length": np.int32(text_length)}


def _text_features(text_shape: Shape) -> dict[str, tfds.features.FeatureConnector]:
  return {
      "text_embedding": tfds.features.Tensor(
          shape=text_shape, dtype=np.uint16, encoding=tfds.features.Encoding.BYTES,
          doc="umT5 output [L, D] as bfloat16 bit patterns; rows >= text_length are zero"),
      "text_length": tfds.features.Scalar(dtype=np.int32, doc="number of valid text tokens"),
  }


# --- builders -----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class WanLatentsConfig(tfds.core.BuilderConfig):
  """Builder config of ``WanLatentsDataset``; its name encodes the shapes, so each shape gets its own folder."""

  shapes: LatentShapes = LatentShapes()

  @classmethod
  def for_shapes(cls, shapes: LatentShapes) -> WanLatentsConfig:
    return cls(name=f"latents{_shape_name(shapes.latents)}_text{_shape_name(shapes.text)}", shapes=shapes)


@dataclasses.dataclass(eq=False)
class PromptEmbeddingsConfig(tfds.core.BuilderConfig):
  """Builder config of ``PromptEmbeddingsDataset``."""

  text_shape: Shape = UMT5_TEXT_SHAPE

  @classmethod
  def for_shape(cls, text_shape: Iterable[int]) -> PromptEmbeddingsConfig:
    text_shape = _checked_shape(text_shape, 2, "text")
    return cls(name=f"text{_shape_name(text_shape)}", text_shape=text_shape)


class RecordBuilder(tfds.core.GeneratorBasedBuilder):
  """Base of the two builders: examples are handed in (split -> iterable of input dicts), not downloaded.

  Abstract, so TFDS does not register it as a dataset.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First format."}

  def __init__(self, *, data_dir: str | os.PathLike, config: tfds.core.BuilderConfig,
               examples_by_split: Mapping[str, Iterable[Mapping[str, Any]]] | None = None):
    self._examples_by_split = examples_by_split or {}
    super().__init__(data_dir=os.fspath(data_dir), config=config, file_format=FILE_FORMAT)

  @abc.abstractmethod
  def make_record(self, example: Mapping[str, Any]) -> dict[str, Any]:
    """One input example -> the record stored on disk."""

  @abc.abstractmethod
  def _record_key(self, index: int, record: Mapping[str, Any]) -> str | int:
    """The TFDS key of a record (TFDS orders records by its hash and rejects duplicates)."""

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(examples) for split, examples in self._examples_by_split.items()}

  def _generate_examples(self, examples: Iterable[Mapping[str, Any]]) -> Iterator[tuple[str | int, dict]]:
    for index, example in enumerate(examples):
      record = self.make_record(example)
      yield self._record_key(index, record), record


class WanLatentsDataset(RecordBuilder):
  """Latent videos with their text embeddings; shapes from ``LatentShapes``."""

  def __init__(self, *, data_dir: str | os.PathLike, shapes: LatentShapes = LatentShapes(),
               examples_by_split: Mapping[str, Iterable[Mapping[str, Any]]] | None = None):
    self.shapes = shapes  # before super().__init__, which calls _info
    super().__init__(data_dir=data_dir, config=WanLatentsConfig.for_shapes(shapes),
                     examples_by_split=examples_by_split)

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo directly, not dataset_info_from_configs: the latter looks for metadata files
    # (README, CITATIONS) next to the builder's module.
    return tfds.core.DatasetInfo(
        builder=self,
        description="Wan2.1 normalised VAE latents of video clips with umT5 embeddings of their captions.",
        features=tfds.features.FeaturesDict({
            "latents": tfds.features.Tensor(
                shape=self.shapes.latents, dtype=np.float32, encoding=tfds.features.Encoding.BYTES,
                doc="Wan2.1 normalised VAE latents [C, F, H, W]"),
            **_text_features(self.shapes.text),
            "caption": tfds.features.Text(doc="caption the text embedding encodes (may be empty)"),
            "key": tfds.features.Text(doc="unique id of the clip"),
        }),
    )

  def make_record(self, example: Mapping[str, Any]) -> dict[str, Any]:
    return make_latent_record(example, self.shapes)

  def _record_key(self, index: int, record: Mapping[str, Any]) -> str:
    return record["key"]


class PromptEmbeddingsDataset(RecordBuilder):
  """Prompts with their text embeddings (inputs of teacher sampling and distillation)."""

  def __init__(self, *, data_dir: str | os.PathLike, text_shape: Iterable[int] = UMT5_TEXT_SHAPE,
               examples_by_split: Mapping[str, Iterable[Mapping[str, Any]]] | None = None):
    config = PromptEmbeddingsConfig.for_shape(text_shape)
    self.text_shape = config.text_shape  # before super().__init__, which calls _info
    super().__init__(data_dir=data_dir, config=config, examples_by_split=examples_by_split)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Prompts with their umT5 embeddings.",
        features=tfds.features.FeaturesDict({
            "prompt": tfds.features.Text(doc="the prompt"),
            **_text_features(self.text_shape),
        }),
    )

  def make_record(self, example: Mapping[str, Any]) -> dict[str, Any]:
    return make_prompt_record(example, self.text_shape)

  def _record_key(self, index: int, record: Mapping[str, Any]) -> int:
    return index  # prompts may repeat; the input position is unique


# --- one-call writers -------------------------------------------------------------------------------------------


def _prepare(builder: RecordBuilder, num_shards: int | None) -> Path:
  """Runs ``download_and_prepare`` on a fresh directory and returns the dataset directory."""
  if builder.is_prepared():
    # download_and_prepare would silently keep the old data and ignore the new examples.
    raise FileExistsError(f"a dataset already exists at {builder.data_path}; remove it or write elsewhere")
  with tempfile.TemporaryDirectory() as download_dir:  # unused, but TFDS would create one in out_dir
    builder.download_and_prepare(
        download_dir=download_dir,
        download_config=tfds.download.DownloadConfig(num_shards=num_shards))
  return Path(builder.data_path)


def write_latent_dataset(out_dir: str | os.PathLike, examples: Iterable[Mapping[str, Any]], *,
                         shapes: LatentShapes = LatentShapes(), split: str = "train",
                         num_shards: int | None = None) -> Path:
  """Writes one split of latent-video examples (see ``make_latent_record``); returns the dataset directory.

  ``num_shards=None`` lets TFDS choose (shards of 64 MiB to 1 GiB). The examples are consumed once; to shuffle
  them TFDS holds the serialized records in memory up to 1 GB, then in temporary files beside the output (about
  the dataset's size again), so large or multi-host writes should go through ``write_shard`` instead.
  """
  builder = WanLatentsDataset(data_dir=out_dir, shapes=shapes, examples_by_split={split: examples})
  return _prepare(builder, num_shards)


def write_prompt_dataset(out_dir: str | os.PathLike, examples: Iterable[Mapping[str, Any]], *,
                         text_shape: Iterable[int] = UMT5_TEXT_SHAPE, split: str = "train",
                         num_shards: int | None = None, negative: Mapping[str, Any] | None = None) -> Path:
  """Writes one split of prompt examples (see ``make_prompt_record``), and the negative prompt's embedding as
  split ``NEGATIVE_SPLIT`` when ``negative`` (an example) is given; returns the dataset directory."""
  examples_by_split = {split: examples, **({NEGATIVE_SPLIT: [negative]} if negative is not None else {})}
  builder = PromptEmbeddingsDataset(data_dir=out_dir, text_shape=text_shape, examples_by_split=examples_by_split)
  return _prepare(builder, num_shards)


# --- shard-by-shard writing (multi-host / resumable tools) -------------------------------------------------------


def _filename_template(builder: RecordBuilder) -> tfds.core.ShardedFileTemplate:
  # The default TFDS template, as download_and_prepare names its files.
  return tfds.core.ShardedFileTemplate(
      data_dir=builder.data_path, dataset_name=builder.name, filetype_suffix=FILE_FORMAT)


def shard_path(builder: RecordBuilder, split: str, shard_index: int, num_shards: int) -> Path:
  """Where ``write_shard`` puts shard ``shard_index`` of ``num_shards``; it exists only once complete."""
  if not 0 <= shard_index < num_shards:
    raise ValueError(f"shard_index {shard_index} is outside [0, num_shards={num_shards})")
  template = _filename_template(builder).replace(split=split)
  return Path(template.sharded_filepath(shard_index=shard_index, num_shards=num_shards))


def write_shard(builder: RecordBuilder, examples: Iterable[Mapping[str, Any]], *, split: str = "train",
                shard_index: int, num_shards: int) -> Path:
  """Writes one shard file of ``split`` from input examples, in their order, and returns its path.

  The file is written under a temporary name and renamed when complete, so an interrupted write leaves no
  shard behind and rewriting a shard replaces it. Keys are not checked for uniqueness across shards.
  """
  if builder.is_prepared():
    raise FileExistsError(f"the dataset at {builder.data_path} is already finalized; write shards before that")
  path = shard_path(builder, split, shard_index, num_shards)
  path.parent.mkdir(parents=True, exist_ok=True)
  features = builder.info.features
  serializer = tfds.core.example_serializer.ExampleSerializer(features.get_serialized_info())

  def serialized() -> Iterator[tuple[int, bytes]]:
    for index, example in enumerate(examples):
      yield index, serializer.serialize_example(features.encode_example(builder.make_record(example)))

  # A hidden name outside the shard template, so finalize_dataset never mistakes it for a shard.
  partial = path.with_name(f".{path.name}.incomplete")
  try:
    tfds.core.file_adapters.ArrayRecordFileAdapter.write_examples(partial, serialized())
    os.replace(partial, path)
  finally:
    partial.unlink(missing_ok=True)
  return path


def finalize_dataset(builder: RecordBuilder) -> Path:
  """Writes the metadata of shards written by ``write_shard``; run once, after all of them. Returns the dir.

  Every split found must have all its shards (0 .. n-1 of one n); missing ones are listed in the error.
  """
  data_path = Path(builder.data_path)
  if builder.is_prepared():
    raise FileExistsError(f"the dataset at {data_path} is already finalized")
  template = _filename_template(builder)
  shards: dict[str, dict[int, set[int]]] = {}  # split -> num_shards -> shard indices present
  for path in data_path.iterdir() if data_path.is_dir() else ():
    info = template.parse_filename_info(path.name)
    if info is not None and info.split and info.num_shards is not None:
      shards.setdefault(info.split, {}).setdefault(info.num_shards, set()).add(info.shard_index)
  if not shards:
    raise FileNotFoundError(f"no shard files in {data_path}; write them with write_shard first")
  split_infos = []
  for split, by_count in sorted(shards.items()):
    if len(by_count) != 1:
      raise ValueError(f"split {split!r} in {data_path} mixes shard counts {sorted(by_count)}")
    ((num_shards, present),) = by_count.items()
    paths = [shard_path(builder, split, i, num_shards) for i in range(num_shards)]
    missing = [path.name for i, path in enumerate(paths) if i not in present]
    if missing:
      raise FileNotFoundError(f"split {split!r} in {data_path} lacks {len(missing)} of {num_shards} shards: "
                              + ", ".join(missing))
    split_infos.append(tfds.core.SplitInfo(
        name=split,
        shard_lengths=[tfds.core.file_adapters.ArrayRecordFileAdapter.num_examples(p) for p in paths],
        num_bytes=sum(p.stat().st_size for p in paths),
        filename_template=template.replace(split=split)))
  builder.info.set_splits(tfds.core.SplitDict(split_infos))
  builder.info.write_to_directory(data_path)
  return data_path
