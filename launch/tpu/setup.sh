#!/usr/bin/env bash
# Clones (or updates) jaxface on every worker and installs it with TPU jax.
set -euo pipefail
source "$(dirname "$0")/common.sh"
: "${REPO_URL:?set REPO_URL to a clone URL the workers can reach}"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="
  set -e
  if [ -d $REPO_DIR ]; then git -C $REPO_DIR pull --ff-only; else git clone $REPO_URL $REPO_DIR; fi
  cd $REPO_DIR && python3 -m venv .venv && .venv/bin/pip install -q -U pip &&
  .venv/bin/pip install -q -e . 'jax[tpu]'
"
