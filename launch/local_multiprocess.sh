#!/usr/bin/env bash
# Start N processes on this machine that share its CPU devices through jax.distributed: the same code
# path as a TPU pod or a multi-GPU cluster.
#   launch/local_multiprocess.sh 2 --config=configs/vqdit_img.py:smoke --workdir=/tmp/mp
# Each process gets DEVICES_PER_PROCESS (default 4) CPU devices; process 0 logs and writes reports.
set -euo pipefail
if [ $# -lt 1 ] || ! [[ "$1" =~ ^[0-9]+$ ]]; then
  echo "usage: $0 N <crossmodal_jax.main flags>" >&2
  exit 2
fi
N=$1; shift
PY=${PYTHON:-python}
PORT=${PORT:-$((20000 + RANDOM % 20000))}
DEVICES=${DEVICES_PER_PROCESS:-4}
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup INT TERM
for ((i = 0; i < N; i++)); do
  JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES=$DEVICES "$PY" -m crossmodal_jax.main \
    --coordinator_address="127.0.0.1:$PORT" --num_processes="$N" --process_id="$i" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
