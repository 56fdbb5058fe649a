#!/usr/bin/env bash
# Runs one jaxface command on every worker of the slice at once (jax.distributed finds the topology in
# the TPU metadata: JAX_COORDINATOR_ADDRESS=auto turns it on).
#   launch/tpu/run.sh --name=NAME --zone=ZONE --project=PROJECT [--run-id=ID] [--logdir=DIR]
#     [--grace=SECONDS] [--keep-strays] [--dry-run] COMMAND [ARGS...]
#   launch/tpu/run.sh ... train --config=configs/attributes/pubfig_vggface.py --workdir=gs://bucket/run
#
# 1. Stops what still holds the TPU on any worker (a jaxface process of an earlier run, whatever has
#    /dev/accel* or /dev/vfio/* open, libtpu's lock file) unless --keep-strays.
# 2. Runs `jaxface COMMAND ARGS` in ~/jaxface on all workers. Each worker keeps its own log
#    (~/jaxface-logs/ID.worker_W.log); here every line appears as "[worker W] ...", and is appended to
#    LOGDIR/worker_W.log (default logs/tpu/NAME/ID; gcloud's own messages go to LOGDIR/gcloud.log).
# 3. The first worker whose command fails stops the others (SIGTERM, SIGKILL after --grace seconds);
#    so does Ctrl-C here. One line names the worker that failed first and its exit status, which is
#    this script's exit status too.
set -euo pipefail
# shellcheck source=launch/tpu/common.sh
source "$(dirname "$0")/common.sh"

run_id=$(date -u +%Y%m%d-%H%M%S)
logdir=
grace=10
kill_strays=1
parse_common "$@"
command=()
for ((k = 0; k < ${#ARGS[@]}; k++)); do
  arg=${ARGS[k]}
  case $arg in
    --run-id=*) run_id=${arg#*=} ;;
    --logdir=*) logdir=${arg#*=} ;;
    --grace=*) grace=${arg#*=} ;;
    --keep-strays) kill_strays=0 ;;
    --) command+=("${ARGS[@]:k+1}"); break ;;
    -*) die "unknown option '$arg' before the command; usage: $me --name=NAME --zone=ZONE --project=PROJECT [--run-id=ID] [--logdir=DIR] [--grace=SECONDS] [--keep-strays] [--dry-run] COMMAND [ARGS...]" ;;
    *) command+=("${ARGS[@]:k}"); break ;;
  esac
