#!/usr/bin/env bash
# Shared Cloud TPU pod-slice launcher behind launch/distill_tpu.sh and launch/finetune_tpu.sh.
# Create (or reuse) a TPU VM slice, ship this working tree to every worker, install the project,
# start `python -m rehyat_jax.train` on every worker in the background, then stream worker 0's log.
# Run with --help for the settings; --dry-run prints every command without running any.
#
# Code delivery: the working tree is shipped as a tarball of the files git would carry (tracked
# files plus untracked files that are not ignored, as they are on disk now, uncommitted edits
# included; .git, .venv, runs/, ... stay home), copied with `gcloud ... scp --worker=all` and
# unpacked over REMOTE_DIR on each worker. Files deleted locally are not deleted remotely.
#
# Written for bash >= 3.2 (macOS /bin/bash): no mapfile, associative arrays or ${x@Q}; arrays
# that may be empty are expanded as ${a[@]+"${a[@]}"} so `set -u` accepts them there.
set -euo pipefail

PROG=${TPU_POD_PROG:-launch/tpu_pod.sh}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
  cat <<EOF
Usage: $PROG [options] [--config.FIELD=VALUE ...] [-- TRAIN_ARGS ...]

Create or reuse a Cloud TPU VM slice, sync this working tree to all workers, install the project
(pip install -e '.[tpu]' in REMOTE_DIR/.venv), start
  python -m rehyat_jax.train --config CONFIG [--config.workdir=WORKDIR] [TRAIN_ARGS]
on every worker with nohup (one log per worker: REMOTE_DIR/logs/RUN_NAME.<hostname>.log) and
stream worker 0's log (Ctrl-C stops the streaming, not the job).

Settings (environment variable, overridden by the flag):
  --name NAME              TPU_NAME          TPU VM name (required)
  --zone ZONE              ZONE              e.g. us-east5-a (required)
  --accelerator-type TYPE  ACCELERATOR_TYPE  e.g. v5p-64, v6e-32, v4-32 (required; a reused TPU
                                             must have this type)
  --runtime-version V      RUNTIME_VERSION   default by family: v6e v2-alpha-tpuv6e, v5p
                                             v2-alpha-tpuv5, v5e/v5litepod v2-alpha-tpuv5-lite,
                                             v2/v3/v4 tpu-ubuntu2204-base
  --project P              PROJECT           default: gcloud's configured project
  --config FILE[:ARG]      CONFIG            config file relative to the repository root
                                             (default: ${CONFIG:-none})
  --workdir DIR            WORKDIR           passed as --config.workdir (gs://bucket/path or a
                                             path on each worker; default: the config's)
  --spot | --no-spot       SPOT              1/0: create a Spot TPU (default 0)
  --remote-dir DIR         REMOTE_DIR        checkout on the workers, relative to the login home
                                             or absolute (default rehyat-jax)
  --run-name NAME          RUN_NAME          log name (default <config>-<UTC timestamp>)
  --python-version X.Y     REMOTE_PYTHON     Python for the workers' venv when python3 there is
                                             older than 3.11 (fetched with uv; default 3.11)
  --sequence-parallel N    SEQUENCE_PARALLEL split the latent frames over N devices (sequence-
                                             parallel ReHyAt): adds --config.mesh.sequence=N
                                             (default 1: off); the frames must be a multiple of
                                             N x rehyat.chunk_frames
  --env KEY=VALUE          (repeatable) environment for the training processes, e.g.
                           --env TF_CPP_MIN_LOG_LEVEL=0

Steps and actions:
  --skip-sync              do not ship the working tree (use what is on the workers)
  --skip-install           do not run pip install on the workers
  --no-tail                start the job and return without streaming the log
  --logs                   only stream worker 0's log (RUN_NAME, else the newest run) and exit
  --stop                   only send SIGTERM to the training process on every worker (the loop
                           saves a checkpoint and exits) and exit
  -n, --dry-run            print every command (prefixed "+ ") without running any
  -h, --help               this help

Arguments starting with --config. and every argument after -- go to the training command
unchanged, e.g. -- --config.train.steps=500 --config.rehyat.converted_blocks=0,3,5

The converted teacher (the config's model.checkpoint, e.g. ckpt/wan2.1-t2v-1.3b) and any dataset
must be readable on every worker at the configured path (relative paths are under REMOTE_DIR).
Delete the TPU when done:
  gcloud compute tpus tpu-vm delete NAME --zone=ZONE --quiet
EOF
}

# shellcheck source=launch/lib.sh
source "$REPO/launch/lib.sh"

# ---- settings: environment first, flags override ----
TPU_NAME=${TPU_NAME:-}
ZONE=${ZONE:-}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-}
RUNTIME_VERSION=${RUNTIME_VERSION:-}
PROJECT=${PROJECT:-}
CONFIG=${CONFIG:-}
WORKDIR=${WORKDIR:-}
SPOT=${SPOT:-0}
REMOTE_DIR=${REMOTE_DIR:-rehyat-jax}
RUN_NAME=${RUN_NAME:-}
REMOTE_PYTHON=${REMOTE_PYTHON:-3.11}
SEQUENCE_PARALLEL=${SEQUENCE_PARALLEL:-1}
DRY_RUN=0
ACTION=launch
DO_SYNC=1
DO_INSTALL=1
DO_TAIL=1
TRAIN_ARGS=()
TRAIN_ENV=()

