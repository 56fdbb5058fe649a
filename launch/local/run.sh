#!/usr/bin/env bash
# Runs one jaxface command as N cooperating processes on this machine (JAX CPU collectives over gloo on
# loopback): the multi-host code path without a pod.
#   launch/local/run.sh 2 train --config=configs/attributes/synthfaces_tiny.py --workdir=runs/mp
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: launch/local/run.sh NUM_PROCESSES COMMAND [ARGS...]" >&2
  exit 2
fi
n=$1; shift
here=$(cd "$(dirname "$0")/../.." && pwd)
py=${PYTHON:-$here/.venv/bin/python}
port=${JAX_PORT:-$((20000 + RANDOM % 20000))}
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM
for ((i = 0; i < n; i++)); do
  JAX_PLATFORMS=cpu JAX_COORDINATOR_ADDRESS=127.0.0.1:$port JAX_NUM_PROCESSES=$n JAX_PROCESS_ID=$i \
    "$py" -m jaxface "$@" > >(sed "s/^/[$i] /") 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
