"""The Grain training pipeline: a record source -> per-process batches -> global ``jax.Array`` batches.

``make_train_iterator`` builds, on a ``MapDataset`` (random access, so the iterator state is one index):

    source -> shuffle(seed) -> repeat(num_epochs) -> this process's slice -> decode_record -> batch

Shuffling comes before repeating, so every epoch is shuffled differently (Grain folds the epoch into the
seed), and before slicing, so the processes split one global shuffle: within an epoch they read disjoint
records whose union is the epoch. With a finite ``num_epochs`` the stream is cut to a multiple of the process
count first, so every process yields the same number of batches (a process that ran out early would hang
the others in the next collective).

The iterator's ``get_state()`` / ``set_state()`` resume exactly; save the state with the training checkpoint
(``grain.checkpoint.CheckpointSave`` in an Orbax ``Composite``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rehyat_jax.data.builders import bf16_bits_to_float32


def decode_record(record: Mapping[str, Any]) -> dict[str, Any]:
  """A stored record -> training dtypes: ``text_embedding`` float32, ``text_length`` int32, strings ``str``."""
  decoded = {}
  for name, value in record.items():
    if name == "text_embedding":
      decoded[name] = bf16_bits_to_float32(value)
    elif name == "text_length":
      decoded[name] = np.int32(value)
    elif isinstance(value, bytes):
      decoded[name] = value.decode("utf-8")
    elif isinstance(value, str):
      decoded[name] = value
    else:
      decoded[name] = np.asarray(value)
  return decoded


def _process_shard(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if (process_index is None) != (process_count is None):
    raise ValueError("give both process_index and process_count, or neither (to use JAX's)")
  if process_index is None:
    shard = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    return shard.shard_index, shard.shard_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is outside [0, process_count={process_count})")
  return process_index, process_count


def make_train_iterator(source: Sequence[Mapping[str, Any]], *, global_batch_size: int, seed: int,
                        shuffle: bool = True, num_epochs: int | None = None, worker_count: int = 0,
                        process_index: int | None = None, process_count: int | None = None,
                        prefetch_batches: int = 4) -> grain.DatasetIterator:
  """An iterator of this process's batches: dicts of ``[global_batch_size / process_count, ...]`` arrays.

  Args:
    source: random-access records (``len``, ``source[i]``), e.g. ``open_latent_source(...)``.
    global_batch_size: examples per step over all processes; must divide by the process count.
    seed: shuffle seed; the same seed gives the same batches.
    shuffle: shuffle globally, and differently each epoch.
    num_epochs: passes over the data; ``None`` repeats forever. Incomplete last batches are dropped.
    worker_count: Grain worker processes (0 reads in threads of this process). Workers re-import
      ``__main__``: keep a script's work under ``if __name__ == "__main__"``.
    process_index, process_count: this process's slice; default ``jax.process_index()`` / ``process_count()``.
    prefetch_batches: batches read ahead (each by its own thread). Grain's default (500 elements) would hold
      hundreds of latent batches in memory.
  """
  process_index, process_count = _process_shard(process_index, process_count)
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(f"global_batch_size {global_batch_size} is not a positive multiple of the process count "
                     f"{process_count}")
  if num_epochs is not None and num_epochs < 1:
    raise ValueError(f"num_epochs must be None (repeat forever) or >= 1, got {num_epochs}")
  batch_size = global_batch_size // process_count
  dataset = grain.MapDataset.source(source)
  if len(dataset) == 0:
    raise ValueError("the source is empty")
  if shuffle:
    dataset = dataset.shuffle(seed=seed)
  dataset = dataset.repeat(num_epochs)
  if num_epochs is not None:
    dataset = dataset[:len(dataset) - len(dataset) % process_count]
    if len(dataset) // process_count < batch_size:
      raise ValueError(f"{num_epochs} epoch(s) of {len(source)} examples give {len(dataset) // process_count} "
                       f"per process, fewer than one batch of {batch_size}")
  # Global batch b is examples [b*G, (b+1)*G) of the stream; process p takes the p-th contiguous block of
  # it. So the assembled global batch (process blocks in process order) is the same examples in the same
  # order whatever the number of processes, and per-position noise gives identical losses.
  dataset = dataset.map(decode_record).batch(batch_size, drop_remainder=True)[process_index::process_count]
  iter_dataset = dataset.to_iter_dataset(
      grain.ReadOptions(num_threads=prefetch_batches, prefetch_buffer_size=prefetch_batches))
  if worker_count > 0:
    _mark_absl_flags_parsed()
    iter_dataset = iter_dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return iter(iter_dataset)


def _mark_absl_flags_parsed() -> None:
  # Grain's worker processes read an absl flag; outside ``absl.app.run`` (tests, notebooks) the flags are
  # unparsed and the workers fail with UnparsedFlagAccessError. Defaults are what such callers want.
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def to_global_batch(local_batch: Mapping[str, Any], mesh: Mesh,
                    batch_axes: Sequence[str] = ("data", "fsdp")) -> dict[str, jax.Array]:
  """This process's batch -> global arrays sharded along dim 0 over ``batch_axes``; string fields dropped.

  Every process calls this with its own batch (as ``make_train_iterator`` yields it); the global batch is
  the processes' batches concatenated in process order.
  """
  batch_axes = tuple(batch_axes)
  unknown = [axis for axis in batch_axes if axis not in mesh.axis_names]
  if unknown:
    raise ValueError(f"batch axes {unknown} are not axes of the mesh {dict(mesh.shape)}")
  sharding = NamedSharding(mesh, PartitionSpec(batch_axes))
  global_batch = {}
  for name, value in local_batch.items():
    value = np.asarray(value)
    if value.dtype.kind in "USO":  # str, bytes, object: host-side metadata, not model input
      continue
    global_batch[name] = jax.make_array_from_process_local_data(sharding, value)
  return global_batch