while [ $# -gt 0 ]; do
  case $1 in
    --config.*) ;;  # pass-through override: keep its '=' intact
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
  esac
  case $1 in
    -h | --help) usage; exit 0 ;;
    -n | --dry-run) DRY_RUN=1 ;;
    --name | --tpu-name) need_value "$1" $#; TPU_NAME=$2; shift ;;
    --zone) need_value "$1" $#; ZONE=$2; shift ;;
    --accelerator-type) need_value "$1" $#; ACCELERATOR_TYPE=$2; shift ;;
    --runtime-version) need_value "$1" $#; RUNTIME_VERSION=$2; shift ;;
    --project) need_value "$1" $#; PROJECT=$2; shift ;;
    --config) need_value "$1" $#; CONFIG=$2; shift ;;
    --workdir) need_value "$1" $#; WORKDIR=$2; shift ;;
    --spot) SPOT=1 ;;
    --no-spot) SPOT=0 ;;
    --remote-dir) need_value "$1" $#; REMOTE_DIR=$2; shift ;;
    --run-name) need_value "$1" $#; RUN_NAME=$2; shift ;;
    --python-version) need_value "$1" $#; REMOTE_PYTHON=$2; shift ;;
    --sequence-parallel) need_value "$1" $#; SEQUENCE_PARALLEL=$2; shift ;;
    --env) need_value "$1" $#
      case $2 in [A-Za-z_]*=*) ;; *) die "--env wants KEY=VALUE, got: $2" ;; esac
      TRAIN_ENV+=("$2"); shift ;;
    --skip-sync) DO_SYNC=0 ;;
    --skip-install) DO_INSTALL=0 ;;
    --no-tail) DO_TAIL=0 ;;
    --logs) ACTION=logs ;;
    --stop) ACTION=stop ;;
    --config.*) TRAIN_ARGS+=("$1") ;;
    --) shift; TRAIN_ARGS+=("$@"); break ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift
done

