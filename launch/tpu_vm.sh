#!/usr/bin/env bash
# Cloud TPU VMs and pod slices: create, install this checkout, run one command on every
# worker, stream its logs, delete. JAX's multi-controller runtime finds the slice's workers
# itself (jax.distributed.initialize() reads the TPU VM metadata: config.distributed left
# empty), so every worker runs the same command.
#
#   TPU_NAME=grpo ZONE=us-east5-a ACCELERATOR_TYPE=v5p-32 launch/tpu_vm.sh create
#   TPU_NAME=grpo ZONE=us-east5-a launch/tpu_vm.sh setup
#   TPU_NAME=grpo ZONE=us-east5-a launch/tpu_vm.sh run --config=configs/grpo.py:data=jsonl \
#       --config.model.path=/ckpt/Qwen2.5-7B --config.mesh.fsdp=-1 --config.mesh.data=1 \
#       --workdir=gs://BUCKET/grpo
#   TPU_NAME=grpo ZONE=us-east5-a launch/tpu_vm.sh delete
#
# `up ARGS...` does create, setup and run; with DELETE_AFTER=1 it deletes the slice after.
# QUEUED=1 creates through a queued resource (capacity that arrives later; add SPOT=1 for
# spot capacity) and waits until it is ACTIVE. The workdir must be one every worker sees
# (gs://...): checkpoints are written by all workers through orbax. Logs go to the terminal
# and to LOG_DIR/<tpu name>.log (default ./logs). launch/README.md has the exact commands.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
GCLOUD=${GCLOUD:-gcloud}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v5p-8}
RUNTIME_VERSION=${RUNTIME_VERSION:-v2-alpha-tpuv5}
REMOTE_DIR=${REMOTE_DIR:-jaxrl}
LOG_DIR=${LOG_DIR:-logs}
PROJECT_FLAG=()
if [[ -n "${PROJECT:-}" ]]; then PROJECT_FLAG=(--project="$PROJECT"); fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

tpu() { "$GCLOUD" compute tpus "$@" --zone="$ZONE" "${PROJECT_FLAG[@]}"; }

on_workers() {  # the same shell command on every worker, in parallel
  tpu tpu-vm ssh "$TPU_NAME" --worker=all --command="$1"
}

create() {
  if [[ "${QUEUED:-0}" == 1 ]]; then
    local spot=()
    if [[ "${SPOT:-0}" == 1 ]]; then spot=(--spot); fi
    tpu queued-resources create "$TPU_NAME" --node-id="$TPU_NAME" \
      --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION" "${spot[@]}"
    until [[ "$(tpu queued-resources describe "$TPU_NAME" --format='value(state.state)')" \
             == ACTIVE ]]; do
      echo "waiting for queued resource $TPU_NAME ..." >&2
      sleep "${POLL_S:-60}"
    done
  else
    tpu tpu-vm create "$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" \
      --version="$RUNTIME_VERSION"
  fi
}

setup() {  # this checkout's committed tree, unpacked and installed on every worker
  local archive
  archive=$(mktemp -t jaxrl.XXXXXX.tar.gz)
  git -C "$ROOT" archive --format=tar.gz -o "$archive" HEAD
  tpu tpu-vm scp "$archive" "$TPU_NAME:jaxrl.tar.gz" --worker=all
  rm -f "$archive"
  on_workers "rm -rf ~/$REMOTE_DIR && mkdir -p ~/$REMOTE_DIR && tar xzf ~/jaxrl.tar.gz -C ~/$REMOTE_DIR && pip install -q -e ~/$REMOTE_DIR 'jax[tpu]'"
}

run() {  # python -m jaxrl.main ARGS on every worker; logs streamed and kept
  mkdir -p "$LOG_DIR"
  local args
  args=$(printf '%q ' "$@")
  on_workers "cd ~/$REMOTE_DIR && python3 -m jaxrl.main $args" 2>&1 | tee "$LOG_DIR/$TPU_NAME.log"
}

delete() {
  if [[ "${QUEUED:-0}" == 1 ]]; then
    tpu queued-resources delete "$TPU_NAME" --force --quiet
  else
    tpu tpu-vm delete "$TPU_NAME" --quiet
  fi
}

cmd=${1:?usage: launch/tpu_vm.sh create|setup|run ARGS...|up ARGS...|delete}
shift
case "$cmd" in
  create) create ;;
  setup) setup ;;
  run) run "$@" ;;
  up)
    create
    setup
    status=0
    run "$@" || status=$?
    if [[ "${DELETE_AFTER:-0}" == 1 ]]; then delete; fi
    exit "$status"
    ;;
  delete) delete ;;
  *) echo "unknown command $cmd: create|setup|run|up|delete" >&2; exit 2 ;;
esac
