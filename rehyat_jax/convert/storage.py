"""The converted-checkpoint directory, shared by every converter, and the streaming that fills it::

  config.json       the model config's to_json()
  conversion.json   where it came from (source, layout, dtype, tensor count, time, and per-model extras)
  params/           Orbax PyTree checkpoint of the converted parameter tree

``write_tensors`` is the common tail of a conversion: one buffer per target leaf (``allocate_params``), source
tensors streamed into it one at a time in file order (``fill_params``), then the Orbax write. Everything goes to a
temporary directory next to the destination (``staging_directory``), renamed at the end, so nothing half-written is
left behind. The buffers are memory-mapped files in that directory, not RAM: the converter's own memory stays near
one source tensor whatever the model (a 14B DiT in float32 is 57 GB), at the cost of free disk for a second copy
of the converted model while it runs. ``restore_params`` / ``restore_into`` read the tree back.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import errno
import fcntl
import glob
import inspect
import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol, TypeVar

import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp

from rehyat_jax.convert.key_rows import KeyRow, copy_into, tree_get
from rehyat_jax.convert.sources import CheckpointError, TensorSource

Progress = Callable[[str], None] | None

TARGET_DTYPES: dict[str, np.dtype] = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
CONFIG_FILE, CONVERSION_FILE, PARAMS_DIR = "config.json", "conversion.json", "params"
# The memory-mapped conversion buffers and the lock file a running conversion holds, inside the staging
# directory; both are removed before it becomes the destination.
BUFFERS_DIR, STAGING_LOCK = "buffers", ".lock"


class ModelConfig(Protocol):
  def to_json(self) -> str: ...


ConfigT = TypeVar("ConfigT")


def report(progress: Progress, message: str) -> None:
  if progress is not None:
    progress(message)


def target_dtype(dtype: str) -> np.dtype:
  """The numpy dtype of a converter's ``dtype=`` argument."""
  if dtype not in TARGET_DTYPES:
    raise CheckpointError(f"unsupported target dtype {dtype!r}; choose one of {sorted(TARGET_DTYPES)}")
  return TARGET_DTYPES[dtype]


def check_destination(dst: str | os.PathLike, overwrite: bool) -> None:
  """Fails before a (long) conversion, not after it, when ``dst`` cannot be written."""
  dst = Path(dst)
  if dst.exists() and not overwrite:
    raise CheckpointError(f"{dst} already exists; pass overwrite=True (--overwrite) to replace it")
  if dst.exists() and not dst.is_dir():
    raise CheckpointError(f"{dst} exists and is not a directory")


# ----------------------------------------------------------------------------------------------------------
# Streaming into preallocated buffers
# ----------------------------------------------------------------------------------------------------------

def allocate_params(shapes: dict[Any, Any], dtype: str, buffer_dir: Path | None = None) -> dict[Any, Any]:
  """One uninitialised buffer per leaf of a tree of shapes: in RAM, or with ``buffer_dir`` a memory-mapped file
  there per leaf (the kernel writes filled pages back and can drop them, so they do not accumulate in RAM)."""
  np_dtype = target_dtype(dtype)
  is_shape = lambda leaf: isinstance(leaf, tuple)
  if buffer_dir is None:
    return jax.tree_util.tree_map(lambda shape: np.empty(shape, np_dtype), shapes, is_leaf=is_shape)
  buffer_dir.mkdir(parents=True, exist_ok=True)
  leaves, treedef = jax.tree_util.tree_flatten(shapes, is_leaf=is_shape)
  buffers = [_mapped_buffer(buffer_dir / f"leaf_{i:05d}.npy", shape, np_dtype) for i, shape in enumerate(leaves)]
  return jax.tree_util.tree_unflatten(treedef, buffers)


