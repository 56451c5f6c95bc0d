"""Toy teacher: a small Wan-architecture DiT trained here, with flow matching, on procedural videos
(rehyat_jax/toy/video.py: 13 frames of 16x16 RGB pixels, no VAE; the condition embeds the caption).

  python -m rehyat_jax.toy.video --out runs/toy/data
  python -m rehyat_jax.toy.train --config configs/toy_teacher.py      # -> runs/toy_teacher/dit

A teacher run is stage 2 ('finetune') of a student that converts no block (rehyat.converted_blocks=0):
every self-attention is the teacher's full softmax, so the model trained is exactly the teacher (its
unused phi get zero gradients and stay at their initialisation; they are not exported). The run starts
from a freshly initialised DiT of ``toy.architecture``, which toy/train.py writes to model.checkpoint.
"""

from configs import common

# Where `python -m rehyat_jax.toy.video --out runs/toy/data` puts its dataset (train and test splits).
TOY_DATA_DIR = "runs/toy/data/wan_latents_dataset/latents3x13x16x16_text8x32/1.0.0"
TOY_LATENT_SHAPE = (13, 16, 16)
# 4x4 patches: 16 tokens per frame, 208 per clip (2x2 patches, 832 tokens, made a train step 10x slower
# on CPU: the materialised softmax dominates). head_dim 32 gives RoPE 12 temporal channels, i.e. rotation
# rates 1, 0.22, 0.046, ... rad per frame: a head can prefer near frames monotonically over 13 frames
# (head_dim 16 leaves 1 and 0.1 rad, and the first one is periodic within the clip).
TOY_ARCHITECTURE = dict(dim=96, ffn_dim=256, num_heads=3, num_layers=4, patch_size=(1, 4, 4), freq_dim=64,
                        in_dim=3, out_dim=3, text_dim=32, text_len=8)
TOY_TEACHER_DIR = "runs/toy_teacher"


def toy_base(stage: str):
  """What every toy run shares: the data, the latent shape, the student's chunking and feature map."""
  c = common.base_config()
  c.stage = stage
  c.data.source = "latents"
  c.data.data_dir = TOY_DATA_DIR
  c.data.latent_shape = TOY_LATENT_SHAPE
  c.data.shift = 3.0
  c.rehyat.chunk_frames = 3
  c.rehyat.overlap_frames = 1
  # The teacher attends in both directions; a causal student has no term for later frames at all, so
  # stage 1 could not cut the error below the future frames' share (ablation: --config.rehyat.causal=True).
  c.rehyat.causal = False
  c.rehyat.feature_map.hidden = 32
  c.rehyat.feature_map.feature_dim = 16
  # The method's default start (|phi| ~ 1e-3, so an untrained student is chunk-local softmax). A larger
  # start (0.1, as configs/tiny.py) adds linear mass to every head at step 0, and a sharply local head
  # then ended stage 1 worse than phi = 0 (relative error 0.8 vs 0.3 on block 2's local head).
  c.rehyat.feature_map.init_scale = 1e-3
  c.train.log_every = 25
  return c


def get_config(arg: str | None = None):
  del arg
  c = toy_base("finetune")
  c.workdir = TOY_TEACHER_DIR
  c.model.checkpoint = f"{TOY_TEACHER_DIR}/init_dit"
  c.model.seed = 0
  c.toy = dict(architecture=TOY_ARCHITECTURE)
  c.rehyat.converted_blocks = "0"          # no block converted: the model is the softmax teacher
  c.train.trainable = "all"
  c.train.steps = 1500
  c.train.global_batch_size = 8
  c.train.checkpoint_every = 250
  c.optim.learning_rate = 2e-3
  c.optim.warmup_steps = 50
  c.optim.weight_decay = 0.0
  return c
