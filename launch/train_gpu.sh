#!/usr/bin/env bash
# Train on one multi-GPU host. Default: ONE process driving every local GPU (JAX's single-process
# multi-device mode; the mesh spans jax.devices()). --num-processes N: N processes, each with its
# own contiguous block of GPUs (CUDA_VISIBLE_DEVICES), joined by jax.distributed through a
# coordinator on 127.0.0.1. Run with --help; --dry-run prints every command without running any.
set -euo pipefail

PROG=launch/train_gpu.sh
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
  cat <<EOF
Usage: $PROG [options] [--config.FIELD=VALUE ...] [-- TRAIN_ARGS ...]

Runs  python -m rehyat_jax.train --config CONFIG [--config.workdir=WORKDIR] [TRAIN_ARGS]
from the repository root on this host's GPUs. Install first: pip install -e '.[gpu]'.

Settings (environment variable, overridden by the flag):
  --config FILE[:ARG]    CONFIG            default configs/distill_wan_1_3b.py
  --workdir DIR          WORKDIR           passed as --config.workdir (default: the config's)
  --num-gpus N           NUM_GPUS          default: GPUs in CUDA_VISIBLE_DEVICES if set, else
                                           the count from nvidia-smi -L
  --num-processes N      NUM_PROCESSES     default 1 (one process, all GPUs); N > 1 starts N
                                           processes with NUM_GPUS/N GPUs each and adds
                                           --config.mesh.coordinator_address=127.0.0.1:PORT
                                           --config.mesh.num_processes=N --config.mesh.process_id=i
  --port PORT            COORDINATOR_PORT  coordinator port for N > 1 (default 12355)
  --sequence-parallel N  SEQUENCE_PARALLEL  split the latent frames over N devices (sequence-parallel
                                           ReHyAt): adds --config.mesh.sequence=N (default 1: off;
                                           mesh.data fills the other devices). The frames must be a
                                           multiple of N x rehyat.chunk_frames
  --python PY            PYTHON            default .venv/bin/python if present, else python3
  --log-dir DIR          LOG_DIR           per-process logs for N > 1 (default runs/logs)
  --run-name NAME        RUN_NAME          log name for N > 1 (default <config>-<timestamp>)
  -n, --dry-run          print every command (prefixed "+ ") without running any
  -h, --help             this help

Arguments starting with --config. and every argument after -- go to the training command
unchanged, e.g. -- --config.train.steps=500 --config.mesh.fsdp=8

Environment set for the training processes (a value you export yourself wins):
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.90  JAX preallocates this fraction of each GPU's memory at
      start (default 0.75); 0.90 gives XLA more room for activations and leaves ~10% for
      CUDA/cuDNN/NCCL workspaces. Lower it if NCCL or cuDNN run out of memory.
  XLA_FLAGS+=--xla_gpu_enable_latency_hiding_scheduler=true  lets XLA schedule the asynchronous
      collectives (FSDP all-gathers / reduce-scatters, data-parallel all-reduces) to overlap
      with compute. Added unless XLA_FLAGS already sets this flag.
  PYTHONUNBUFFERED=1  log lines reach the terminal / log files as they are printed.
Often useful, not set here:
  XLA_PYTHON_CLIENT_PREALLOCATE=false  allocate on demand (to share a GPU, or to see the real
      peak use; more fragmentation).
  XLA_PYTHON_CLIENT_ALLOCATOR=platform  exact malloc/free, no caching (memory debugging; slow).
  XLA_FLAGS=--xla_gpu_enable_command_buffer=  turn CUDA graphs off when debugging a hang.
  NCCL_DEBUG=INFO  NCCL's topology / transport choices, for multi-process collectives.
With N > 1, Ctrl-C (or SIGTERM) is forwarded to every process as SIGTERM (the training loop
saves a checkpoint and exits); when one process fails the others get SIGTERM, then SIGKILL
after GRACE_SECONDS (default 120).
EOF
}

# shellcheck source=launch/lib.sh
source "$REPO/launch/lib.sh"

CONFIG=${CONFIG:-configs/distill_wan_1_3b.py}
WORKDIR=${WORKDIR:-}
NUM_GPUS=${NUM_GPUS:-}
NUM_PROCESSES=${NUM_PROCESSES:-1}
COORDINATOR_PORT=${COORDINATOR_PORT:-12355}
SEQUENCE_PARALLEL=${SEQUENCE_PARALLEL:-1}
PYTHON=${PYTHON:-}
LOG_DIR=${LOG_DIR:-runs/logs}
RUN_NAME=${RUN_NAME:-}
GRACE_SECONDS=${GRACE_SECONDS:-120}
DRY_RUN=0
TRAIN_ARGS=()

