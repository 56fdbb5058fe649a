#!/usr/bin/env bash
# Deletes the TPU VM (or, with --queued, the queued resource and its slice). Checkpoints live in the
# workdir (a gs:// bucket on TPU), not on the VM; logs copied back by run.sh are under ./logs/tpu.
#   launch/tpu/teardown.sh --name=NAME --zone=ZONE --project=PROJECT [--queued] [--dry-run]
set -euo pipefail
# shellcheck source=launch/tpu/common.sh
source "$(dirname "$0")/common.sh"

queued=0
parse_common "$@"
for arg in "${ARGS[@]}"; do
  case $arg in
    --queued) queued=1 ;;
    *) die "unknown argument '$arg'; usage: $me --name=NAME --zone=ZONE --project=PROJECT [--queued] [--dry-run]" ;;
  esac
done
require name zone project
mapfile -t opts < <(where)
if ((queued)); then
  run gcloud compute tpus queued-resources delete "$TPU_NAME" "${opts[@]}" --force --quiet
else
  run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${opts[@]}" --quiet
fi
