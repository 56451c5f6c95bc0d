#!/usr/bin/env bash
# Set up (if needed) and run the main job on the embedded tiny default (CPU, minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
exec .venv/bin/python -m rehyat_jax.demo "$@"
