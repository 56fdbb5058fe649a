#!/usr/bin/env bash
# Runs one jaxface command on every worker of the slice at once (jax.distributed initialises itself
# from the TPU metadata; the config's distributed.enabled or JAX_COORDINATOR_ADDRESS turns it on).
#   launch/tpu/run.sh train --config=configs/attributes/pubfig_vggface.py --workdir=gs://bucket/run
set -euo pipefail
source "$(dirname "$0")/common.sh"
args=$(printf '%q ' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="
  cd $REPO_DIR && JAX_COORDINATOR_ADDRESS=auto .venv/bin/python -m jaxface $args
"
