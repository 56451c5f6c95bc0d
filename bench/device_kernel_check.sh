#!/usr/bin/env bash
# One device call for the fused window kernel: check the kernel forms against the dense reference
# where it is compiled for real, optionally sweep its tiles at 21 latent frames (TUNE=1), and time
# the parallel form's forward and backward with both backward choices. Logs go to $OUT.
set -uo pipefail
# shellcheck source=bench/device_env.sh
source bench/device_env.sh
python3 bench/check_kernel_parity.py 2>&1 | tee "$OUT/parity.log" | grep -v Warning
if [ "${TUNE:-0}" = 1 ]; then  # the tile sweep (about 80 s); TUNE=1 to run it
  python3 bench/tune_window_kernel.py --frames 21 --block-q 64 128 --block-k 64 128 --num-warps 4 8 \
    --num-stages 2 3 --reps 10 2>&1 | tee "$OUT/tune.log" | grep "^|\|^frames\|^jax"
fi
# Forward + backward of the fused kernel with every backward it offers (the XLA one, the fused kernels).
backwards=$(python3 -c "from rehyat_jax.attention import WINDOW_BACKENDS; print(*WINDOW_BACKENDS['pallas'].backwards)")
for backward in $backwards; do
  python3 bench/bench_attention.py --methods rehyat_parallel --window-backend pallas --window-backward "$backward" \
    --reps 10 --plot "$OUT/quick_pallas_$backward.png" 2>&1 | tee "$OUT/bench_pallas_$backward.log" | grep "^|"
done
