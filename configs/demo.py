"""The demo's two training stages (./launch/demo.sh part 2): distil the shipped toy teacher (CPU, about a minute).

  python -m rehyat_jax.demo                                        # writes runs/demo/toy_data, then trains
  python -m rehyat_jax.train --config configs/demo.py              # stage 1 -> runs/demo/stage1
  python -m rehyat_jax.train --config configs/demo.py:finetune     # stage 2 -> runs/demo/stage2

ARG is the stage: 'distill' (default) or 'finetune'. The teacher is rehyat_jax/toy/teacher_dit (trained by
configs/toy_teacher.py on procedural videos); the student, data and learning rates are the toy study's
(configs/toy_distill.py, configs/toy_finetune.py), with fewer steps. With the demo's --workdir DIR, pass
--config.workdir=DIR/stage1 (or stage2), --config.data.data_dir=DIR/toy_data and, for stage 2,
--config.model.student=DIR/stage1/student_export.
"""

import os

from configs import toy_distill, toy_finetune
from rehyat_jax import toy

DEMO_DIR = "runs/demo"
# As typed from the repository root (where the commands run); the package owns the location.
SHIPPED_TEACHER = os.path.relpath(toy.SHIPPED_TEACHER, toy.SHIPPED_TEACHER.parents[2])


def get_config(arg: str | None = None):
  stage = arg or "distill"
  if stage not in ("distill", "finetune"):
    raise ValueError(f"configs/demo.py takes 'distill' or 'finetune', got {arg!r}")
  stage1 = stage == "distill"
  c = toy_distill.get_config() if stage1 else toy_finetune.get_config()
  c.workdir = f"{DEMO_DIR}/{'stage1' if stage1 else 'stage2'}"
  c.model.checkpoint = SHIPPED_TEACHER
  c.model.student = "" if stage1 else f"{DEMO_DIR}/stage1/student_export"
  c.data.data_dir = f"{DEMO_DIR}/toy_data"
  c.train.steps = 400 if stage1 else 100
  c.train.log_every = 100 if stage1 else 25
  c.train.checkpoint_every = c.train.steps
  return c
