"""Toy stage 2: flow-matching finetune of the whole distilled toy student on the toy clips.

  python -m rehyat_jax.train --config configs/toy_finetune.py   # -> runs/toy_finetune/{dit,student_export}

Starts from the teacher's weights and stage 1's phi (model.student); every parameter trains. The
finetuned weights are the student's own, so the stage exports them as a converted checkpoint next to
the adapters; `python -m rehyat_jax.evaluate --student runs/toy_finetune` reads the pair.
"""

from configs import toy_distill


def get_config(arg: str | None = None):
  del arg
  c = toy_distill.get_config()          # the same teacher, data and student (feature map included)
  c.stage = "finetune"
  c.workdir = "runs/toy_finetune"
  c.model.student = "runs/toy_distill/student_export"
  c.train.trainable = "all"
  c.train.steps = 300
  c.train.global_batch_size = 8
  c.train.checkpoint_every = 150
  c.optim.learning_rate = 3e-4
  c.optim.warmup_steps = 20
  return c