def _mapped_buffer(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
  mapped = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
  # The file is sparse; its blocks are reserved now, so a full disk is an error here and not a SIGBUS (the
  # process killed without a message) when a page is written back halfway through the conversion.
  with open(path, "r+b") as f:
    try:
      _reserve_blocks(f.fileno(), os.fstat(f.fileno()).st_size)
    except OSError as e:
      if e.errno in (errno.ENOSPC, errno.EDQUOT):
        raise CheckpointError(f"no space left on the disk of {path.parent} for the conversion buffers "
                              f"({e.strerror}); free space there or convert to a destination on another disk") from e
      raise
  # A plain ndarray view of the mapping, so serialisers see the type they are registered for.
  return np.asarray(mapped)


def _libc_fallocate():
  fallocate = getattr(ctypes.CDLL(None, use_errno=True), "fallocate", None) if sys.platform.startswith("linux") else None
  if fallocate is not None:
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
  return fallocate


_FALLOCATE = _libc_fallocate()


def _reserve_blocks(fd: int, size: int) -> None:
  """Linux fallocate(2): allocates the file's blocks without writing them. Not posix_fallocate, which glibc
  emulates where the file system lacks it (NFS, FUSE) by writing every 4 KiB block; there the buffer stays
  sparse instead, as it does off Linux."""
  if _FALLOCATE is None:
    return
  if _FALLOCATE(fd, 0, 0, size) != 0:
    err = ctypes.get_errno()
    if err not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
      raise OSError(err, os.strerror(err))


def _existing_ancestor(path: Path) -> Path:
  while not path.exists():
    path = path.parent
  return path


def check_free_disk(dst: Path, needed: int, what: str) -> None:
  """CheckpointError when the disk that will hold ``dst`` has less than ``needed`` bytes free (``what`` says
  what they are for)."""
  where = _existing_ancestor(dst.parent)
  free = shutil.disk_usage(where).free
  if free < needed:
    raise CheckpointError(f"{where} has {free / 1e9:.1f} GB free, but converting there needs about "
                          f"{needed / 1e9:.1f} GB: {what}; free space or choose another destination")


def fill_params(params: dict[Any, Any], source: TensorSource, table: Mapping[str, KeyRow],
                progress: Progress = None) -> None:
  """Streams every tensor of ``table`` (keyed by source keys) into its leaf, in file order (sequential reads)."""
  order = source.file_order(table)
  total_bytes = sum(source.tensors[key].nbytes for key in order)
  done_bytes, next_report, start = 0, 0.1, time.perf_counter()
  for count, key in enumerate(order, 1):
    row = table[key]
    destination = tree_get(params, row.path)
    if row.layer is not None:
      destination = destination[row.layer]
    copy_into(destination, source.read(key), row.transform)
    done_bytes += source.tensors[key].nbytes
    if done_bytes >= next_report * total_bytes or count == len(order):
      next_report += 0.1
      report(progress, f"converted {count}/{len(order)} tensors, {done_bytes / 1e9:.2f}/{total_bytes / 1e9:.2f} GB, "
                       f"{time.perf_counter() - start:.1f} s")


def write_tensors(dst: str | os.PathLike, source: TensorSource, table: Mapping[str, KeyRow], shapes: dict[Any, Any],
                  cfg: ModelConfig, conversion: dict[str, Any], *, dtype: str, overwrite: bool, progress: Progress,
                  start: float) -> None:
  """Converts the tensors of ``table`` into ``shapes``-shaped buffers and writes ``dst``; ``conversion`` (the
  per-model part of conversion.json) gains the time taken, ``start`` being the ``time.perf_counter()`` at which the
  conversion began."""
  itemsize = target_dtype(dtype).itemsize
  model_bytes = sum(int(np.prod(shape)) * itemsize
                    for shape in jax.tree_util.tree_leaves(shapes, is_leaf=lambda leaf: isinstance(leaf, tuple)))
  # Twice: the memory-mapped buffers and the Orbax copy exist together at the end.
  with staging_directory(dst, overwrite, disk_needed=(2 * model_bytes, f"the converted model "
                         f"({model_bytes / 1e9:.1f} GB, {dtype}) twice while it runs (memory-mapped buffers, "
                         "then the Orbax copy)")) as staging:
    buffer_dir = staging / BUFFERS_DIR
    params = allocate_params(shapes, dtype, buffer_dir)
    fill_params(params, source, table, progress)
    report(progress, f"writing {dst} ({time.perf_counter() - start:.1f} s)")
    conversion = {
        **conversion,
        "converted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        # Reading, checking and transposing; the Orbax write that follows is not included.
        "seconds_to_convert": round(time.perf_counter() - start, 2),
    }
    write_staged(staging, params, cfg, conversion)
    del params  # unmaps the buffers before their files go
    shutil.rmtree(buffer_dir)
  report(progress, f"done: {dst} in {time.perf_counter() - start:.1f} s")


# ----------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------

def numpy_handler_without_copies() -> "ocp.type_handlers.NumpyHandler":
  """Orbax's numpy handler, told not to deep-copy host arrays where the installed Orbax has that option
  (0.12.8, pyproject's floor, has it; older releases, as preinstalled on some GPU images, do not and copy)."""
  handler = ocp.type_handlers.NumpyHandler
  if "deepcopy_host_arrays" in inspect.signature(handler.__init__).parameters:
    return handler(deepcopy_host_arrays=False)
  return handler()


def _one_chunk_per_array() -> dict[str, int]:
  """PyTreeSave options that store every array as one chunk, where the installed Orbax has the option.

  By default Orbax caps data files at 2 GiB and splits a larger array into chunks along its largest axes; for a
  stacked [layers, 5120, 13824] 14B FFN weight those chunks are not contiguous in memory, and TensorStore then
  copies the whole array into RAM before writing it (measured: +6.8 GB of anonymous memory for two such 3.4 GB
  arrays, none with this option). 0 lifts the cap (OCDBT's "no target size")."""
  if "ocdbt_target_data_file_size" in inspect.signature(ocp.args.PyTreeSave).parameters:
    return {"ocdbt_target_data_file_size": 0}
  return {}


def save_params(directory: Path, params: dict[str, Any]) -> None:
  """Writes ``params`` (numpy leaves) as an Orbax PyTree checkpoint at ``directory``, synchronously."""
  # Keeps the model in memory once: Orbax's default numpy handler deep-copies host arrays before writing (a
  # private registry turns that off; jax.Array keeps its default handler, without one Orbax warns), and zstd
  # compression holds every compressed chunk until the end (1.3B bf16: +2.1 GB RSS, 4x slower to write, for
  # a 25 % smaller checkpoint).
  registry = ocp.type_handlers.create_type_handler_registry(
      (np.ndarray, numpy_handler_without_copies()),
      (jax.Array, ocp.type_handlers.get_type_handler(jax.Array)))
  checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(type_handler_registry=registry,
                                                              use_compression=False))
  try:
    checkpointer.save(directory, args=ocp.args.PyTreeSave(params, **_one_chunk_per_array()))
  finally:
    checkpointer.close()


