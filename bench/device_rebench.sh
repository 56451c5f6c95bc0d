#!/usr/bin/env bash
# Re-measure docs/benchmarks.md (b) and (c) on the GPU machine in one device call (about 8 minutes):
# one DiT forward (teacher / ReHyAt parallel / recurrent) at 21, 42, 84 latent frames, then 12
# training steps of each stage at the Wan2.1-1.3B shape. Logs go to $OUT. Section (e), the 50-step
# generation, needs two more calls: see that section's commands.
set -uo pipefail
# shellcheck source=bench/device_env.sh
source bench/device_env.sh
{
  python3 bench/bench_dit.py --frames 21 --reps 2
  python3 bench/bench_dit.py --frames 42 --reps 2
  python3 bench/bench_dit.py --cases recurrent --frames 84 --reps 2
  python3 bench/bench_dit.py --cases teacher,parallel --frames 84 --reps 2
} 2>&1 | tee "$OUT/bench_dit.log" | grep "^|"
for stage in distill finetune; do
  python3 -m rehyat_jax.train --config "configs/${stage}_wan_1_3b.py" --config.model.checkpoint= \
    --config.data.source=synthetic --config.data.num_examples=8 --config.train.steps=12 \
    --config.train.log_every=4 --config.train.global_batch_size=1 --config.train.checkpoint_every=1000 \
    --config.workdir="/tmp/runs/$stage" 2>&1 | tee "$OUT/train_$stage.log" | tail -6
done