while [ $# -gt 0 ]; do
  case $1 in
    --config.*) ;;
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
  esac
  case $1 in
    -h | --help) usage; exit 0 ;;
    -n | --dry-run) DRY_RUN=1 ;;
    --config) need_value "$1" $#; CONFIG=$2; shift ;;
    --workdir) need_value "$1" $#; WORKDIR=$2; shift ;;
    --num-gpus) need_value "$1" $#; NUM_GPUS=$2; shift ;;
    --num-processes) need_value "$1" $#; NUM_PROCESSES=$2; shift ;;
    --port) need_value "$1" $#; COORDINATOR_PORT=$2; shift ;;
    --sequence-parallel) need_value "$1" $#; SEQUENCE_PARALLEL=$2; shift ;;
    --python) need_value "$1" $#; PYTHON=$2; shift ;;
    --log-dir) need_value "$1" $#; LOG_DIR=$2; shift ;;
    --run-name) need_value "$1" $#; RUN_NAME=$2; shift ;;
    --config.*) TRAIN_ARGS+=("$1") ;;
    --) shift; TRAIN_ARGS+=("$@"); break ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift
done

cd "$REPO"
config_file=${CONFIG%%:*}
[ -f "$config_file" ] || die "CONFIG file not found: $config_file (paths are relative to $REPO)"
is_count "$NUM_PROCESSES" || die "NUM_PROCESSES must be a positive integer, got: $NUM_PROCESSES"
is_count "$COORDINATOR_PORT" || die "COORDINATOR_PORT must be a port number, got: $COORDINATOR_PORT"
is_count "$GRACE_SECONDS" || die "GRACE_SECONDS must be a positive integer, got: $GRACE_SECONDS"
is_count "$SEQUENCE_PARALLEL" || die "SEQUENCE_PARALLEL must be a positive integer, got: $SEQUENCE_PARALLEL"
if [ "$SEQUENCE_PARALLEL" != 1 ]; then
  for arg in ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"}; do
    case $arg in --config.mesh.sequence=*) die "$arg conflicts with --sequence-parallel $SEQUENCE_PARALLEL (give one)" ;; esac
  done
fi

# GPUs: CUDA_VISIBLE_DEVICES (if set) names them, else 0..NUM_GPUS-1.
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
  IFS=, read -r -a GPU_IDS <<<"$CUDA_VISIBLE_DEVICES"
  if [ -z "$NUM_GPUS" ]; then NUM_GPUS=${#GPU_IDS[@]}; fi
  is_count "$NUM_GPUS" || die "NUM_GPUS must be a positive integer, got: $NUM_GPUS"
  [ "$NUM_GPUS" -le "${#GPU_IDS[@]}" ] || die "NUM_GPUS=$NUM_GPUS but CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES names ${#GPU_IDS[@]}"
  GPU_IDS=("${GPU_IDS[@]:0:$NUM_GPUS}")
else
  if [ -z "$NUM_GPUS" ]; then
    command -v nvidia-smi >/dev/null 2>&1 || die "cannot count GPUs: nvidia-smi not found; set NUM_GPUS"
    NUM_GPUS=$(nvidia-smi -L | grep -c '^GPU ' || true)
  fi
  is_count "$NUM_GPUS" || die "NUM_GPUS must be a positive integer (no GPU found?), got: ${NUM_GPUS:-nothing}"
  GPU_IDS=()
  for ((g = 0; g < NUM_GPUS; g++)); do GPU_IDS+=("$g"); done
fi
[ $((NUM_GPUS % NUM_PROCESSES)) = 0 ] || die "--num-processes $NUM_PROCESSES does not divide the $NUM_GPUS GPUs"

if [ -z "$PYTHON" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.90}
XLA_FLAGS_VALUE=${XLA_FLAGS:-}
case $XLA_FLAGS_VALUE in
  *--xla_gpu_enable_latency_hiding_scheduler*) ;;
  *) XLA_FLAGS_VALUE="${XLA_FLAGS_VALUE:+$XLA_FLAGS_VALUE }--xla_gpu_enable_latency_hiding_scheduler=true" ;;
