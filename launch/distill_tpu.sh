#!/usr/bin/env bash
# Stage 1 (distillation) on a Cloud TPU pod slice; all logic lives in launch/tpu_pod.sh (--help).
#   TPU_NAME=rehyat-v5p ZONE=us-east5-a ACCELERATOR_TYPE=v5p-64 launch/distill_tpu.sh \
#     --workdir gs://my-bucket/runs/distill -- --config.train.steps=2000
set -euo pipefail
export CONFIG="${CONFIG:-configs/distill_wan_1_3b.py}"
export TPU_POD_PROG="${TPU_POD_PROG:-launch/distill_tpu.sh}"
exec bash "$(dirname "${BASH_SOURCE[0]}")/tpu_pod.sh" "$@"
