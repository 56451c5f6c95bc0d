#!/usr/bin/env bash
# One device call for the fused window kernel: install the carried wheels, check the kernel forms
# against the dense reference where it is compiled for real, sweep its tiles at 21 latent frames,
# and time the parallel form with the default tiles. Logs go to $OUT.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -c "import jax, jaxlib, flax; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'flax', flax.__version__, jax.devices())"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 tools/check_kernel_parity.py 2>&1 | tee "$OUT/parity.log" | grep -v Warning
python3 tools/tune_window_kernel.py --frames 21 --block-q 64 128 --block-k 64 128 --num-warps 4 8 \
  --num-stages 2 3 --reps 10 2>&1 | tee "$OUT/tune.log" | grep "^|\|^frames\|^jax"
python3 tools/bench_attention.py --methods rehyat_parallel chunk_softmax_fused --no-backward \
  --reps 10 --plot "$OUT/quick.png" 2>&1 | tee "$OUT/bench_quick.log" | grep "^|"
