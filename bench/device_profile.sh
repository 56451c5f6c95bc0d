#!/usr/bin/env bash
# One device call: where the student's time goes. Profiles (bench/profile_dit.py) of the DiT
# forward at 21 latent frames for the teacher and the student, the student both from BASE (a copy
# of the package before a change, in scratch/base, carried) and from the working tree, then the
# student's training step (fwd+bwd) and a sweep of the fused backward kernels' tiles. Logs to $OUT.
set -uo pipefail
# shellcheck source=bench/device_env.sh
source bench/device_env.sh
FRAMES=${FRAMES:-21}
profile() { python3 bench/profile_dit.py --frames "$FRAMES" "$@" 2>&1 | grep -v "Warning\|warn"; }
profile --case teacher | tee "$OUT/profile_teacher.log"
if [ -d scratch/base/rehyat_jax ]; then
  PYTHONPATH=$PWD/scratch/base:/tmp/site profile --case parallel | tee "$OUT/profile_parallel_base.log"
fi
profile --case parallel | tee "$OUT/profile_parallel.log"
profile --case parallel --backward --window-backward pallas | tee "$OUT/profile_parallel_bwd.log"
python3 bench/tune_window_kernel.py --frames "$FRAMES" --backward --block-q 64 128 --block-k 64 128 \
  --num-warps 4 8 --num-stages 2 3 --reps 5 2>&1 | tee "$OUT/tune_backward.log" | grep "^|\|^frames"
