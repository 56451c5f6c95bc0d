#!/usr/bin/env bash
# Stage 2 (flow-matching finetuning) on a Cloud TPU pod slice; all logic lives in
# launch/tpu_pod.sh (--help).
#   TPU_NAME=rehyat-v5p ZONE=us-east5-a ACCELERATOR_TYPE=v5p-64 launch/finetune_tpu.sh \
#     --workdir gs://my-bucket/runs/finetune -- --config.model.student=PATH/student_export
set -euo pipefail
export CONFIG="${CONFIG:-configs/finetune_wan_1_3b.py}"
export TPU_POD_PROG="${TPU_POD_PROG:-launch/finetune_tpu.sh}"
exec bash "$(dirname "${BASH_SOURCE[0]}")/tpu_pod.sh" "$@"
