#!/usr/bin/env bash
# Run crossmodal_jax.main on every worker of a Cloud TPU VM slice (a "pod"): one process per
# worker VM, each driving its local TPU chips. jax.distributed.initialize() (main's
# --distributed flag) reads the coordinator, process count and process index from the TPU
# metadata, so nothing else is passed.
#
# Usage:
#   launch/tpu_pod.sh TPU_NAME ZONE <crossmodal_jax.main flags>
#   launch/tpu_pod.sh my-v5e-32 europe-west4-b \
#       --config=configs/vqdit_img.py --workdir=/mnt/shared/runs/vqdit_img
#
# Multislice (several slices joined over the data-center network, DCN): create them as one queued
# resource with --node-count=N --node-prefix=TPU_NAME (nodes TPU_NAME-0 .. TPU_NAME-N-1), then
#   SLICES=2 launch/tpu_pod.sh my-v5p-64 us-east5-a --config=configs/vqdit_img.py \
#       --workdir=/mnt/shared/runs/vqdit_img --config.mesh.dcn_shape.data=2
# runs every worker of every slice; the TPU runtime tells jax.distributed the slices, and
# mesh.dcn_shape puts the data axis across them (FSDP and tensor parallelism stay inside a slice).
#
# Environment:
#   PROJECT   gcloud project (default: gcloud's configured project)
#   REPO_DIR  checkout of this repository on every worker (default: ~/crossmodal_jax)
#   PYTHON    interpreter on the workers (default: $REPO_DIR/.venv/bin/python)
#   SYNC=1    first copy this checkout's source files to REPO_DIR on every worker
#   INSTALL=1 first create $REPO_DIR/.venv on every worker and `pip install -e ".[tpu]"` there
#   SLICES    number of slices of a multislice queued resource (default 1: TPU_NAME itself)
#
# The workdir must be one directory that every worker sees at the same path (a Filestore/NFS
# mount or a gcsfuse-mounted bucket): checkpoints are written by all processes together, and
# process 0 writes the logs, metrics and reports. Run it inside `tmux`/`nohup` for long jobs:
# stopping this script (Ctrl-C) does not stop the remote processes; see the kill line below.
#   Stop a run: gcloud compute tpus tpu-vm ssh TPU_NAME --zone ZONE --worker=all \
#                 --command "pkill -INT -f crossmodal_jax.main"   (SIGINT: checkpoint, then exit)
set -euo pipefail

usage() {
  awk 'NR > 1 && /^#/ { if (!/^#SBATCH/) print; next } NR > 1 { exit }' "$0" | sed -E 's/^# ?//' >&2
  exit 2
}
[ $# -ge 2 ] || usage
case "$1" in -h | --help) usage ;; esac
TPU_NAME=$1
ZONE=$2
shift 2
[ $# -ge 1 ] || {
  echo "error: no crossmodal_jax.main flags (at least --config and --workdir)" >&2
  exit 2
}

REPO_DIR=${REPO_DIR:-'~/crossmodal_jax'} # expanded by the workers' shell, not here
PYTHON=${PYTHON:-"$REPO_DIR/.venv/bin/python"}
gcloud_args=(--zone "$ZONE")
if [ -n "${PROJECT:-}" ]; then
  gcloud_args+=(--project "$PROJECT")
fi

SLICES=${SLICES:-1}
if ! [[ "$SLICES" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: SLICES must be a positive integer, got '$SLICES'" >&2
  exit 2
fi
if [ "$SLICES" = 1 ]; then
  NODES=("$TPU_NAME")
else
  NODES=()
  for ((s = 0; s < SLICES; s++)); do NODES+=("$TPU_NAME-$s"); done
fi

# Runs a command on every worker of every slice, the slices in parallel; fails if any fails.
on_all_workers() {
  local node pids=() status=0
  for node in "${NODES[@]}"; do
    gcloud compute tpus tpu-vm ssh "$node" "${gcloud_args[@]}" --worker=all --command "$1" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
  return "$status"
}

if [ "${SYNC:-0}" = 1 ]; then
  here=$(cd "$(dirname "$0")/.." && pwd)
  # Copy the source tree only (no virtual environment, runs or caches).
  staging=$(mktemp -d)
  trap 'rm -rf "$staging"' EXIT
  tar -C "$here" --exclude=.venv --exclude=.git --exclude=runs --exclude='*.egg-info' \
    --exclude=__pycache__ -cf "$staging/src.tar" .
  for node in "${NODES[@]}"; do
    gcloud compute tpus tpu-vm scp "$staging/src.tar" "$node:/tmp/crossmodal_src.tar" \
      "${gcloud_args[@]}" --worker=all
  done
  on_all_workers "mkdir -p $REPO_DIR && tar -C $REPO_DIR -xf /tmp/crossmodal_src.tar"
fi

if [ "${INSTALL:-0}" = 1 ]; then
  on_all_workers "cd $REPO_DIR && python3 -m venv .venv && .venv/bin/pip install -q -U pip \
    && .venv/bin/pip install -q -e '.[tpu]'"
fi

# Quote every flag for the workers' shell: --config.eval.prompts='("a b", "c")' survives intact.
printf -v main_flags ' %q' "$@"
on_all_workers "cd $REPO_DIR && JAX_PLATFORMS=tpu $PYTHON -m crossmodal_jax.main --distributed$main_flags"
