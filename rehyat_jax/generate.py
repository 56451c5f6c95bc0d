"""``python -m rehyat_jax.generate``: the text-to-video command, kept at its old name.

Everything lives in ``rehyat_jax.inference`` (the command itself in ``inference/cli.py``); run with
``--help`` for the usage. Library code imports ``rehyat_jax.inference``, never this module.
"""

import sys

from rehyat_jax.inference.cli import main

if __name__ == "__main__":
  sys.exit(main())
