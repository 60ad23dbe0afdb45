#!/usr/bin/env bash
# SLURM batch script: crossmodal_jax.main on several multi-GPU hosts through jax.distributed.
#
# Usage (from the repository root, on a filesystem every node sees):
#   sbatch launch/gpu_hosts.sh --config=configs/vqdit_img.py --workdir=/shared/runs/vqdit_img
#   sbatch --nodes=4 launch/gpu_hosts.sh --config=... --workdir=...        # more hosts
#   PER=host sbatch --ntasks-per-node=1 launch/gpu_hosts.sh --config=... --workdir=...
#
# Two layouts, chosen by PER (the sbatch directives below are for PER=gpu, the default):
#   PER=gpu   one process per GPU: --ntasks-per-node equal to --gpus-per-node. Each process
#             drives the GPU numbered SLURM_LOCALID (or the single GPU SLURM left it visible).
#   PER=host  one process per host driving all its GPUs: submit with --ntasks-per-node=1.
# main's --distributed flag calls jax.distributed.initialize() with no arguments: JAX reads the
# coordinator (first node of the step, port derived from the job id; JAX_COORDINATOR_PORT
# overrides it), the process count (SLURM_NTASKS) and index (SLURM_PROCID) from SLURM.
#
# Environment:
#   PER     gpu | host (default gpu), see above
#   PYTHON  interpreter with crossmodal_jax[cuda] installed (default: .venv/bin/python)
#
# The workdir must be shared by all nodes (NFS/Lustre): checkpoints are written by all processes
# together; process 0 writes logs, metrics and reports. `scancel --signal=INT JOBID` makes the
# run save a checkpoint and stop; resubmitting the same command resumes it.
#
#SBATCH --job-name=crossmodal
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%j.out
set -euo pipefail

if [ $# -lt 1 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
  awk 'NR > 1 && /^#/ { if (!/^#SBATCH/) print; next } NR > 1 { exit }' "$0" | sed -E 's/^# ?//' >&2
  exit 2
fi
if [ -z "${SLURM_JOB_ID:-}" ]; then
  echo "error: not inside a SLURM job; submit it with: sbatch $0 <crossmodal_jax.main flags>" >&2
  exit 2
fi
PER=${PER:-gpu}
case "$PER" in
  gpu | host) ;;
  *)
    echo "error: PER must be 'gpu' or 'host', got '$PER'" >&2
    exit 2
    ;;
esac
if [ "$PER" = host ] && [ "${SLURM_NTASKS_PER_NODE:-1}" != 1 ]; then
  echo "error: PER=host needs one task per node: sbatch --ntasks-per-node=1 ..." >&2
  exit 2
fi
# sbatch runs a copy of this script from its spool directory: find the checkout by the
# submission directory instead of $0.
cd "${SLURM_SUBMIT_DIR:-.}"
export PYTHON=${PYTHON:-$PWD/.venv/bin/python}
export PER

# Runs once per task (under srun): picks this process's GPUs, then starts main.
# shellcheck disable=SC2016  # expanded by the task's shell, not here
task='
set -euo pipefail
visible=${CUDA_VISIBLE_DEVICES:-}
if [ "$PER" = host ]; then
  # JAX would otherwise take local_device_ids=[SLURM_LOCALID], i.e. GPU 0 only.
  if [ -n "$visible" ]; then
    count=$(tr "," "\n" <<<"$visible" | grep -c .)
  else
    count=$(nvidia-smi -L | grep -c "^GPU")
  fi
  JAX_LOCAL_DEVICE_IDS=$(seq -s, 0 $((count - 1)))
elif [ -n "$visible" ] && [[ "$visible" != *,* ]]; then
  JAX_LOCAL_DEVICE_IDS=0  # SLURM bound one GPU to this task: it is device 0 here
else
  JAX_LOCAL_DEVICE_IDS=$SLURM_LOCALID
fi
export JAX_LOCAL_DEVICE_IDS
exec "$PYTHON" -m crossmodal_jax.main --distributed "$@"
'
# --kill-on-bad-exit: one failed process ends the step instead of leaving the rest waiting.
srun --kill-on-bad-exit=1 bash -c "$task" crossmodal_task "$@"
