#!/usr/bin/env bash
# The band-layout kernels (#10), before/after side by side, one device call per PART (every step tees
# its log to $OUT). "Before" runs main before the change from scratch/base (the package) and
# scratch/base_bench (its bench scripts), both carried.
#   PART=kernels  parity of the band kernels (all settings); attention layer fwd and fwd+bwd at 21 and 84
#                 latent frames: cuDNN full softmax, the student before and after; a forward tile sweep
#   PART=speed    attention layer before/after at 21 / 84 frames, then the whole DiT at 21 (teacher, after, before)
#   PART=profile  a profile of the student's DiT forward at 21 frames, then a small forward tile sweep
#   PART=phi      the fused phi kernel: its parity, the DiT at 21 / 84 frames with phi in XLA and fused (teacher in
#                 the same call), a profile of the fused student, then the backward kernels' tile sweep
#   PART=dit      whole-DiT forward at 21 / 84 frames: teacher, student before and after; profiles of the
#                 student forward before and after and of its training gradient
set -uo pipefail
# shellcheck source=bench/device_env.sh
source bench/device_env.sh
BASE="env PYTHONPATH=$PWD/scratch/base:/tmp/site"
quiet() { grep -v "Warning\|warn"; }
case ${PART:?set PART=kernels, speed, profile, phi or dit} in
  kernels)
    python3 bench/check_kernel_parity.py 2>&1 | tee "$OUT/parity.log" | quiet | tail -8
    common=(--frames 21 84 --window-backend pallas --window-backward pallas --phi-dtype bfloat16 --reps 10)
    python3 bench/bench_attention.py "${common[@]}" --methods full_softmax rehyat_parallel \
      2>&1 | tee "$OUT/attention_after.log" | grep "^|"
    $BASE python3 scratch/base_bench/bench_attention.py "${common[@]}" --methods rehyat_parallel \
      2>&1 | tee "$OUT/attention_before.log" | grep "^|"
    python3 bench/tune_window_kernel.py --frames 21 --block-q 64 128 --block-k 64 128 --num-warps 4 8 \
      --num-stages 2 3 --reps 10 2>&1 | tee "$OUT/tune_forward.log" | grep "^|\|^frames" | head -12
    ;;
  speed)
    common=(--frames 21 84 --window-backend pallas --window-backward pallas --phi-dtype bfloat16 --reps 10)
    python3 bench/bench_attention.py "${common[@]}" --methods full_softmax rehyat_parallel > "$OUT/attention_after.log" 2>&1
    grep "^|" "$OUT/attention_after.log"
    $BASE python3 scratch/base_bench/bench_attention.py "${common[@]}" --methods rehyat_parallel > "$OUT/attention_before.log" 2>&1
    grep "^|" "$OUT/attention_before.log"
    python3 bench/bench_dit.py --frames 21 --cases teacher,parallel --reps 3 > "$OUT/dit_after.log" 2>&1
    grep "^|" "$OUT/dit_after.log"
    $BASE python3 scratch/base_bench/bench_dit.py --frames 21 --cases parallel --reps 3 > "$OUT/dit_before.log" 2>&1
    grep "^|" "$OUT/dit_before.log"
    ;;
  profile)
    python3 bench/profile_dit.py --case parallel --frames 21 > "$OUT/profile_after.log" 2>&1
    grep "^|" "$OUT/profile_after.log" | head -34
    python3 bench/tune_window_kernel.py --frames 21 --block-q 64 128 --block-k 64 128 --num-warps 4 8 \
      --num-stages 2 --reps 10 > "$OUT/tune_forward.log" 2>&1
    grep "^|\|^frames" "$OUT/tune_forward.log" | head -8
    ;;
  phi)
    python3 bench/check_kernel_parity.py --phi-only > "$OUT/parity_phi.log" 2>&1; grep "phi kernel" "$OUT/parity_phi.log"
    python3 bench/bench_dit.py --frames 21,84 --cases teacher,parallel --reps 3 > "$OUT/dit_phi_xla.log" 2>&1
    grep "^|" "$OUT/dit_phi_xla.log"
    python3 bench/bench_dit.py --frames 21,84 --cases parallel --reps 3 --feature-map-backend pallas \
      > "$OUT/dit_phi_pallas.log" 2>&1
    grep "^|" "$OUT/dit_phi_pallas.log"
    python3 bench/profile_dit.py --case parallel --frames 21 --feature-map-backend pallas > "$OUT/profile_phi_pallas.log" 2>&1
    grep "^|" "$OUT/profile_phi_pallas.log" | head -20
    # The backward kernels' tiles were tuned on the padded-window kernels; re-check them on the band.
    python3 bench/tune_window_kernel.py --frames 21 --backward --block-q 64 128 --block-k 64 128 --num-warps 4 8 \
      --num-stages 2 3 --reps 5 > "$OUT/tune_backward.log" 2>&1
    grep "^|\|kernel alone" "$OUT/tune_backward.log" | head -24
    ;;
  dit)
    python3 bench/bench_dit.py --frames 21,84 --cases teacher,parallel --reps 3 2>&1 | tee "$OUT/dit_after.log" | grep "^|"
    $BASE python3 scratch/base_bench/bench_dit.py --frames 21,84 --cases parallel --reps 3 2>&1 \
      | tee "$OUT/dit_before.log" | grep "^|"
    profile() { python3 "$@" --frames 21 2>&1 | quiet; }
    profile bench/profile_dit.py --case parallel | tee "$OUT/profile_after.log" | head -40
    $BASE python3 scratch/base_bench/profile_dit.py --case parallel --frames 21 2>&1 | quiet \
      | tee "$OUT/profile_before.log" | head -12
    profile bench/profile_dit.py --case parallel --backward --window-backward pallas \
      | tee "$OUT/profile_after_bwd.log" | head -30
    ;;
  *) echo "unknown PART=$PART" >&2; exit 2 ;;
esac
