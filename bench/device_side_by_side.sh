#!/usr/bin/env bash
# One device call, most important first (each step tees its log, so a call cut short keeps what
# ran): kernel parity against the dense reference, the whole DiT forward teacher vs student at
# 21 and 84 latent frames, the attention layer fwd and fwd+bwd (fused backward) teacher vs
# student, then a short tile check of the dk/dv kernel. Logs to $OUT.
set -uo pipefail
# shellcheck source=bench/device_env.sh
source bench/device_env.sh
python3 bench/check_kernel_parity.py 2>&1 | tee "$OUT/parity.log" | grep -v Warning | tail -8
python3 bench/bench_dit.py --frames "${DIT_FRAMES:-21,84}" --cases teacher,parallel --reps 3 2>&1 \
  | tee "$OUT/bench_dit.log" | grep "^|"
python3 bench/bench_attention.py --frames 21 84 --methods full_softmax rehyat_parallel --window-backend pallas \
  --window-backward pallas --reps 10 --plot "$OUT/attention.png" 2>&1 | tee "$OUT/bench_attention.log" | grep "^|"
python3 bench/tune_window_kernel.py --frames 21 --backward --kernels dkv --reps 5 \
  --tiles 32,128,4,3 64,64,4,3 64,128,8,3 32,64,4,3 2>&1 | tee "$OUT/tune_dkv.log" | grep "^|\|^frames\|alone"
