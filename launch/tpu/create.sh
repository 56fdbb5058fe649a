#!/usr/bin/env bash
# Creates a TPU VM (slice). Usage: TPU_NAME=... ZONE=... [ACCELERATOR=v4-32] launch/tpu/create.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" \
  --version="$RUNTIME"
