"""The converted-checkpoint directory, shared by every converter, and the streaming that fills it::

  config.json       the model config's to_json()
  conversion.json   where it came from (source, layout, dtype, tensor count, time, and per-model extras)
  params/           Orbax PyTree checkpoint of the converted parameter tree

``write_tensors`` is the common tail of a conversion: one preallocated buffer per target leaf
(``allocate_params``), source tensors streamed into it one at a time in file order (``fill_params``), then
``write_converted``: everything goes to a temporary directory next to the destination, renamed at the end, so
nothing half-written is left behind. ``restore_params`` / ``restore_into`` read the tree back.
"""

from __future__ import annotations

import datetime
import inspect
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, TypeVar

import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp

from rehyat_jax.convert.key_rows import KeyRow, copy_into, tree_get
from rehyat_jax.convert.sources import CheckpointError, TensorSource

Progress = Callable[[str], None] | None

TARGET_DTYPES: dict[str, np.dtype] = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
CONFIG_FILE, CONVERSION_FILE, PARAMS_DIR = "config.json", "conversion.json", "params"


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

def allocate_params(shapes: dict[Any, Any], dtype: str) -> dict[Any, Any]:
  """One uninitialised buffer per leaf of a tree of shapes (pages are committed as they are filled)."""
  np_dtype = target_dtype(dtype)
  return jax.tree_util.tree_map(lambda shape: np.empty(shape, np_dtype), shapes,
                                is_leaf=lambda leaf: isinstance(leaf, tuple))


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
  params = allocate_params(shapes, dtype)
  fill_params(params, source, table, progress)
  report(progress, f"writing {dst} ({time.perf_counter() - start:.1f} s)")
  conversion = {
      **conversion,
      "converted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      # Reading, checking and transposing; the Orbax write that follows is not included.
      "seconds_to_convert": round(time.perf_counter() - start, 2),
  }
  write_converted(dst, params, cfg, conversion, overwrite=overwrite)
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
    checkpointer.save(directory, args=ocp.args.PyTreeSave(params))
  finally:
    checkpointer.close()


def write_converted(dst: str | os.PathLike, params: dict[str, Any], cfg: ModelConfig, conversion: dict[str, Any],
                    *, overwrite: bool = False) -> Path:
  """Writes params + config.json + conversion.json into a temporary directory next to ``dst``, then renames it to
  ``dst``; nothing is left behind on error."""
  dst = Path(dst).absolute()  # Orbax rejects relative paths
  check_destination(dst, overwrite)
  dst.parent.mkdir(parents=True, exist_ok=True)
  # A fresh uniquely named directory (not tempfile.mkdtemp: its 0700 mode would become dst's mode).
  staging = dst.parent / f".{dst.name}.converting-{uuid.uuid4().hex[:12]}"
  staging.mkdir()
  try:
    save_params(staging / PARAMS_DIR, params)
    (staging / CONFIG_FILE).write_text(cfg.to_json() + "\n")
    (staging / CONVERSION_FILE).write_text(json.dumps(conversion, indent=2, sort_keys=True) + "\n")
    if dst.exists():
      replaced = dst.parent / f".{dst.name}.replaced-{uuid.uuid4().hex[:12]}"
      os.replace(dst, replaced)
      os.replace(staging, dst)
      shutil.rmtree(replaced, ignore_errors=True)
    else:
      os.replace(staging, dst)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return dst


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
