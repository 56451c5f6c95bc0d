"""Sources: damaged or wrong datasets fail at open with one message naming the file; synthetic records are a
pure function of (seed, index) with the stored record structure."""

from __future__ import annotations

import os
import pickle
import shutil

import numpy as np
import pytest

from rehyat_jax.data.builders import LatentShapes, write_latent_dataset
from rehyat_jax.data.sources import DataSourceError, SyntheticLatentSource, open_latent_source, open_prompt_source
from tiny_data import NUM_EXAMPLES, TINY_SHAPES


@pytest.fixture
def dataset_copy(tiny_dataset, tmp_path):
  """A private copy of the tiny dataset, free to damage; returns (directory, its second shard file)."""
  copy = tmp_path / "copy"
  shutil.copytree(tiny_dataset, copy)
  return copy, sorted(copy.glob("*.array_record-*"))[1]


def open_fails(directory, match, **kwargs) -> str:
  with pytest.raises(DataSourceError, match=match) as info:
    open_latent_source(directory, **kwargs)
  assert info.value.__cause__ is None or "metadata" in str(info.value)  # the message carries the reason
  return str(info.value)


def test_open_reads_every_record(tiny_dataset):
  source = open_latent_source(tiny_dataset)
  assert len(source) == NUM_EXAMPLES
  assert sorted(source[i]["key"] for i in range(len(source))) == [f"clip-{i:03d}".encode() for i in range(10)]
  assert len(pickle.loads(pickle.dumps(source))) == NUM_EXAMPLES  # Grain workers receive it pickled


def test_missing_shard_is_named(dataset_copy):
  directory, shard = dataset_copy
  shard.unlink()
  message = open_fails(directory, "damaged")
  assert f"{shard}: missing" in message


@pytest.mark.parametrize("size", [1000, 70_000])  # below array_record's 64 KiB floor; footer cut off
def test_truncated_shard_is_named(dataset_copy, size):
  directory, shard = dataset_copy
  os.truncate(shard, size)
  message = open_fails(directory, "damaged")
  assert f"{shard}: unreadable, truncated or corrupted" in message


def test_corrupted_record_is_named_when_read(dataset_copy):
  directory, shard = dataset_copy
  data = bytearray(shard.read_bytes())
  data[500:516] = b"\xff" * 16  # inside the first record's chunk; the footer stays intact
  shard.write_bytes(bytes(data))
  source = open_latent_source(directory)
  first_of_shard = len(source) - 5  # the 10 records are split 5 + 5
  with pytest.raises(DataSourceError, match=f"record {first_of_shard} .*failed \\(in {shard.name}\\)"):
    source[first_of_shard]


def test_wrong_directories_are_explained(tiny_dataset, tmp_path):
  open_fails(tmp_path / "nowhere", "does not exist")
  open_fails(tiny_dataset, "no split 'test'; its splits are \\['train'\\]", split="test")
  with pytest.raises(DataSourceError, match="is not a prompt dataset"):
    open_prompt_source(tiny_dataset)
  with pytest.raises(DataSourceError, match=f"no prompt dataset in {tiny_dataset.parents[2]}; the datasets below it "
                                            f"are of another kind: {tiny_dataset}"):
    open_prompt_source(tiny_dataset.parents[2])
  unfinalized = tmp_path / "unfinalized"
  shutil.copytree(tiny_dataset, unfinalized)
  (unfinalized / "dataset_info.json").unlink()
  open_fails(unfinalized, "not finalised yet")
  open_fails(tmp_path, "not finalised yet")  # and the folder above it


def test_a_tools_out_folder_opens_the_one_dataset_below_it(tiny_dataset, tmp_path):
  """Dataset tools write <out>/<name>/<config>/<version>/; training is given <out> as it is."""
  out = tiny_dataset.parents[2]
  assert out / "wan_latents_dataset" in tiny_dataset.parents
  for folder in (out, tiny_dataset.parent, tiny_dataset):
    assert open_latent_source(folder).data_dir == tiny_dataset
  # two datasets of the kind below one folder: which one is meant is not guessed
  both = tmp_path / "both"
  shutil.copytree(out, both / "a")
  shutil.copytree(out, both / "b")
  message = open_fails(both, "holds 2 latent datasets; pass one of them")
  assert str(both / "a") in message and str(both / "b") in message
  (tmp_path / "empty").mkdir()
  open_fails(tmp_path / "empty", "no TFDS dataset in .*empty or below it")


def test_synthetic_records_depend_only_on_seed_and_index():
  source = SyntheticLatentSource(50, TINY_SHAPES, seed=7)
  # Another process (here: a pickled copy, read in a different order) sees the same records.
  other = pickle.loads(pickle.dumps(SyntheticLatentSource(50, TINY_SHAPES, seed=7)))
  for index in (49, 3, 0, 3):
    a, b = source[index], other[index]
    assert a.keys() == b.keys()
    for name in a:
      np.testing.assert_array_equal(a[name], b[name])
  assert not np.array_equal(source[0]["latents"], source[1]["latents"])
  assert not np.array_equal(source[0]["latents"], SyntheticLatentSource(50, TINY_SHAPES, seed=8)[0]["latents"])
  lengths = {source[i]["text_length"] for i in range(50)}
  assert min(lengths) >= 1 and max(lengths) <= 12 and len(lengths) > 3
  with pytest.raises(IndexError):
    source[50]


def test_synthetic_records_have_the_stored_structure(tiny_dataset, tmp_path):
  stored = open_latent_source(tiny_dataset)[0]
  synthetic = SyntheticLatentSource(3, TINY_SHAPES, seed=1)
  record = synthetic[2]
  assert record.keys() == stored.keys()
  for name, value in stored.items():
    assert type(record[name]) is type(value), name
    if isinstance(value, np.ndarray):
      assert (record[name].dtype, record[name].shape) == (value.dtype, value.shape), name
  assert not record["text_embedding"][record["text_length"]:].any()
  # And they are valid writer input: written and read back, they are unchanged.
  written = write_latent_dataset(
      tmp_path, [dict(synthetic[i], key=synthetic[i]["key"].decode(), caption=synthetic[i]["caption"].decode())
                 for i in range(3)], shapes=TINY_SHAPES)
  read = {r["key"]: r for r in map(open_latent_source(written).__getitem__, range(3))}
  for name, value in record.items():
    np.testing.assert_array_equal(read[record["key"]][name], value)


def test_shapes_are_validated():
  with pytest.raises(ValueError, match="latents shape must be 4 positive sizes"):
    LatentShapes(latents=(4, 3, 4), text=(12, 16))
  assert LatentShapes().latents == (16, 21, 60, 104) and LatentShapes().text == (512, 4096)
