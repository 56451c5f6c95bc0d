#!/usr/bin/env bash
# The #13 multi-GPU measurements, for the 2-GPU machine (device kind nvidia-h200-x2), one device call
# per PART, most important first within each; every step writes its log to $OUT:
#   PART=sp        one attention layer at 84 (and 42) latent frames on 1 vs 2 GPUs, sequence-parallel,
#                  forward and forward+backward, output checked against 1 GPU; prints the bytes each
#                  device receives per layer (linear state: the same at every length)
#   PART=dp        stage-2 training of 1.3B at 81x480x832 (random weights, synthetic data), 12 steps:
#                  1 GPU at global batch 1, then 2 GPUs (mesh data=2) at global batch 2 in one process;
#                  per-step samples/s gives the data-parallel scaling
#   PART=dp_procs  the same config on 1 GPU at global batch 2 (the losses 2 GPUs must reproduce), then
#                  2 GPUs as 2 processes through launch/train_gpu.sh --num-processes 2 (jax.distributed)
#   PART=sp_train  stage-2 training at 84 latent frames (333 video frames): 1 GPU, then 2 GPUs with
#                  --sequence-parallel 2 (the whole DiT forward+backward, sequence-parallel)
#   PART=cfg       81-frame generation, 10 UniPC steps + CFG, student parallel form: CFG passes on 1 GPU,
#                  then on 2 GPUs at once (--cfg-devices 2); then a 321-frame recurrent video on 2
# STAGE=distill switches the dp/dp_procs/sp_train runs to stage 1.
set -uo pipefail
# shellcheck source=bench/device_env.sh
source bench/device_env.sh
STAGE=${STAGE:-finetune}
CONFIG=configs/${STAGE}_wan_1_3b.py

train() {  # name, number of GPUs, global batch, extra launcher/config arguments...
  local name=$1 gpus=$2 batch=$3; shift 3
  NUM_GPUS=$gpus CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((gpus - 1))) bash launch/train_gpu.sh --python python3 \
    --config "$CONFIG" --workdir "/tmp/runs/$name" --log-dir "$OUT" --run-name "$name" "$@" -- \
    --config.model.checkpoint= --config.data.source=synthetic --config.data.num_examples=16 \
    --config.train.steps=12 --config.train.log_every=4 --config.train.global_batch_size="$batch" \
    --config.train.checkpoint_every=1000 > "$OUT/train_$name.log" 2>&1
  grep -v "Warning\|warn" "$OUT/train_$name.log" | tail -6
}

case ${PART:?set PART=sp, dp, dp_procs, sp_train or cfg} in
  sp)
    for frames in 84 42; do
      python3 bench/bench_sequence_parallel.py --frames "$frames" --devices 1,2 --reps 10 \
        > "$OUT/sequence_parallel_$frames.log" 2>&1
      grep -v "Warning\|warn" "$OUT/sequence_parallel_$frames.log" | tail -5
    done
    ;;
  dp)
    train dp_1gpu_b1 1 1 --config.mesh.data=1
    train dp_2gpu_b2 2 2 --config.mesh.data=2
    ;;
  dp_procs)
    train dp_1gpu_b2 1 2 --config.mesh.data=1
    train dp_2proc_b2 2 2 --num-processes 2 --config.mesh.data=2
    ;;
  sp_train)
    train sp_1gpu 1 1 --config.mesh.data=1 --config.data.latent_shape="(84, 60, 104)"
    train sp_2gpu 2 1 --sequence-parallel 2 --config.data.latent_shape="(84, 60, 104)"
    ;;
  cfg)
    for devices in 1 2; do
      python3 bench/bench_generate.py --steps 10 --videos 2 --cases parallel:81 --cfg-devices "$devices" \
        > "$OUT/generate_cfg$devices.log" 2>&1
      grep -v "Warning\|warn" "$OUT/generate_cfg$devices.log" | tail -4
    done
    python3 bench/bench_generate.py --steps 10 --videos 1 --cases recurrent:321 --cfg-devices 2 \
      > "$OUT/generate_cfg2_321.log" 2>&1
    grep -v "Warning\|warn" "$OUT/generate_cfg2_321.log" | tail -4
    ;;
  *)
    echo "unknown PART=$PART" >&2
    exit 2
    ;;
esac
