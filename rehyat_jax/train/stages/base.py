"""The Stage protocol: what differs between training stages, so that ``train/loop.py`` is generic.

A stage decides which parameters train, the loss, what the jitted step reports besides loss and
gradient norm, what the loop logs, which data sources it accepts, and what happens at the end of
a run (reports, exports). Everything else (model, mesh, optimiser, data stream, checkpoints,
logging) is the loop's. A new stage (e.g. LoRA finetuning) is one file here plus one line in
``stages/__init__.py``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import jax


@dataclasses.dataclass
class RunContext:
  """What a finished (not preempted) run hands to ``Stage.finish``."""

  cfg: Any
  graphdef: Any
  trainable: Any
  frozen: Any
  converted: tuple[bool, ...]
  model_cfg: Any              # WanConfig of the teacher
  student: Any                # RehyatConfig of the student (None for a teacher run)
  inputs: Any                 # the run's input stream (``train/inputs.py``)
  workdir: Any                # epath.Path
  mesh: jax.sharding.Mesh
  is_main: bool
  teacher_fingerprint: str | None
  ema: Any = None             # EMA of ``trainable`` (train.ema_decay > 0), else an empty dict


class Stage:
  """Base class of the stages; subclasses override what they need."""

  name: ClassVar[str]
  # data.source values this stage can train from.
  sources: ClassVar[tuple[str, ...]] = ("synthetic", "latents")
  # Does the step run the teacher's full softmax and backpropagate through the whole model?
  # (Only used by the analytic MFU estimate.)
  runs_teacher_softmax: ClassVar[bool] = False
  backward_through_model: ClassVar[bool] = True
  # Does the run need the teacher's fingerprint (for a student export at the end)?
  exports_student: ClassVar[bool] = False

  def check_config(self, cfg, converted_mask: tuple[bool, ...] | None) -> None:
    """Raise ``ConfigError`` for a field this stage cannot work with (mask None: depth unknown yet)."""

  def trainable_filter(self, cfg):
    """The NNX filter of the parameters this stage trains."""
    raise NotImplementedError

  def loss(self, trainable, frozen, graphdef, inputs: dict, converted: tuple[bool, ...]):
    """(scalar loss, aux) — a pure function of its arguments; differentiated w.r.t. ``trainable``."""
    raise NotImplementedError

  def step_outputs(self, aux) -> tuple[dict, Any]:
    """Inside the jitted step: (extra metrics to return, feedback for the input stream or None)."""
    del aux
    return {}, None

  def make_monitor(self, graphdef, converted, prepare: Callable, replicated) -> Callable | None:
    """Optional jitted evaluation run at log steps before the update: f(trainable, frozen, batch, step)."""
    del graphdef, converted, prepare, replicated
    return None

  def scalars(self, metrics: dict, monitored, converted: tuple[bool, ...]) -> dict[str, float]:
    """Host-side log scalars from the step's extra metrics (and the monitor's output, if any)."""
    del metrics, monitored, converted
    return {}

  def finish(self, run: RunContext) -> dict:
    """End of a complete run: reports, exports. Returns entries for the run summary."""
    del run
    return {}