done
require name zone project
((${#command[@]})) || die "no jaxface command to run, e.g. $me ... train --config=... --workdir=gs://..."
[[ $run_id =~ ^[A-Za-z0-9_.-]+$ ]] || die "--run-id must be letters, digits, '.', '_' or '-', got '$run_id'"
[[ $grace =~ ^[0-9]+$ ]] || die "--grace must be a whole number of seconds, got '$grace'"
[[ $REPO_DIR =~ ^[A-Za-z0-9_./-]+$ ]] || die "REPO_DIR must be a plain relative path, got '$REPO_DIR'"
logdir=${logdir:-logs/tpu/$TPU_NAME/$run_id}

# What runs on the workers. The pattern matches the command line of a jaxface process started here
# (and not the shell that runs pkill: "[.]" does not match itself).
pattern="[.]venv/bin/python -m jaxface"
stop_jaxface="if sudo pkill -TERM -f '$pattern'; then sleep $grace; sudo pkill -KILL -f '$pattern' || true; fi"
strays="$stop_jaxface; pids=\$(sudo lsof -t -w /dev/accel* /dev/vfio/[0-9]* 2>/dev/null | sort -u);"
strays+=" if [ -n \"\$pids\" ]; then sudo kill -9 \$pids; fi; sudo rm -f /tmp/libtpu_lockfile"
# shellcheck disable=SC2016 # expanded on the worker
worker='w=$(curl -sf -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || hostname)'
args=
for word in "${command[@]}"; do args+=" $(quote "$word")"; done
remote="set -o pipefail; $worker; mkdir -p ~/jaxface-logs && cd ~/$REPO_DIR"
remote+=" && { JAX_COORDINATOR_ADDRESS=auto PYTHONUNBUFFERED=1 .venv/bin/python -m jaxface$args 2>&1;"
remote+=" rc=\$?; echo \"jaxface exited with status \$rc\"; exit \$rc; }"
remote+=" | tee -a ~/jaxface-logs/$run_id.worker_\$w.log | sed -u \"s/^/[worker \$w] /\""

if ((DRY_RUN)); then
  ((kill_strays == 0)) || ssh_all "$strays"
  ssh_all "$remote"
  echo "# each line \"[worker W] ...\" is also appended to $logdir/worker_W.log; gcloud's own to $logdir/gcloud.log"
  echo "# on the first failed worker, or Ctrl-C:"
  ssh_all "$stop_jaxface"
  exit 0
fi

command -v gcloud >/dev/null || die "gcloud is not installed (https://cloud.google.com/sdk/docs/install)"
mkdir -p "$logdir" || die "cannot create the log folder $logdir"
if ((kill_strays)); then
  echo "$me: stopping what still holds the TPU on the workers of $TPU_NAME"
  ssh_all "$strays" >>"$logdir/gcloud.log" 2>&1 || die "could not reach the workers of $TPU_NAME; see $logdir/gcloud.log"
fi

stopper=
stop_workers() {  # in the background: the workers' jaxface processes get SIGTERM, then SIGKILL
  [[ -z $stopper ]] || return 0
  ssh_all "$stop_jaxface" >>"$logdir/gcloud.log" 2>&1 &
  stopper=$!
}
interrupted=
producer=
# shellcheck disable=SC2329 # called by the trap
on_interrupt() {
  if [[ -n $interrupted && -n $producer ]]; then  # a second Ctrl-C: stop reading and leave
    kill "$producer" 2>/dev/null
    echo "$me: interrupted twice: no longer waiting for the workers (the stop command runs on)" >&2
    exit 130
  fi
  interrupted=1
  stop_workers
}
trap on_interrupt INT TERM

failed_worker=
failed_rc=0
workers=()
# gcloud ignores Ctrl-C: what the workers print while they stop still comes through.
ssh_argv "$remote"
exec {stream}< <(trap '' INT; exec "${SSH_ARGV[@]}" 2>&1)
producer=$!
while IFS= read -r line <&"$stream" || [[ -n $line ]]; do
  if [[ $line =~ ^\[worker\ ([A-Za-z0-9_.-]+)\]\ (.*)$ ]]; then
    w=${BASH_REMATCH[1]}
    text=${BASH_REMATCH[2]}
    printf '%s\n' "$line"
    printf '%s\n' "$text" >>"$logdir/worker_$w.log"
    if [[ $text =~ ^jaxface\ exited\ with\ status\ ([0-9]+)$ ]]; then
      workers+=("$w")
      if ((BASH_REMATCH[1] != 0)) && [[ -z $failed_worker ]]; then
        failed_worker=$w
        failed_rc=${BASH_REMATCH[1]}
        stop_workers
      fi
    fi
  else
    printf '%s\n' "$line" >>"$logdir/gcloud.log"
  fi
done
exec {stream}<&-
if [[ -n $stopper ]]; then wait "$stopper" 2>/dev/null || true; fi

if [[ -n $failed_worker ]]; then
  echo "$me: worker $failed_worker failed first (jaxface exited with status $failed_rc); stopped the others; logs in $logdir" >&2
  exit "$failed_rc"
elif [[ -n $interrupted ]]; then
  echo "$me: interrupted: stopped jaxface on every worker; logs in $logdir" >&2
  exit 130
elif ((${#workers[@]} == 0)); then
  echo "$me: error: no worker reported an exit status (ssh failed?); see $logdir/gcloud.log" >&2
  exit 1
fi
echo "$me: all ${#workers[@]} workers exited with status 0; logs in $logdir" >&2
