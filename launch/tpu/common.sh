# Shared settings for the TPU VM scripts; override in the environment.
: "${TPU_NAME:?set TPU_NAME (the TPU VM name)}"
: "${ZONE:?set ZONE (e.g. us-central2-b)}"
ACCELERATOR=${ACCELERATOR:-v4-8}
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
REPO_URL=${REPO_URL:-}      # where the workers clone jaxface from
REPO_DIR=${REPO_DIR:-jaxface}
