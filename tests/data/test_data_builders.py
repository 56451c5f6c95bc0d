"""Writers: what goes in comes back exactly (as the documented storage dtypes), through both write paths."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import tensorflow_datasets as tfds

from rehyat_jax.data.builders import (PromptEmbeddingsDataset, WanLatentsDataset, bf16_bits_to_float32,
                                      finalize_dataset, make_latent_record, shard_path, to_bf16_bits,
                                      write_latent_dataset, write_prompt_dataset, write_shard)
from tiny_data import NUM_EXAMPLES, TINY_SHAPES, tiny_examples


def read_all(dataset_dir, split="train") -> list[dict]:
  """Every record of a split, read the plain TFDS way (no TensorFlow)."""
  source = tfds.builder_from_directory(dataset_dir).as_data_source(split)
  return [source[i] for i in range(len(source))]


def check_record_matches_example(record: dict, example: dict) -> None:
  max_length, width = TINY_SHAPES.text
  rows = example["text_embedding"].shape[0]
  length = example.get("text_length", rows)
  assert record["latents"].dtype == np.float32 and record["latents"].shape == TINY_SHAPES.latents
  np.testing.assert_array_equal(record["latents"], example["latents"])
  assert record["text_embedding"].dtype == np.uint16 and record["text_embedding"].shape == (max_length, width)
  assert record["text_length"] == length
  decoded = bf16_bits_to_float32(record["text_embedding"])
  # Bit-exact for bf16 input, nearest-even rounding for float32 input; zero from text_length on.
  expected = example["text_embedding"][:length].astype(ml_dtypes.bfloat16).astype(np.float32)
  np.testing.assert_array_equal(decoded[:length], expected)
  assert not record["text_embedding"][length:].any()
  assert record["caption"] == example.get("caption", "").encode()
  assert record["key"] == example["key"].encode()


def test_latent_dataset_reads_back_exactly(tiny_dataset):
  assert tiny_dataset.name == "1.0.0" and tiny_dataset.parent.name == "latents4x3x4x6_text12x16"
  assert len(list(tiny_dataset.glob("*.array_record-*-of-00002"))) == 2
  records = read_all(tiny_dataset)
  examples = {example["key"]: example for example in tiny_examples()}
  assert sorted(r["key"].decode() for r in records) == sorted(examples)  # TFDS reorders by key hash
  for record in records:
    check_record_matches_example(record, examples[record["key"].decode()])


def test_bfloat16_bits_round_trip():
  values = np.array([0.0, -0.0, 1.0, -2.5, 3.0e38, 1.0e-40, np.pi], np.float32)
  bits = to_bf16_bits(values)
  assert bits.dtype == np.uint16
  np.testing.assert_array_equal(bits, values.astype(ml_dtypes.bfloat16).view(np.uint16))
  assert to_bf16_bits(bits) is bits  # uint16 is already the stored form
  np.testing.assert_array_equal(bf16_bits_to_float32(bits), values.astype(ml_dtypes.bfloat16).astype(np.float32))
  every_bf16 = np.arange(2**16, dtype=np.uint16)
  not_nan = every_bf16[~np.isnan(bf16_bits_to_float32(every_bf16))]  # NaN payloads are canonicalised
  np.testing.assert_array_equal(to_bf16_bits(bf16_bits_to_float32(not_nan)), not_nan)


def test_prompt_dataset_reads_back(tmp_path):
  rng = np.random.default_rng(0)
  prompts = ["a dog", "a dog", "ein Hund im Schnee ❄"]  # duplicates are allowed
  embeddings = [rng.standard_normal((n, 16)).astype(ml_dtypes.bfloat16) for n in (2, 2, 12)]
  out = write_prompt_dataset(tmp_path, [{"prompt": p, "text_embedding": e} for p, e in zip(prompts, embeddings)],
                             text_shape=(12, 16))
  records = read_all(out)
  assert sorted(r["prompt"].decode() for r in records) == sorted(prompts)
  by_length = {int(r["text_length"]): r for r in records}
  np.testing.assert_array_equal(by_length[12]["text_embedding"], embeddings[2].view(np.uint16))
  assert by_length[2]["text_embedding"].shape == (12, 16) and not by_length[2]["text_embedding"][2:].any()


def test_shards_written_separately_form_one_dataset(tmp_path):
  examples = tiny_examples()
  # Two "hosts", each with its own builder object, write shard 0 and 1 of 2; a third finalizes.
  for shard_index, part in enumerate([examples[:4], examples[4:]]):
    builder = WanLatentsDataset(data_dir=tmp_path, shapes=TINY_SHAPES)
    assert not shard_path(builder, "train", shard_index, 2).exists()
    written = write_shard(builder, part, split="train", shard_index=shard_index, num_shards=2)
    assert written == shard_path(builder, "train", shard_index, 2) and written.exists()
  out = finalize_dataset(WanLatentsDataset(data_dir=tmp_path, shapes=TINY_SHAPES))
  records = read_all(out)
  assert [r["key"].decode() for r in records] == [e["key"] for e in examples]  # shards keep input order
  for record, example in zip(records, examples):
    check_record_matches_example(record, example)
  assert tfds.builder_from_directory(out).info.splits["train"].shard_lengths == [4, NUM_EXAMPLES - 4]


def test_finalize_lists_missing_shards(tmp_path):
  builder = WanLatentsDataset(data_dir=tmp_path, shapes=TINY_SHAPES)
  write_shard(builder, tiny_examples(2), shard_index=1, num_shards=3)
  with pytest.raises(FileNotFoundError, match="lacks 2 of 3 shards") as info:
    finalize_dataset(builder)
  assert "train.array_record-00000-of-00003" in str(info.value) and "00002-of-00003" in str(info.value)


def test_interrupted_shard_write_leaves_no_shard(tmp_path):
  builder = PromptEmbeddingsDataset(data_dir=tmp_path, text_shape=(12, 16))

  def failing_examples():
    yield {"prompt": "fine", "text_embedding": np.ones((3, 16), np.float32)}
    raise KeyboardInterrupt  # e.g. a preempted host

  with pytest.raises(KeyboardInterrupt):
    write_shard(builder, failing_examples(), shard_index=0, num_shards=1)
  assert list(shard_path(builder, "train", 0, 1).parent.iterdir()) == []


def test_writing_over_a_dataset_is_refused(tiny_dataset):
  with pytest.raises(FileExistsError, match="already exists"):
    write_latent_dataset(tiny_dataset.parents[2], tiny_examples(1), shapes=TINY_SHAPES)
  with pytest.raises(FileExistsError, match="already finalized"):
    write_shard(WanLatentsDataset(data_dir=tiny_dataset.parents[2], shapes=TINY_SHAPES), tiny_examples(1),
                shard_index=0, num_shards=1)


@pytest.mark.parametrize("change, match", [
    ({"latents": np.zeros((4, 3, 4, 5), np.float32)}, r"'clip-001': latents shape \(4, 3, 4, 5\)"),
    ({"latents": np.zeros((4, 3, 4, 6), np.int32)}, "'clip-001': latents must be floating"),
    ({"latents": np.full((4, 3, 4, 6), np.nan, np.float32)}, "'clip-001': latents have non-finite"),
    ({"text_embedding": np.zeros((13, 16), np.float32)}, r"'clip-001': text_embedding shape \(13, 16\)"),
    ({"text_embedding": np.zeros((3, 16), np.float32), "text_length": 4}, "'clip-001': text_length 4"),
    ({"text_embedding": np.full((3, 16), np.inf, np.float32)}, "'clip-001': text_embedding has non-finite"),
    ({"key": ""}, "non-empty string 'key'"),
])
def test_bad_examples_are_named(change, match):
  example = dict(tiny_examples(2)[1], **change)  # clip-001 keeps all its text rows
  with pytest.raises((ValueError, TypeError), match=match):
    make_latent_record(example, TINY_SHAPES)
