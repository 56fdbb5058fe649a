# shellcheck shell=bash
# Shared by the TPU VM scripts (sourced, not run). Each script takes its settings from flags or the
# environment, the flag winning:
#   --name=NAME        TPU_NAME   the TPU VM (or queued resource) name
#   --zone=ZONE        ZONE       e.g. us-central2-b
#   --project=PROJECT  PROJECT    the Google Cloud project (or CLOUDSDK_CORE_PROJECT)
#   --type=TYPE        TPU_TYPE   the accelerator type, e.g. v4-32 (or ACCELERATOR); create.sh only
#   --dry-run                     print the commands, one a line, and run none (no gcloud needed)
# A missing setting is one error line naming the flag and the variable, exit 2, before anything runs.

me=launch/tpu/$(basename "$0")
# shellcheck disable=SC2034 # used by the scripts that source this file
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)  # the repository

TPU_NAME=${TPU_NAME:-}
ZONE=${ZONE:-}
PROJECT=${PROJECT:-${CLOUDSDK_CORE_PROJECT:-}}
TPU_TYPE=${TPU_TYPE:-${ACCELERATOR:-}}
DRY_RUN=0
REPO_DIR=${REPO_DIR:-jaxface}  # where the project lives on each worker, relative to the home folder
ARGS=()                        # what the script's own options did not take, in order

die() {
  echo "$me: error: $*" >&2
  exit 2
}

# parse_common "$@": takes the shared flags; everything else is left in ARGS for the script.
parse_common() {
  while (($#)); do
    case $1 in
      --name=*) TPU_NAME=${1#*=} ;;
      --zone=*) ZONE=${1#*=} ;;
      --project=*) PROJECT=${1#*=} ;;
      --type=*) TPU_TYPE=${1#*=} ;;
      --dry-run) DRY_RUN=1 ;;
      --) ARGS+=("$@"); return ;;
      *) ARGS+=("$1") ;;
    esac
    shift
  done
}

# require name zone project [type]: fails on the first setting that is missing.
require() {
  local what
  for what in "$@"; do
    case $what in
      name) [[ -n $TPU_NAME ]] || die "no TPU name: pass --name=NAME or set TPU_NAME" ;;
      zone) [[ -n $ZONE ]] || die "no zone: pass --zone=ZONE or set ZONE (e.g. us-central2-b)" ;;
      project) [[ -n $PROJECT ]] || die "no project: pass --project=PROJECT or set PROJECT" ;;
      type) [[ -n $TPU_TYPE ]] || die "no accelerator type: pass --type=TYPE or set TPU_TYPE (e.g. v4-32)" ;;
    esac
  done
}

# The options every gcloud command here takes.
where() { printf '%s\n' "--zone=$ZONE" "--project=$PROJECT"; }

# quote WORD: WORD as a shell would need it typed ('--command=a b' -> --command='a b').
quote() {
  local word=$1 q="'\\''"
  if [[ $word =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$word"
  elif [[ $word =~ ^(--[A-Za-z0-9-]+=)(.*)$ ]]; then
    printf "%s'%s'" "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]//\'/$q}"
  else
    printf "'%s'" "${word//\'/$q}"
  fi
}

# run CMD...: runs it, or with --dry-run prints it, one line that can be pasted into a shell.
run() {
  if ((DRY_RUN)); then
    local word line=
    for word in "$@"; do line+="${line:+ }$(quote "$word")"; done
    echo "$line"
  else
    "$@"
  fi
}

# run_sh 'PIPELINE': the same for a local shell pipeline, printed as written.
run_sh() {
  if ((DRY_RUN)); then echo "$1"; else bash -c "set -eo pipefail; $1"; fi
}

# ssh_argv COMMAND: the gcloud command that runs one shell command on every worker at once -> SSH_ARGV.
ssh_argv() {
  local -a opts
  mapfile -t opts < <(where)
  SSH_ARGV=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${opts[@]}" --worker=all --command="$1")
}

# ssh_all COMMAND: runs (or prints) it.
ssh_all() {
  ssh_argv "$1"
  run "${SSH_ARGV[@]}"
}