def remove_abandoned_staging(dst: Path) -> list[Path]:
  """Deletes the staging directories of ``dst`` whose conversion no longer runs, and returns them.

  A running conversion holds an exclusive ``flock`` on the lock file in its staging directory. The kernel drops
  that lock with the process however it ends, so a killed conversion's directory (SIGKILL from the out-of-memory
  killer cannot be cleaned up after; its buffers are as large as the model) can be told from a live one, on any
  host or container that shares the file system. A directory without a lock file is kept."""
  removed = []
  for path in dst.parent.glob(f".{glob.escape(dst.name)}.converting-*"):
    try:
      fd = os.open(path / STAGING_LOCK, os.O_RDWR)
    except OSError:
      continue
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      os.close(fd)  # held: that conversion is running
      continue
    shutil.rmtree(path, ignore_errors=True)
    os.close(fd)
    removed.append(path)
  return removed


@contextlib.contextmanager
def staging_directory(dst: str | os.PathLike, overwrite: bool = False, *,
                      disk_needed: tuple[int, str] | None = None) -> Iterator[Path]:
  """A fresh directory next to ``dst`` that replaces ``dst`` when the block succeeds and is removed when it
  fails, so ``dst`` is never half-written. While the block runs the directory's lock file is held (see
  ``remove_abandoned_staging``). Refusals come first, before anything is created: an existing ``dst``, then
  ``disk_needed`` ((bytes, what they are for): ``check_free_disk``), counted after removing what killed
  conversions left."""
  dst = Path(dst).absolute()  # Orbax rejects relative paths
  check_destination(dst, overwrite)
  remove_abandoned_staging(dst)
  if disk_needed is not None:
    check_free_disk(dst, *disk_needed)
  dst.parent.mkdir(parents=True, exist_ok=True)
  # A fresh uniquely named directory (not tempfile.mkdtemp: its 0700 mode would become dst's mode).
  staging = dst.parent / f".{dst.name}.converting-{uuid.uuid4().hex[:12]}"
  staging.mkdir()
  lock = os.open(staging / STAGING_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
  fcntl.flock(lock, fcntl.LOCK_EX)
  replaced = None
  try:
    yield staging
    os.unlink(staging / STAGING_LOCK)  # the lock itself stays held until the rename is done
    if dst.exists():
      replaced = dst.parent / f".{dst.name}.replaced-{uuid.uuid4().hex[:12]}"
      os.replace(dst, replaced)
    os.replace(staging, dst)
    if replaced is not None:
      shutil.rmtree(replaced, ignore_errors=True)
  except BaseException:
    # Interrupted (SIGTERM unwinds as SystemExit) between the two renames: the previous dst goes back.
    if replaced is not None and replaced.exists():
      if dst.exists():
        shutil.rmtree(replaced, ignore_errors=True)
      else:
        os.replace(replaced, dst)
    shutil.rmtree(staging, ignore_errors=True)
    raise
  finally:
    os.close(lock)


def write_staged(staging: Path, params: dict[str, Any], cfg: ModelConfig, conversion: dict[str, Any]) -> None:
  """params + config.json + conversion.json into ``staging``."""
  save_params(staging / PARAMS_DIR, params)
  (staging / CONFIG_FILE).write_text(cfg.to_json() + "\n")
  (staging / CONVERSION_FILE).write_text(json.dumps(conversion, indent=2, sort_keys=True) + "\n")


def write_converted(dst: str | os.PathLike, params: dict[str, Any], cfg: ModelConfig, conversion: dict[str, Any],
                    *, overwrite: bool = False) -> Path:
  """Writes params + config.json + conversion.json into a temporary directory next to ``dst``, then renames it to
  ``dst``; nothing is left behind on error."""
  with staging_directory(dst, overwrite) as staging:
    write_staged(staging, params, cfg, conversion)
  return Path(dst).absolute()


# ----------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------

def check_converted(path: str | os.PathLike, kind: str = "", component: str = "dit") -> Path:
  """``path``, once it is known to hold config.json and params/; ``kind`` names the model in the error."""
  path = Path(path)
  if not (path / CONFIG_FILE).is_file() or not (path / PARAMS_DIR).is_dir():
    what = f"{kind} checkpoint" if kind else "checkpoint"
    hint = "tools/convert_wan_weights.py" + (f" --component {component}" if component != "dit" else "")
    raise CheckpointError(f"{path} is not a converted {what} (expected {CONFIG_FILE} and {PARAMS_DIR}/; "
                          f"create one with {hint})")
  return path


def read_config(path: str | os.PathLike, from_dict: Callable[[dict[str, Any]], ConfigT], kind: str,
                component: str) -> ConfigT:
  """The config of the converted ``kind`` checkpoint at ``path`` (``from_dict`` parses config.json)."""
  config_file = check_converted(path, kind, component) / CONFIG_FILE
  try:
    return from_dict(json.loads(config_file.read_text()))
  except (UnicodeDecodeError, TypeError, ValueError) as e:  # JSONDecodeError is a ValueError
    raise CheckpointError(f"{config_file}: not a {kind} config ({e})") from e


def restore_params(path: str | os.PathLike, target: Any = None) -> dict[str, Any]:
  """The parameter tree of a converted checkpoint.

  Args:
    path: the converted checkpoint directory.
    target: None for numpy arrays as stored, or a tree of the same structure whose leaves are
      ``jax.ShapeDtypeStruct`` (with ``sharding=`` to restore directly sharded; a different dtype casts) or arrays.
  """
  path = check_converted(path)
  checkpointer = ocp.StandardCheckpointer()
  try:
    return checkpointer.restore((path / PARAMS_DIR).resolve(), target)
  finally:
    checkpointer.close()


def restore_into(path: str | os.PathLike, abstract: dict[Any, Any], shardings: Any = None) -> dict[Any, Any]:
  """The parameters at ``path`` restored straight into the dtypes of the abstract arrays of ``abstract`` (a pure
  dict) and, when given, a matching tree of ``shardings``; nothing is initialised."""
  if shardings is None:
    shardings = jax.tree_util.tree_map(lambda _: None, abstract)
  target = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
                                  shardings)
  return restore_params(path, target)