# ---- validation ----
[ -n "$TPU_NAME" ] || die "TPU_NAME is not set (use --name NAME or the TPU_NAME environment variable)"
[ -n "$ZONE" ] || die "ZONE is not set (use --zone ZONE or the ZONE environment variable)"
[ -n "$REMOTE_DIR" ] || die "REMOTE_DIR is empty"
if [ "$ACTION" = launch ]; then
  [ -n "$ACCELERATOR_TYPE" ] || die "ACCELERATOR_TYPE is not set (use --accelerator-type TYPE, e.g. v5p-64, or the ACCELERATOR_TYPE environment variable)"
  [ -n "$CONFIG" ] || die "CONFIG is not set (use --config configs/<job>.py or the CONFIG environment variable)"
  config_file=${CONFIG%%:*}
  case $config_file in
    /*) die "CONFIG must be relative to the repository root (it runs on the workers), got: $CONFIG" ;;
  esac
  [ -f "$REPO/$config_file" ] || die "CONFIG file not found: $REPO/$config_file"
  is_count "$SEQUENCE_PARALLEL" || die "SEQUENCE_PARALLEL must be a positive integer, got: $SEQUENCE_PARALLEL"
  if [ "$SEQUENCE_PARALLEL" != 1 ]; then
    for arg in ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"}; do
      case $arg in --config.mesh.sequence=*) die "$arg conflicts with --sequence-parallel $SEQUENCE_PARALLEL (give one)" ;; esac
    done
  fi
  case $(printf '%s' "$SPOT" | tr '[:upper:]' '[:lower:]') in
    1 | true | yes | on) SPOT=1 ;;
    0 | false | no | off | '') SPOT=0 ;;
    *) die "SPOT must be 1 or 0, got: $SPOT" ;;
  esac
  if [ -z "$RUNTIME_VERSION" ]; then
    case $ACCELERATOR_TYPE in
      v6e-*) RUNTIME_VERSION=v2-alpha-tpuv6e ;;
      v5p-*) RUNTIME_VERSION=v2-alpha-tpuv5 ;;
      v5e-* | v5litepod-*) RUNTIME_VERSION=v2-alpha-tpuv5-lite ;;
      v2-* | v3-* | v4-*) RUNTIME_VERSION=tpu-ubuntu2204-base ;;
      *) die "no default RUNTIME_VERSION for ACCELERATOR_TYPE=$ACCELERATOR_TYPE; set RUNTIME_VERSION" ;;
    esac
  fi
  if [ -z "$RUN_NAME" ]; then
    RUN_NAME="$(basename "$config_file" .py)-$(date -u +%Y%m%d-%H%M%S)"
  fi
  case $WORKDIR in
    gs://*) ;;
    '') note "note: the config's workdir is a path on each worker; multi-host checkpoints need storage all workers share (WORKDIR=gs://...)" ;;
    *) note "note: workdir $WORKDIR is a path on each worker; multi-host checkpoints need storage all workers share (gs://...)" ;;
  esac
fi
if [ "$DRY_RUN" != 1 ]; then
  command -v gcloud >/dev/null 2>&1 || die "gcloud not found on PATH (install the Google Cloud CLI, or use --dry-run)"
fi

# ---- commands ----
TPU=(gcloud compute tpus tpu-vm)
WHERE=("--zone=$ZONE")
if [ -n "$PROJECT" ]; then WHERE+=("--project=$PROJECT"); fi
RDIR=$(quote "$REMOTE_DIR")
# Shell snippet (run on a worker): true when logs/train.pid names a live process.
# shellcheck disable=SC2016  # expanded on the worker, not here
RUNNING='[ -f logs/train.pid ] && kill -0 "$(cat logs/train.pid)" 2>/dev/null'

ssh_all() { run "${TPU[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker=all --command "$1"; }
ssh_tail() {
  local target
  if [ -n "$RUN_NAME" ]; then target="logs/$(quote "$RUN_NAME").\$(hostname).log"
  else
    # shellcheck disable=SC2016  # expanded on the worker, not here
    target='"$(ls -t logs/*."$(hostname)".log | head -n 1)"'
  fi
  run "${TPU[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker=0 --command "cd $RDIR && tail -n +1 -F $target"
}

if [ "$ACTION" = stop ]; then
  ssh_all "cd $RDIR && if $RUNNING; then kill -TERM \"\$(cat logs/train.pid)\" && echo \"\$(hostname): sent SIGTERM to pid \$(cat logs/train.pid)\"; else echo \"\$(hostname): no training process running\"; fi"
  exit 0
fi
if [ "$ACTION" = logs ]; then
  ssh_tail
  exit 0
fi

# 1. TPU: reuse a READY one of the right type, else create it (create waits until it is ready).
DESCRIBE=("${TPU[@]}" describe "$TPU_NAME" "${WHERE[@]}" "--format=value(state,acceleratorType)")
CREATE=("${TPU[@]}" create "$TPU_NAME" "${WHERE[@]}" "--accelerator-type=$ACCELERATOR_TYPE" "--version=$RUNTIME_VERSION")
if [ "$SPOT" = 1 ]; then CREATE+=(--spot); fi
if [ "$DRY_RUN" = 1 ]; then
  show "${DESCRIBE[@]}"
  echo "# only if the describe above finds no such TPU:"
  show "${CREATE[@]}"
else
  show "${DESCRIBE[@]}"
  if found=$("${DESCRIBE[@]}" 2>/dev/null); then
    read -r state found_type <<<"$found" || true
    [ "$state" = READY ] || die "TPU $TPU_NAME exists but is ${state:-in an unknown state}; wait for it, or delete it: gcloud compute tpus tpu-vm delete $TPU_NAME --zone=$ZONE --quiet"
    if [ -z "${found_type:-}" ]; then
      note "reusing TPU $TPU_NAME (READY; it reports no acceleratorType, so $ACCELERATOR_TYPE is not checked)"
    else
      [ "$found_type" = "$ACCELERATOR_TYPE" ] || die "TPU $TPU_NAME exists as $found_type, not $ACCELERATOR_TYPE; pick another --name or --accelerator-type=$found_type"
      note "reusing TPU $TPU_NAME ($found_type, READY)"
    fi
  else
    run "${CREATE[@]}"
  fi
fi

# 2. Code: tarball of the working tree -> every worker -> unpacked over REMOTE_DIR.
if [ "$DO_SYNC" = 1 ]; then
  git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1 || die "$REPO is not a git checkout (needed to choose the files to ship); use --skip-sync"
  deleted=$(git -C "$REPO" ls-files --deleted)
  [ -z "$deleted" ] || die "tracked files are missing from the working tree (stage their deletion with git rm, or restore them): $(echo "$deleted" | tr '\n' ' ')"
  TARBALL="${TMPDIR:-/tmp}/rehyat-jax-src-$TPU_NAME.tar.gz"
  REMOTE_TARBALL=rehyat-jax-src.tar.gz
  LIST=(git -C "$REPO" ls-files -z --cached --others --exclude-standard)
  PACK=(tar -czf "$TARBALL" -C "$REPO" --null -T -)
  show_line "$(quote_words "${LIST[@]}") | $(quote_words "${PACK[@]}")"
  if [ "$DRY_RUN" != 1 ]; then
    trap 'rm -f "$TARBALL"' EXIT
    "${LIST[@]}" | "${PACK[@]}"
  fi
  run "${TPU[@]}" scp "$TARBALL" "$TPU_NAME:$REMOTE_TARBALL" "${WHERE[@]}" --worker=all
  ssh_all "mkdir -p $RDIR && tar -xzf $REMOTE_TARBALL -C $RDIR && rm -f $REMOTE_TARBALL"
fi

# 3. Install: REMOTE_DIR/.venv (python3 if >= 3.11, else a uv-provided Python), then the project.
if [ "$DO_INSTALL" = 1 ]; then
  PYV=$(quote "$REMOTE_PYTHON")
  ssh_all "set -e; cd $RDIR; if [ ! -x .venv/bin/python ]; then if python3 -c \"import sys; sys.exit(sys.version_info < (3, 11))\"; then python3 -m venv .venv; else python3 -m pip install --user --quiet uv && \"\$HOME/.local/bin/uv\" venv --seed --python $PYV .venv; fi; fi; .venv/bin/python -m pip install --quiet --upgrade pip; .venv/bin/python -m pip install --quiet -e \".[tpu]\""
fi

# 4. Train: the same command on every worker, no per-worker arguments (on a TPU slice,
#    jax.distributed.initialize() without arguments finds the peers from the VM metadata).
TRAIN=(.venv/bin/python -m rehyat_jax.train --config "$CONFIG" --config.mesh.auto_distributed=true)
if [ -n "$WORKDIR" ]; then TRAIN+=("--config.workdir=$WORKDIR"); fi
if [ "$SEQUENCE_PARALLEL" != 1 ]; then TRAIN+=("--config.mesh.sequence=$SEQUENCE_PARALLEL"); fi
TRAIN+=(${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"})
TRAIN_CMD=$(quote_words env PYTHONUNBUFFERED=1 ${TRAIN_ENV[@]+"${TRAIN_ENV[@]}"} "${TRAIN[@]}")
LOG="logs/$(quote "$RUN_NAME").\$(hostname).log"
ssh_all "cd $RDIR && mkdir -p logs && if $RUNNING; then echo \"\$(hostname): training already running (pid \$(cat logs/train.pid)); stop it first with --stop\" >&2; exit 1; fi && log=$LOG && { setsid nohup $TRAIN_CMD > \"\$log\" 2>&1 < /dev/null & echo \$! > logs/train.pid; } && echo \"\$(hostname): started pid \$(cat logs/train.pid), log \$PWD/\$log\""

# 5. Logs.
if [ "$DO_TAIL" = 1 ]; then
  if [ "$DRY_RUN" != 1 ]; then
    note "streaming worker 0's log; Ctrl-C stops the streaming only (the job keeps running)."
    note "re-attach later: $(quote_words "$PROG" --name "$TPU_NAME" --zone "$ZONE" --logs --run-name "$RUN_NAME") (or --stop)"
  fi
  ssh_tail
fi
