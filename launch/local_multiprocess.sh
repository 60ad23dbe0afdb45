#!/usr/bin/env bash
# Start N processes on this machine that share its CPU devices through jax.distributed: the same
# code path as a TPU pod or a multi-GPU cluster (gloo collectives between the processes).
#
# Usage:
#   launch/local_multiprocess.sh N <crossmodal_jax.main flags>
#   launch/local_multiprocess.sh 2 --config=configs/vqdit_img.py:smoke --workdir=/tmp/mp
#
# Environment:
#   PYTHON               interpreter with crossmodal_jax installed (default: python)
#   PORT                 coordinator port on 127.0.0.1 (default: random in 20000-39999)
#   DEVICES_PER_PROCESS  CPU devices of each process (default 4): N x this devices in all
#
# Process 0 logs and writes reports; every process trains. If one process fails, the others are
# stopped (rather than left waiting on the coordinator) and the script exits with its status.
set -euo pipefail
if [ $# -lt 1 ] || ! [[ "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 N <crossmodal_jax.main flags>   (N processes on localhost)" >&2
  exit 2
fi
N=$1
shift
PY=${PYTHON:-python}
PORT=${PORT:-$((20000 + RANDOM % 20000))}
DEVICES=${DEVICES_PER_PROCESS:-4}
# A device count forced through XLA_FLAGS (as the test suite does) would override ours. Spaces are
# trimmed too: XLA reads a non-empty XLA_FLAGS that does not start with "--" as a file name.
XLA_FLAGS=$(sed -E 's/--xla_force_host_platform_device_count=[0-9]+//g; s/ +/ /g; s/^ //; s/ $//' \
  <<<"${XLA_FLAGS:-}")
if [ -n "$XLA_FLAGS" ]; then export XLA_FLAGS; else unset XLA_FLAGS; fi

# shellcheck disable=SC2329  # invoked by the trap
cleanup() {
  # Only this shell's jobs that are still running: no stale (possibly reused) process ids.
  local pid
  for pid in $(jobs -pr); do
    kill "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT INT TERM

for ((i = 0; i < N; i++)); do
  JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES=$DEVICES "$PY" -m crossmodal_jax.main \
    --coordinator_address="127.0.0.1:$PORT" --num_processes="$N" --process_id="$i" "$@" &
done

status=0
for ((i = 0; i < N; i++)); do
  # The first process to fail stops the rest: jax.distributed would otherwise wait for it.
  wait -n || {
    status=$?
    break
  }
done
cleanup
wait
exit "$status"