esac
ENV=(env "XLA_PYTHON_CLIENT_MEM_FRACTION=$MEM_FRACTION" "XLA_FLAGS=$XLA_FLAGS_VALUE" PYTHONUNBUFFERED=1)
TRAIN=("$PYTHON" -m rehyat_jax.train --config "$CONFIG")
if [ -n "$WORKDIR" ]; then TRAIN+=("--config.workdir=$WORKDIR"); fi
if [ "$SEQUENCE_PARALLEL" != 1 ]; then TRAIN+=("--config.mesh.sequence=$SEQUENCE_PARALLEL"); fi
TRAIN+=(${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"})

if [ "$DRY_RUN" = 1 ]; then echo "# $NUM_GPUS GPUs, $NUM_PROCESSES process(es)"; else note "$NUM_GPUS GPUs, $NUM_PROCESSES process(es)"; fi
show_line "$(quote_words cd "$REPO")"

# ---- one process, all GPUs ----
if [ "$NUM_PROCESSES" = 1 ]; then
  CMD=("${ENV[@]}")
  if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then CMD+=("CUDA_VISIBLE_DEVICES=$(IFS=,; echo "${GPU_IDS[*]}")"); fi
  CMD+=("${TRAIN[@]}")
  show_line "$(quote_words "${CMD[@]}")"
  if [ "$DRY_RUN" = 1 ]; then exit 0; fi
  exec "${CMD[@]}"
fi

# ---- N processes, NUM_GPUS/N GPUs each ----
for arg in ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"}; do
  case $arg in
    --config.mesh.coordinator_address* | --config.mesh.num_processes* | --config.mesh.process_id*)
      die "$arg conflicts with --num-processes (the launcher sets the mesh.coordinator_address/num_processes/process_id)" ;;
  esac
done
if [ -z "$RUN_NAME" ]; then RUN_NAME="$(basename "$config_file" .py)-$(date +%Y%m%d-%H%M%S)"; fi
PER=$((NUM_GPUS / NUM_PROCESSES))
LOGS=()
for ((i = 0; i < NUM_PROCESSES; i++)); do LOGS+=("$LOG_DIR/$RUN_NAME.proc$i.log"); done
# Sets CMD to process $1's command.
proc_cmd() {
  local devices
  devices=$(IFS=,; echo "${GPU_IDS[*]:$(($1 * PER)):$PER}")
  CMD=("${ENV[@]}" "CUDA_VISIBLE_DEVICES=$devices" "${TRAIN[@]}"
       "--config.mesh.coordinator_address=127.0.0.1:$COORDINATOR_PORT"
       "--config.mesh.num_processes=$NUM_PROCESSES" "--config.mesh.process_id=$1")
}

show_line "$(quote_words mkdir -p "$LOG_DIR")"
for ((i = 0; i < NUM_PROCESSES; i++)); do
  proc_cmd "$i"
  show_line "$(quote_words "${CMD[@]}") > $(quote "${LOGS[$i]}") 2>&1 < /dev/null &"
done
show_line "$(quote_words tail -n +1 -F "${LOGS[0]}") &"
show_line "wait"
if [ "$DRY_RUN" = 1 ]; then exit 0; fi

mkdir -p "$LOG_DIR"
PIDS=()
for ((i = 0; i < NUM_PROCESSES; i++)); do
  proc_cmd "$i"
  "${CMD[@]}" >"${LOGS[$i]}" 2>&1 </dev/null &
  PIDS+=("$!")
done
note "logs: ${LOGS[*]} (streaming process 0's)"
tail -n +1 -F "${LOGS[0]}" &
TAIL_PID=$!

STOP_AT=""  # $SECONDS after which survivors get SIGKILL
term_all() {
  local p
  for p in "${PIDS[@]}"; do if [ "$p" != exited ]; then kill -TERM "$p" 2>/dev/null || true; fi; done
  if [ -z "$STOP_AT" ]; then STOP_AT=$((SECONDS + GRACE_SECONDS)); fi
}
trap 'note "signal: SIGTERM to every process (checkpoint, then exit)"; term_all' INT TERM

STATUS=0
live=${#PIDS[@]}
while [ "$live" -gt 0 ]; do
  for i in "${!PIDS[@]}"; do
    p=${PIDS[$i]}
    if [ "$p" = exited ] || kill -0 "$p" 2>/dev/null; then continue; fi
    rc=0
    wait "$p" || rc=$?
    PIDS[i]=exited
    live=$((live - 1))
    if [ "$rc" != 0 ]; then
      note "process $i exited with status $rc (log: ${LOGS[$i]})"
      if [ "$STATUS" = 0 ]; then STATUS=$rc; fi
      term_all
    fi
  done
  if [ -n "$STOP_AT" ] && [ "$SECONDS" -ge "$STOP_AT" ]; then
    for p in "${PIDS[@]}"; do if [ "$p" != exited ]; then kill -KILL "$p" 2>/dev/null || true; fi; done
  fi
  if [ "$live" -gt 0 ]; then sleep 0.2; fi
done
kill "$TAIL_PID" 2>/dev/null || true
wait "$TAIL_PID" 2>/dev/null || true
exit "$STATUS"
