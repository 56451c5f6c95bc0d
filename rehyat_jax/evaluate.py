"""``python -m rehyat_jax.evaluate``: the evaluation ladder (``rehyat_jax/evaluation/cli.py``; ``--help``)."""

import sys

from rehyat_jax.evaluation.cli import main

if __name__ == "__main__":
  sys.exit(main())
