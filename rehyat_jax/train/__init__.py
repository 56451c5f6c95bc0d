"""Training: config checks, mesh and sharding, optimiser, stage-1 distillation and stage-2 flow
matching objectives, the jitted train step, Orbax checkpointing, logging, and the entry point
``python -m rehyat_jax.train --config configs/<job>.py``."""
