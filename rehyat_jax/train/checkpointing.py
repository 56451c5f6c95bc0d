"""Orbax checkpointing of a run: train state, data-iterator state, trajectory state and metadata,
async with keep-last-k. (A stage's student export is ``rehyat_jax.convert.student``.)

A checkpoint records the model config and trainable set it was written for; restoring it into a
different model fails with a message naming the differences before any array is read, and the
existing checkpoints are left untouched.
"""

from __future__ import annotations

import os
from etils import epath

import grain
import jax
import orbax.checkpoint as ocp


def run_path(path: str | os.PathLike) -> epath.Path:
  """A local path made absolute (Orbax wants that) or a remote one (gs://...) as it is."""
  path = epath.Path(path)
  return path if "://" in str(path) else path.absolute()


class CheckpointMismatch(ValueError):
  """The checkpoint in the workdir belongs to another model or trainable set."""


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
    stored = meta.get("fingerprint", {})
    diffs = {k: (stored.get(k), v) for k, v in self.fingerprint.items() if stored.get(k) != v}
    if diffs:
      lines = "\n  ".join(f"{k}: checkpoint {a!r} vs this run {b!r}" for k, (a, b) in diffs.items())
      raise CheckpointMismatch(f"checkpoint step {step} in {self.directory} was written for another run:\n  {lines}\n"
                               "Use a new workdir (the existing checkpoints are kept).")
    args = {"state": ocp.args.StandardRestore(_abstract({"train": state_like, "arrays": arrays_like}))}
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    return restored["state"]["train"], restored["state"]["arrays"], meta

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
