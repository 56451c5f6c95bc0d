#!/usr/bin/env bash
# The #10 measurements with today's defaults (fused backward, per-kernel tiles), one device call per
# PART, most important first within each (every step tees its log to $OUT):
#   PART=kernels   the 64-bit offset check under this jax (seconds; needs pytest in the image), kernel parity
#                  (all settings), attention fwd and fwd+bwd teacher vs student at 21 and 84 latent frames,
#                  whole-DiT forward at 42 frames (teacher, parallel, recurrent)
#   PART=train     12 training steps at 81x480x832, batch 1: the teacher's own finetune step
#                  (no block converted), stage 1 and stage 2 of the student
#   PART=generate  81-frame generation, 10 UniPC steps + CFG: teacher, student parallel and recurrent
#                  in one process (second video timed), then the student alone with XLA's GPU
#                  autotuning off, to see whether autotuning scratch makes the peak
#   PART=memory    the student's 81-frame generation in a process capped at ~24 GiB
#                  (XLA_PYTHON_CLIENT_MEM_FRACTION): does the autotuner then skip what does not fit and the
#                  video still come out, at what speed; then the same with a persistent compilation cache
#                  written by a first process and read by a second (is the autotuning done only once)
#   PART=dit       whole-DiT forward teacher vs student at 21 and 84 latent frames, and recurrent at 42
#   PART=stage1_14b  stage 1 of Wan2.1-14B at 81x480x832 on ONE GPU (#13): random teacher weights drawn on the
#                  device (model.checkpoint='', no 28 GB file to write), mesh fsdp=1, 6 steps; the log ends
#                  with the step time and "peak device memory". The recipe keeps the frozen teacher in bf16
#                  (30.5 GiB of state per bench/plan_memory.py; estimate with activations ≈ 75 GiB)
set -uo pipefail
# shellcheck source=bench/device_env.sh
source bench/device_env.sh
case ${PART:?set PART=kernels, train, generate, memory, dit or stage1_14b} in
  kernels)
    python3 -m pytest -q -p no:cacheprovider tests/attention/test_kernel_offsets.py > "$OUT/kernel_offsets.log" 2>&1
    tail -2 "$OUT/kernel_offsets.log"
    python3 bench/check_kernel_parity.py 2>&1 | tee "$OUT/parity.log" | grep -v Warning | tail -6
    python3 bench/bench_attention.py --frames 21 84 --methods full_softmax rehyat_parallel --window-backend pallas \
      --window-backward pallas --reps 10 --plot "$OUT/attention.png" 2>&1 | tee "$OUT/bench_attention.log" | grep "^|"
    python3 bench/bench_dit.py --frames 42 --cases teacher,parallel,recurrent --reps 2 2>&1 \
      | tee "$OUT/bench_dit_42.log" | grep "^|"
    ;;
  train)
    train() {  # name, config, overrides...
      local name=$1 config=$2; shift 2
      python3 -m rehyat_jax.train --config "$config" --config.model.checkpoint= \
        --config.data.source=synthetic --config.data.num_examples=8 --config.train.steps=12 \
        --config.train.log_every=4 --config.train.global_batch_size=1 --config.train.checkpoint_every=1000 \
        --config.workdir="/tmp/runs/$name" "$@" 2>&1 | tee "$OUT/train_$name.log" | grep -v "Warning\|warn" | tail -5
    }
    train teacher_finetune configs/finetune_wan_1_3b.py --config.rehyat.converted_blocks=0
    train stage1 configs/distill_wan_1_3b.py
    train stage2 configs/finetune_wan_1_3b.py
    ;;
  generate)
    python3 bench/bench_generate.py --steps 10 --videos 2 --cases teacher:81,parallel:81,recurrent:81 2>&1 \
      | tee "$OUT/generate.log" | grep -v "Warning\|warn" | tail -12
    XLA_FLAGS=--xla_gpu_autotune_level=0 python3 bench/bench_generate.py --steps 10 --videos 1 \
      --cases parallel:81 2>&1 | tee "$OUT/generate_autotune0.log" | grep -v "Warning\|warn" | tail -6
    ;;
  memory)
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.17 python3 bench/bench_generate.py --steps 10 --videos 2 --cases parallel:81 \
      2>&1 | tee "$OUT/generate_capped.log" | grep -v "Warning\|warn" | tail -6
    for run in first second; do
      JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 \
        python3 bench/bench_generate.py --steps 10 --videos 1 --cases parallel:81 2>&1 \
        | tee "$OUT/generate_cache_$run.log" | grep -v "Warning\|warn" | tail -4
    done
    ;;
  dit)
    python3 bench/bench_dit.py --frames 21,84 --cases teacher,parallel --reps 3 2>&1 | tee "$OUT/bench_dit.log" | grep "^|"
    python3 bench/bench_dit.py --frames 42 --cases recurrent --reps 2 2>&1 | tee "$OUT/bench_dit_42_rec.log" | grep "^|"
    ;;
  stage1_14b)
    python3 bench/plan_memory.py --config configs/distill_wan_14b.py --meshes fsdp=1 > "$OUT/plan_stage1_14b.log" 2>&1
    python3 -m rehyat_jax.train --config configs/distill_wan_14b.py --config.model.checkpoint= \
      --config.mesh.fsdp=1 --config.mesh.data=1 --config.data.source=synthetic --config.data.num_examples=4 \
      --config.train.steps=6 --config.train.log_every=2 --config.train.global_batch_size=1 \
      --config.train.checkpoint_every=1000 --config.workdir=/tmp/runs/stage1_14b > "$OUT/train_stage1_14b.log" 2>&1
    grep -v "Warning\|warn" "$OUT/train_stage1_14b.log" | tail -8
    ;;
  *) echo "unknown PART=$PART" >&2; exit 2 ;;
esac
