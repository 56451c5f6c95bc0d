"""Entry point: ``python -m rehyat_jax.train --config configs/<job>.py [--config.train.steps=N ...]``."""

from absl import app, flags, logging
from ml_collections import config_flags

from rehyat_jax.train.loop import run

_CONFIG = config_flags.DEFINE_config_file("config", None, "training config file (configs/*.py)", lock_config=True)
flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint file at INFO
  run(_CONFIG.value)


if __name__ == "__main__":
  app.run(main)
