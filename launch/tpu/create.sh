#!/usr/bin/env bash
# Creates a TPU VM slice, or asks for one as a queued resource (--queued) and waits until it is ACTIVE.
#   launch/tpu/create.sh --name=NAME --zone=ZONE --project=PROJECT --type=v4-32 [--queued [--spot]]
#     [--runtime=VERSION] [--wait=SECONDS] [--dry-run]
# (or TPU_NAME, ZONE, PROJECT, TPU_TYPE, RUNTIME in the environment; see common.sh)
set -euo pipefail
# shellcheck source=launch/tpu/common.sh
source "$(dirname "$0")/common.sh"

runtime=${RUNTIME:-tpu-ubuntu2204-base}  # v5e: v2-alpha-tpuv5-lite, v6e: v2-alpha-tpuv6e
queued=0
spot=0
wait_s=1800
parse_common "$@"
for arg in "${ARGS[@]}"; do
  case $arg in
    --runtime=*) runtime=${arg#*=} ;;
    --queued) queued=1 ;;
    --spot) spot=1 ;;
    --wait=*) wait_s=${arg#*=} ;;
    *) die "unknown argument '$arg'; usage: $me --name=NAME --zone=ZONE --project=PROJECT --type=TYPE [--queued [--spot]] [--runtime=VERSION] [--wait=SECONDS] [--dry-run]" ;;
  esac
done
require name zone project type
[[ $wait_s =~ ^[0-9]+$ ]] || die "--wait must be a whole number of seconds, got '$wait_s'"
((spot == 0 || queued == 1)) || die "--spot needs --queued"
mapfile -t opts < <(where)

if ((queued == 0)); then
  run gcloud compute tpus tpu-vm create "$TPU_NAME" "${opts[@]}" --accelerator-type="$TPU_TYPE" \
    --version="$runtime"
  exit 0
fi

extra=()
((spot == 0)) || extra+=(--spot)
run gcloud compute tpus queued-resources create "$TPU_NAME" --node-id="$TPU_NAME" "${opts[@]}" \
  --accelerator-type="$TPU_TYPE" --runtime-version="$runtime" "${extra[@]}"
# Wait for the slice: the request stays WAITING_FOR_RESOURCES until capacity frees up.
describe=(gcloud compute tpus queued-resources describe "$TPU_NAME" "${opts[@]}" --format='value(state.state)')
if ((DRY_RUN)); then
  echo "# then, every 30 s for up to ${wait_s} s, until it prints ACTIVE:"
  run "${describe[@]}"
  exit 0
fi
deadline=$((SECONDS + wait_s))
while :; do
  state=$("${describe[@]}")
  case $state in
    ACTIVE) echo "$me: $TPU_NAME is ACTIVE"; exit 0 ;;
    FAILED | SUSPENDED) echo "$me: error: the queued resource $TPU_NAME is $state" >&2; exit 1 ;;
  esac
  if ((SECONDS >= deadline)); then
    echo "$me: error: $TPU_NAME is still $state after ${wait_s} s; it stays queued (teardown.sh --queued removes it)" >&2
    exit 1
  fi
  echo "$me: $TPU_NAME is $state; waiting"
  sleep 30
done
