"""Training, one generic loop for every stage.

  config_checks  the config -> RuntimeConfig / RehyatConfig / stage, validated (ConfigError names the field)
  stages/        what differs per stage: distill (stage 1, adapters only), finetune (stage 2); base.Stage
  inputs         what the step is fed: dataset batches or teacher sampling trajectories (trajectories.py)
  setup, mesh    the model (teacher, fresh or exported student), the device mesh, shardings, train state
  step, loop     the jitted step and the run loop; objectives (noise math), optimizer
  checkpointing, metrics, ranking   Orbax run checkpoints, logs and reports, block ranking

Entry point: ``python -m rehyat_jax.train --config configs/<job>.py``.
"""
