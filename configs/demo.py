"""The demo's two training stages (./launch/demo.sh part 2), on the checkpoint its part 1 converted (CPU).

  python -m rehyat_jax.demo                                                    # writes runs/demo/converted
  python -m rehyat_jax.train --config configs/demo.py                          # stage 1 -> runs/demo/stage1
  python -m rehyat_jax.train --config configs/demo.py:finetune                 # stage 2 -> runs/demo/stage2

ARG is the stage: 'distill' (default) or 'finetune'. Stage 2 starts from stage 1's student export
(model.student). With the demo's --workdir DIR, pass --config.model.checkpoint=DIR/converted,
--config.workdir=DIR/stage1 (or stage2) and, for stage 2, --config.model.student=DIR/stage1/student_export.
"""

from configs import tiny

DEMO_DIR = "runs/demo"


def get_config(arg: str | None = None):
  c = tiny.get_config(arg)
  stage1 = c.stage == "distill"
  c.workdir = f"{DEMO_DIR}/{'stage1' if stage1 else 'stage2'}"
  c.model.checkpoint = f"{DEMO_DIR}/converted"
  c.model.student = "" if stage1 else f"{DEMO_DIR}/stage1/student_export"
  # The student part 1 checks: larger phi initialisation than tiny's, so the linear branch visibly matters.
  c.rehyat.feature_map.init_scale = 0.3
  c.train.steps = 200 if stage1 else 60
  c.train.log_every = 50 if stage1 else 10
  # Stage 2 learns from random latents: nothing but a denoising rule to find, and only if the steps are large
  # enough to move the weights within the demo's minute (tiny's 1e-4 moves them by ~1e-3 in 50 steps).
  c.optim.learning_rate = 1e-2 if stage1 else 1e-3
  return c
