"""Tiny CPU config (demo and tests): random tiny teacher, synthetic latents, a few steps.

  python -m rehyat_jax.train --config configs/tiny.py                         # stage 1
  python -m rehyat_jax.train --config configs/tiny.py:finetune                # stage 2
"""

from configs import common


def get_config(arg: str | None = None):
  c = common.base_config()
  c.stage = arg or "distill"
  c.workdir = f"runs/tiny_{c.stage}"
  c.model.preset = "tiny"
  c.rehyat.chunk_frames = 2
  c.rehyat.overlap_frames = 1
  c.rehyat.hidden = 16
  c.rehyat.feature_dim = 8
  c.rehyat.init_scale = 0.1
  c.data.latent_shape = (5, 4, 6)
  c.data.num_examples = 32
  c.data.trajectory_steps = 4
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 5
  c.train.steps = 40
  c.train.global_batch_size = 4
  c.train.log_every = 10
  c.train.checkpoint_every = 20
  c.train.trainable = "phi" if c.stage == "distill" else "all"
  return c
