"""Tiny CPU config (demo and tests): random tiny teacher, synthetic latents (data.source='synthetic'), a few steps.

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
  c.rehyat.feature_map.hidden = 32
  c.rehyat.feature_map.feature_dim = 16
  c.rehyat.feature_map.init_scale = 0.1
  # 24 tokens per latent frame: enough far tokens for a linear term to have something to model.
  c.data.source = "synthetic"         # random latents and texts, chosen explicitly
  c.data.latent_shape = (9, 8, 12)
  c.data.num_examples = 32
  c.data.trajectory_steps = 4
  c.optim.learning_rate = 1e-2 if c.stage == "distill" else 1e-4
  c.optim.warmup_steps = 10
  c.train.steps = 300 if c.stage == "distill" else 50
  c.train.global_batch_size = 4
  c.train.log_every = 50 if c.stage == "distill" else 10
  c.train.checkpoint_every = 100
  c.train.trainable = "adapters" if c.stage == "distill" else "all"
  return c
