#!/usr/bin/env bash
# Set up (if needed) and run the main job on a small random Wan2.1-architecture model (CPU, a few minutes):
# convert, check the student's forms, train stage 1 and stage 2. Outputs are kept in runs/demo/;
# arguments go to the demo (--help; --workdir DIR writes elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
exec .venv/bin/python -m rehyat_jax.demo "$@"
