"""Stage 1 for Wan2.1-T2V-1.3B at 81x480x832 (21x60x104 latents, 32,760 tokens).

Recipe (paper, docs/method.md §5): only phi_q / phi_k train, L1 per block between each converted
block's softmax and hybrid outputs from the same q, k, v, all blocks at once from one teacher
forward; inputs from teacher sampling trajectories (no paired video data). 15 of 30 blocks with
Tc=3, To=1, causal, is the paper's best VBench setting; rank blocks first with
tools/rank_blocks.py and pass the list as --config.rehyat.converted_blocks=... .

The trajectories' texts come from a prompt dataset, which has no default (random texts would be
distilled silently otherwise):

  python tools/encode_prompts.py --prompts-file prompts.txt --t5 ckpt/t5 --tokenizer WAN_DIR --out data/prompts
  python -m rehyat_jax.train --config configs/distill_wan_1_3b.py --config.data.data_dir=data/prompts
"""

from configs import common


def get_config(arg: str | None = None):
  c = common.base_config()
  c.stage = "distill"
  c.workdir = "runs/distill_wan_1_3b"
  c.model.preset = "t2v-1.3b"
  c.model.checkpoint = "ckpt/wan2.1-t2v-1.3b"
  # The teacher is frozen here and its matmul weights enter bf16 matmuls either way: storing them in bf16
  # is the same run (tests/train/test_stages.py) at half the memory (14B: 28.6 GB instead of 57); phi
  # and its Adam state stay float32. Stage 2 trains every weight, so it keeps float32 masters ('bf16').
  c.model.precision = "bf16_params"
  c.model.remat = "full"
  c.rehyat.chunk_frames = 3
  c.rehyat.overlap_frames = 1
  c.rehyat.converted_blocks = arg or "all"
  c.data.source = "trajectories"
  c.data.data_dir = ""                # required: --config.data.data_dir=<tools/encode_prompts.py --out>
  c.data.latent_shape = (21, 60, 104)
  c.data.trajectory_steps = 50
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 100
  c.train.steps = 2000
  c.train.global_batch_size = 8
  c.train.checkpoint_every = 250
  c.mesh.data = -1
  c.mesh.fsdp = 1
  return c
