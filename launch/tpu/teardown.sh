#!/usr/bin/env bash
# Deletes the TPU VM. Checkpoints live in the workdir (use a gs:// bucket on TPU), not on the VM.
set -euo pipefail
source "$(dirname "$0")/common.sh"
gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --quiet
