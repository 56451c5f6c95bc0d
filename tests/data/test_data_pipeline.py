"""The Grain pipeline: deterministic, exactly resumable, split across processes, and global batches on a mesh."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from rehyat_jax.data.builders import bf16_bits_to_float32
from rehyat_jax.data.pipeline import decode_record, make_train_iterator
from rehyat_jax.data.sources import SyntheticLatentSource, open_latent_source
from tiny_data import NUM_EXAMPLES, TINY_SHAPES

REPO_ROOT = Path(__file__).resolve().parents[2]


def keys_of(iterator, num_batches: int) -> list[list[str]]:
  return [list(next(iterator)["key"]) for _ in range(num_batches)]


def single_process(source, **kwargs):
  kwargs.setdefault("seed", 0)
  return make_train_iterator(source, process_index=0, process_count=1, **kwargs)


def test_batches_are_decoded(tiny_dataset):
  source = open_latent_source(tiny_dataset)
  batch = next(single_process(source, global_batch_size=4, shuffle=False))
  assert batch["latents"].dtype == np.float32 and batch["latents"].shape == (4, *TINY_SHAPES.latents)
  assert batch["text_embedding"].dtype == np.float32 and batch["text_embedding"].shape == (4, *TINY_SHAPES.text)
  assert batch["text_length"].dtype == np.int32 and batch["text_length"].shape == (4,)
  assert batch["key"].dtype.kind == "U" and batch["caption"].dtype.kind == "U"
  for row in range(4):  # without shuffling, batch rows are records 0..3 of the source
    record = source[row]
    np.testing.assert_array_equal(batch["latents"][row], record["latents"])
    np.testing.assert_array_equal(batch["text_embedding"][row], bf16_bits_to_float32(record["text_embedding"]))
    assert batch["key"][row] == record["key"].decode() and batch["caption"][row] == record["caption"].decode()
  assert decode_record({"prompt": b"caf\xc3\xa9"}) == {"prompt": "café"}


def test_same_seed_same_batches():
  source = SyntheticLatentSource(24, TINY_SHAPES, seed=0)
  first = keys_of(single_process(source, global_batch_size=4, seed=5), 8)
  assert first == keys_of(single_process(source, global_batch_size=4, seed=5), 8)
  assert first != keys_of(single_process(source, global_batch_size=4, seed=6), 8)
  unshuffled = keys_of(single_process(source, global_batch_size=4, shuffle=False), 1)
  assert unshuffled == [[f"synthetic-0-{i}" for i in range(4)]]


def test_resume_from_saved_state(tiny_dataset):
  source = open_latent_source(tiny_dataset)
  iterator = single_process(source, global_batch_size=4, seed=3)
  keys_of(iterator, 3)  # crosses the first epoch boundary (10 examples, 4 per batch)
  state = iterator.get_state()
  expected = [next(iterator) for _ in range(2)]
  resumed = single_process(source, global_batch_size=4, seed=3)
  resumed.set_state(state)
  for batch in expected:
    again = next(resumed)
    assert again.keys() == batch.keys()
    for name in batch:
      np.testing.assert_array_equal(again[name], batch[name])


def test_every_epoch_is_a_new_permutation():
  source = SyntheticLatentSource(12, TINY_SHAPES, seed=0)
  keys = sum(keys_of(single_process(source, global_batch_size=3, num_epochs=2, seed=1), 8), [])
  first, second = keys[:12], keys[12:]
  assert sorted(first) == sorted(second) == sorted(f"synthetic-0-{i}" for i in range(12))
  assert first != second
  assert len(list(single_process(source, global_batch_size=3, num_epochs=2, seed=1))) == 8  # then it ends


def test_processes_split_the_epoch(tiny_dataset):
  source = open_latent_source(tiny_dataset)
  seen = []
  for process_index in range(2):
    iterator = make_train_iterator(source, global_batch_size=2, seed=11, num_epochs=1,
                                   process_index=process_index, process_count=2)
    seen.append([key for batch in iterator for key in batch["key"]])
  assert len(seen[0]) == len(seen[1]) == NUM_EXAMPLES // 2
  assert not set(seen[0]) & set(seen[1])
  assert sorted(seen[0] + seen[1]) == [f"clip-{i:03d}" for i in range(NUM_EXAMPLES)]


def test_uneven_process_split_gives_every_process_the_same_batches(tiny_dataset):
  source = open_latent_source(tiny_dataset)  # 10 examples over 3 processes: one is left out
  counts = [len(list(make_train_iterator(source, global_batch_size=3, seed=0, num_epochs=1, process_index=i,
                                         process_count=3))) for i in range(3)]
  assert counts == [3, 3, 3]


def test_bad_batch_settings_are_explained():
  source = SyntheticLatentSource(8, TINY_SHAPES)
  with pytest.raises(ValueError, match="global_batch_size 6 is not a positive multiple of the process count 4"):
    make_train_iterator(source, global_batch_size=6, seed=0, process_index=1, process_count=4)
  with pytest.raises(ValueError, match="fewer than one batch of 16"):
    single_process(source, global_batch_size=16, num_epochs=1)
  with pytest.raises(ValueError, match="both process_index and process_count"):
    make_train_iterator(source, global_batch_size=2, seed=0, process_index=0)


def test_default_process_sharding_uses_jax():
  # One JAX process: the whole batch is local.
  batch = next(make_train_iterator(SyntheticLatentSource(8, TINY_SHAPES), global_batch_size=4, seed=0))
  assert batch["latents"].shape[0] == 4


def test_worker_processes_match_and_resume(tiny_dataset):
  source = open_latent_source(tiny_dataset)
  in_process = [next(it) for it in [single_process(source, global_batch_size=2, seed=4)] for _ in range(4)]
  workers = single_process(source, global_batch_size=2, seed=4, worker_count=1)
  try:
    keys_of(workers, 2)
    state = workers.get_state()
    assert keys_of(workers, 2) == [list(b["key"]) for b in in_process[2:]]
  finally:
    workers.close()
  resumed = single_process(source, global_batch_size=2, seed=4, worker_count=1)
  try:
    resumed.set_state(state)
    batch = next(resumed)
    np.testing.assert_array_equal(np.array(batch["latents"]), in_process[2]["latents"])
    del batch  # drop Grain's shared-memory views before the workers go
  finally:
    resumed.close()


GLOBAL_BATCH_SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from jax.sharding import PartitionSpec as P
    from rehyat_jax.data.builders import LatentShapes
    from rehyat_jax.data.pipeline import make_train_iterator, to_global_batch
    from rehyat_jax.data.sources import SyntheticLatentSource

    assert jax.device_count() == 2, jax.devices()
    shapes = LatentShapes(latents=(4, 3, 4, 6), text=(12, 16))
    local = next(make_train_iterator(SyntheticLatentSource(8, shapes), global_batch_size=4, seed=0))
    for mesh, axes in [(jax.make_mesh((2,), ("data",)), ("data",)),
                       (jax.make_mesh((2, 1), ("data", "fsdp")), ("data", "fsdp"))]:
      batch = to_global_batch(local, mesh, axes)
      assert sorted(batch) == ["latents", "text_embedding", "text_length"], sorted(batch)
      for name, array in batch.items():
        assert array.shape == local[name].shape and array.sharding.spec == P(axes), (name, array.sharding)
        assert [s.data.shape[0] for s in array.addressable_shards] == [2, 2]
        np.testing.assert_array_equal(np.asarray(array), local[name])
    try:
      to_global_batch(local, jax.make_mesh((2,), ("data",)))
    except ValueError as error:
      assert "['fsdp'] are not axes of the mesh" in str(error), error
    else:
      raise AssertionError("an unknown batch axis was accepted")
    print("GLOBAL BATCH OK")
""")


def test_to_global_batch_on_two_cpu_devices():
  # The device count flag only works before JAX initialises, hence a fresh process.
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
  result = subprocess.run([sys.executable, "-c", GLOBAL_BATCH_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
  assert result.returncode == 0 and "GLOBAL BATCH OK" in result.stdout, result.stderr[-3000:]
