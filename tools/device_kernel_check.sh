#!/usr/bin/env bash
# One device call: install the carried wheels, tune the fused window kernel at 21 frames, check the
# whole forms against each other on the GPU, then time the parallel form with the kernel.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=$PWD:/tmp/site
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv
python3 tools/tune_window_kernel.py --frames 21 --block-q 64 128 --block-k 32 64 128 --num-warps 4 8 --num-stages 2 3 --reps 10 2>&1 | tee "$OUT/tune.log" | grep -v "^(" 
python3 tools/check_kernel_parity.py 2>&1 | tee "$OUT/check.log" | tail -20
