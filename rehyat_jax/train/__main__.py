"""Entry point: ``python -m rehyat_jax.train --config configs/<job>.py [--config.train.steps=N ...]``.

The command line itself (help, config loading, one-line errors) is ``rehyat_jax/train/cli.py``.
"""

import sys

from rehyat_jax.train.cli import main

if __name__ == "__main__":
  sys.exit(main())
