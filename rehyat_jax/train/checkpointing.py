"""Orbax checkpointing of a run: train state, data-iterator state, trajectory state and metadata,
async with keep-last-k. (A stage's student export is ``rehyat_jax.convert.student``.)

A checkpoint records the model config and trainable set it was written for; restoring it into a
different model fails with a message naming the differences before any array is read, and the
existing checkpoints are left untouched.

A checkpoint that cannot be read (files damaged, truncated or missing after it was written) is not
fatal while an older one can be: ``restore_newest`` says so, moves the damaged step folder aside to
``<checkpoints>_damaged/`` (so that the run can write that step again) and restores the next older one.
"""

from __future__ import annotations

import os
from typing import Callable

from etils import epath

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from rehyat_jax.train.errors import NonFiniteTrainingError


def run_path(path: str | os.PathLike) -> epath.Path:
  """A local path made absolute (Orbax wants that) or a remote one (gs://...) as it is."""
  path = epath.Path(path)
  return path if "://" in str(path) else path.absolute()


class CheckpointMismatch(ValueError):
  """The checkpoint in the workdir belongs to another model or trainable set."""


def all_finite(tree) -> bool:
  """Whether every floating leaf of ``tree`` is finite (one device reduction, one scalar to the host)."""
  leaves = [x for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return bool(_all_finite(leaves)) if leaves else True


@jax.jit
def _all_finite(leaves) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _abstract(tree):
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


class RunCheckpointer:
  def __init__(self, directory: str | os.PathLike, *, keep: int, fingerprint: dict):
    self.directory = run_path(directory)
    self.fingerprint = fingerprint
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_iterator, meta: dict, arrays: dict, *, wait: bool = False) -> None:
    """Writes step ``step`` (asynchronously unless ``wait``); weights that are not all finite are never written."""
    if not all_finite(state):
      raise NonFiniteTrainingError(f"the train state at step {step} is not finite; not writing it over the "
                                   f"checkpoints in {self.directory} (the newest is step {self.latest_step()})")
    args = {"state": ocp.args.StandardSave({"train": state, "arrays": arrays}),
            "meta": ocp.args.JsonSave({**meta, "fingerprint": self.fingerprint})}
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    self.manager.save(step, args=ocp.args.Composite(**args), force=True)
    if wait:
      self.manager.wait_until_finished()

  def read_meta(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, step: int, state_like, arrays_like: dict, data_iterator):
    """(train state, arrays, meta) of ``step``; the data iterator is restored in place."""
    meta = self.read_meta(step)
    self.check_fingerprint(step, meta)
    return self._restore_arrays(step, state_like, arrays_like, data_iterator), meta

  def check_fingerprint(self, step: int, meta: dict) -> None:
    stored = meta.get("fingerprint", {})
    diffs = {k: (stored.get(k), v) for k, v in self.fingerprint.items() if stored.get(k) != v}
    if diffs:
      lines = "\n  ".join(f"{k}: checkpoint {a!r} vs this run {b!r}" for k, (a, b) in diffs.items())
      raise CheckpointMismatch(f"checkpoint step {step} in {self.directory} was written for another run:\n  {lines}\n"
                               "Use a new workdir (the existing checkpoints are kept).")

  def _restore_arrays(self, step: int, state_like, arrays_like: dict, data_iterator):
    args = {"state": ocp.args.StandardRestore(_abstract({"train": state_like, "arrays": arrays_like}))}
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    state, arrays = restored["state"]["train"], restored["state"]["arrays"]
    if not all_finite(state):
      raise ValueError("it holds non-finite values")
    return state, arrays

  def restore_newest(self, state_like, arrays_like: Callable[[dict], dict], data_iterator, *,
                     report: Callable[[str], None] = print):
    """(train state, arrays, meta) of the newest checkpoint that reads back whole, or None if there is none.

    ``arrays_like(meta)`` gives the structure of the checkpoint's extra arrays. A step that fails to read
    is reported, moved aside and skipped; a checkpoint of another run (``CheckpointMismatch``) is not
    damage and stops the restore. The data iterator is restored in place.
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        meta = self.read_meta(step)
      except Exception as error:  # pylint: disable=broad-except  # any unreadable file: try the older one
        self._set_aside(step, error, report)
        continue
      self.check_fingerprint(step, meta)
      try:
        state, arrays = self._restore_arrays(step, state_like, arrays_like(meta), data_iterator)
      except Exception as error:  # pylint: disable=broad-except
        self._set_aside(step, error, report)
        continue
      return state, arrays, meta
    return None

  def _set_aside(self, step: int, error: Exception, report: Callable[[str], None]) -> None:
    aside = self.directory.parent / f"{self.directory.name}_damaged" / str(step)
    reason = " ".join(f"{type(error).__name__}: {error}".split())[:400]
    older = [s for s in self.manager.all_steps() if s < step]
    report(f"checkpoint step {step} in {self.directory} cannot be read ({reason}); moved it to {aside} and "
           + (f"falling back to step {max(older)}" if older else "no older checkpoint is left"))
    if jax.process_index() == 0:
      aside.parent.mkdir(parents=True, exist_ok=True)
      if aside.exists():
        aside = aside.parent / f"{step}.{len(list(aside.parent.iterdir()))}"
      (self.directory / str(step)).rename(aside)
    if jax.process_count() > 1:
      ocp.multihost.sync_global_processes(f"rehyat_set_aside_{step}")
    self.manager.reload()

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
