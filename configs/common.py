"""Shared defaults of every training config; each job file overrides what its recipe fixes.

Field reference (all validated in ``rehyat_jax.train.config_checks`` before anything compiles):
  stage               'distill' (stage 1: only the adapters, phi, train) | 'finetune' (stage 2: flow matching)
  model.preset        architecture when no checkpoint is given (random teacher): tiny | t2v-1.3b | t2v-14b
  model.checkpoint    converted teacher (tools/convert_wan_weights.py); '' = random weights from model.seed
  model.student       a student export (stage 1 writes <workdir>/student_export) whose adapters start this run
  model.*             the other model fields are RuntimeConfig's (rehyat_jax/models/wan.py), same names:
                      precision (fp32 | bf16 | bf16_params), scan_layers, remat (none | full | dots |
                      dots_no_batch), softmax_backend, hybrid_form (reference | parallel | recurrent),
                      window_backend (auto | a name of rehyat_jax.attention.WINDOW_BACKENDS),
                      window_backward (auto | pallas | xla), window_chunks_per_step (None = all chunks at once),
                      feature_map_backend (xla | pallas: the fused phi kernel, experimental)
  rehyat.*            RehyatConfig fields, same names (rehyat_jax/attention/config.py): chunk_frames,
                      overlap_frames (latent frames), causal, phi_input, converted_blocks, and
                      feature_map (kind + that kind's options: rehyat_jax.attention.FEATURE_MAPS)
  data.source         latents (array_record dataset) | trajectories (teacher sampling on a prompt dataset's
                      texts, stage 1) | synthetic (random latents and texts: tests, demos; never a fallback)
  data.data_dir       the dataset of 'latents' / 'trajectories' (required for them): a dataset tool's --out
                      folder (tools/encode_prompts.py, encode_videos.py, generate_latents.py) or the dataset below it
  data.latent_shape   (frames, height, width) of the latents; channels come from the model
  data.trajectory_*   stage-1 teacher trajectories: sampler steps, solver (unipc | euler), guidance scale with
                      the prompt dataset's negative prompt (1: off), pool size (trajectories in flight)
  optim.*             AdamW with warmup + cosine decay, clipping, gradient accumulation
  train.max_nonfinite_steps   a step with a non-finite loss or gradient is skipped (nothing changes, a line is
                      printed); this many in a row stop the run, the newest checkpoint keeping the last finite weights
  train.block_output_errors   stage 1's held-out report also measures each block's effect on the output: the
                      velocity error (|v - v_teacher|^2 / |v_teacher|^2) with only that block converted (one forward
                      per block and held-out batch); tools/rank_blocks.py --by output ranks by it
  mesh.*              data / fsdp / sequence / tensor sizes (-1: fill with the remaining devices)
  mesh.sequence       devices the latent frames are split over (sequence-parallel ReHyAt, model.hybrid_form
                      'parallel'); the frames must be a multiple of mesh.sequence x rehyat.chunk_frames
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.stage = "distill"
  c.workdir = "runs/default"

  c.model = ml_collections.ConfigDict()
  c.model.preset = "tiny"
  c.model.checkpoint = ""
  c.model.seed = 0
  c.model.student = ""                 # stage 2: the student export stage 1 wrote (<workdir>/student_export)
  c.model.precision = "fp32"
  c.model.scan_layers = True
  c.model.remat = "none"
  c.model.softmax_backend = "auto"
  c.model.hybrid_form = "parallel"
  c.model.window_backend = "auto"
  c.model.window_backward = "auto"
  c.model.window_chunks_per_step = ml_collections.config_dict.placeholder(int)  # None: all chunks at once
  c.model.feature_map_backend = "xla"

  c.rehyat = ml_collections.ConfigDict()
  c.rehyat.chunk_frames = 3
  c.rehyat.overlap_frames = 1
  c.rehyat.causal = True
  c.rehyat.phi_input = "post_rope"
  c.rehyat.converted_blocks = "all"   # 'all', a count, or a comma-separated list of block ids
  c.rehyat.feature_map = ml_collections.ConfigDict(
      {"kind": "mlp_power", "degree": 2, "hidden": 256, "feature_dim": 128, "activation": "gelu", "init_scale": 1e-3})

  c.data = ml_collections.ConfigDict()
  c.data.source = "latents"
  c.data.data_dir = ""                # required unless data.source='synthetic'
  c.data.split = "train"
  c.data.latent_shape = (21, 60, 104)
  c.data.num_examples = 64            # synthetic source size
  c.data.seed = 0
  c.data.worker_count = 0
  c.data.shift = 5.0                  # timestep shift of sigma sampling (Wan T2V default)
  # source='trajectories': the teacher samples as generation does (docs: rehyat_jax/train/trajectories.py)
  c.data.trajectory_steps = 10        # sampler steps per trajectory
  c.data.trajectory_solver = "unipc"  # unipc (Wan's and generation's) | euler
  c.data.trajectory_guidance = 5.0    # CFG scale with the dataset's negative prompt (1: unguided); a guided
                                      # batch holds global_batch_size / 2 trajectories, each under both prompts
  c.data.trajectory_pool = 0          # trajectories in flight (0: 2 x global_batch_size); each step draws
                                      # a batch of them at random, so a batch mixes trajectories and timesteps

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 1e-4
  c.optim.warmup_steps = 100
  c.optim.end_learning_rate_factor = 0.1
  c.optim.weight_decay = 0.0
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.clip_norm = 1.0
  c.optim.grad_accum_steps = 1

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000
  c.train.global_batch_size = 8
  c.train.seed = 0
  c.train.log_every = 10
  c.train.checkpoint_every = 200
  c.train.keep_checkpoints = 3
  c.train.trainable = "adapters"      # stage 2: 'all' | 'adapters' | a regex over parameter paths
  c.train.ema_decay = 0.0             # stage 2: 0 disables EMA
  c.train.max_nonfinite_steps = 10    # stop after this many steps in a row with a non-finite loss/gradient
  c.train.block_output_errors = False # stage 1: per-block output effect in the held-out report (costs L forwards)

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.mesh.sequence = 1                  # >1: latent frames split over devices in whole chunks (sequence parallel)
  c.mesh.coordinator_address = ""      # multi-process GPU/CPU; TPU pods need none
  c.mesh.auto_distributed = False      # TPU pod slices: jax.distributed.initialize() from VM metadata
  c.mesh.num_processes = 1
  c.mesh.process_id = 0
  return c
