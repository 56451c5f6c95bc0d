# shellcheck shell=bash
# Sourced by the bench/device_*.sh scripts on the GPU machine: installs the carried wheels (.whl/,
# pass carry [".whl"]) into /tmp/site, puts the repo and them on PYTHONPATH, makes $OUT and prints
# the versions, so every log states what it ran on.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -c "import jax, jaxlib, flax; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'flax', flax.__version__, jax.devices())"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
