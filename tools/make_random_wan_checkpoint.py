"""CLI: write a random-weight Wan2.1 checkpoint (see ``rehyat_jax.convert.random_checkpoint``)."""

import sys

from rehyat_jax.convert.random_checkpoint import main

if __name__ == "__main__":
  sys.exit(main())
