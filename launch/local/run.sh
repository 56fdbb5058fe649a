#!/usr/bin/env bash
# Runs one jaxface command as N cooperating processes on this machine (JAX CPU collectives over gloo on
# loopback): the multi-host code path without a pod.
#
#   launch/local/run.sh [OPTIONS] N COMMAND [ARGS...]      jaxface COMMAND in N processes
#   launch/local/run.sh [OPTIONS] N -- PROGRAM [ARGS...]   any program, with the same environment
#
#   launch/local/run.sh 2 train --config=configs/attributes/synthfaces_tiny.py --workdir=runs/mp
#
# Process i gets JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT, JAX_NUM_PROCESSES=N, JAX_PROCESS_ID=i,
# JAX_PLATFORMS=cpu (unless set) and PYTHONUNBUFFERED=1. Its stdout and stderr appear here line by line
# as "[process i] ...", and are appended (never overwritten) to LOGDIR/process_<i>.log, where LOGDIR is
# WORKDIR/logs for a local --workdir=WORKDIR in the command, else ./logs.
#
# The first process to fail (in whatever order they end) stops the run: the others get SIGTERM, then
# SIGKILL after --grace seconds (a process blocked in a collective with a dead peer gets no further), one
# line names the process that failed and how, and the launcher exits with that process's status.
# Ctrl-C (or SIGTERM, SIGHUP) stops every process with SIGTERM (jaxface train saves a checkpoint at the
# step it is on and exits), SIGKILL after --interrupt-grace seconds, at once on a second Ctrl-C; exit
# 130 (143, 129). Each process leads its own process group, which is stopped with it.
#
# Options (before N):
#   --grace=SECONDS            after a failure: SIGTERM -> SIGKILL for the others (default 10)
#   --interrupt-grace=SECONDS  the same after Ctrl-C or SIGTERM (default 60)
#   --logdir=DIR               where process_<i>.log are kept (default: see above)
#   --env=I:NAME=VALUE         NAME=VALUE for process I only (repeatable), e.g. a fault in one process:
#                              --env=1:JAXFACE_FAULTS=train_step@5=SIGKILL
#   --port=PORT                the coordinator's port (default: $JAX_PORT, else a free one)
set -uo pipefail

me=launch/local/run.sh
usage="usage: $me [--grace=SECONDS] [--interrupt-grace=SECONDS] [--logdir=DIR] [--env=I:NAME=VALUE]... [--port=PORT] N (COMMAND | -- PROGRAM) [ARGS...]"
die() { echo "$me: error: $*" >&2; exit 2; }

if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
  die "needs bash 4.4 or newer (this is $BASH_VERSION)"
fi

# ------------------------------------------------------------------------------------------ arguments
grace=10
interrupt_grace=60
logdir=
port=${JAX_PORT:-}
env_specs=()
while (($#)); do
  case $1 in
    --grace=*) grace=${1#*=} ;;
    --interrupt-grace=*) interrupt_grace=${1#*=} ;;
    --logdir=*) logdir=${1#*=} ;;
    --env=*) env_specs+=("${1#*=}") ;;
    --port=*) port=${1#*=} ;;
    -h | --help) echo "$usage"; exit 0 ;;
    -*) die "unknown option $1; $usage" ;;
    *) break ;;
  esac
  shift
done
(($# >= 2)) || die "$usage"
n=$1
shift
[[ $n =~ ^[1-9][0-9]*$ ]] || die "the number of processes must be a positive integer, got '$n'"
[[ $grace =~ ^[0-9]+$ ]] || die "--grace must be a whole number of seconds, got '$grace'"
[[ $interrupt_grace =~ ^[0-9]+$ ]] || die "--interrupt-grace must be a whole number of seconds, got '$interrupt_grace'"
[[ -z $port || $port =~ ^[1-9][0-9]*$ ]] || die "--port must be a port number, got '$port'"

here=$(cd "$(dirname "$0")/../.." && pwd)
if [[ $1 == -- ]]; then
  shift
  (($#)) || die "nothing to run after --; $usage"
  cmd=("$@")
else
  py=${PYTHON:-$here/.venv/bin/python}
  [[ -x $py ]] || die "no python at $py: run make, or set PYTHON"
  cmd=("$py" -m jaxface "$@")
fi

declare -A env_for=()  # process index -> its own NAME=VALUE words, one a line
for spec in "${env_specs[@]}"; do
  [[ $spec =~ ^([0-9]+):([A-Za-z_][A-Za-z0-9_]*=.*)$ ]] || die "--env=$spec is not I:NAME=VALUE"
  idx=${BASH_REMATCH[1]}
  ((idx < n)) || die "--env=$spec: there is no process $idx (processes 0 to $((n - 1)))"
  env_for[$idx]+="${BASH_REMATCH[2]}"$'\n'
done

if [[ -z $logdir ]]; then  # WORKDIR/logs for a local workdir, else ./logs (a gs:// file takes no appends)
  workdir=
  prev=
  for arg in "$@"; do
    case $arg in
      --workdir=*) workdir=${arg#--workdir=} ;;
      *) if [[ $prev == --workdir ]]; then workdir=$arg; fi ;;
    esac
    prev=$arg
  done
  if [[ -n $workdir && $workdir != *://* ]]; then logdir=$workdir/logs; else logdir=logs; fi
fi
mkdir -p "$logdir" || die "cannot create the log folder $logdir"

if [[ -z $port ]]; then
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' \
    2>/dev/null) || port=$((20000 + RANDOM % 20000))
fi

# ------------------------------------------------------------------------------------------ processes
setsid=
if command -v setsid >/dev/null 2>&1; then setsid=setsid; fi  # util-linux; without it, no own groups

signal_all() {  # signal_all SIG PID...: each process, with its process group where it leads one
  local sig=$1 p
  shift
  for p in "$@"; do
    if [[ -n $setsid ]]; then
      kill "-$sig" -- "-$p" 2>/dev/null || kill "-$sig" "$p" 2>/dev/null
    else
      kill "-$sig" "$p" 2>/dev/null
    fi
  done
  return 0
}

alive=()
interrupted=
# shellcheck disable=SC2329 # called by the traps below
on_signal() {
  if [[ -n $interrupted ]]; then signal_all KILL "${alive[@]}"; fi  # the second Ctrl-C: no more grace
  interrupted=$1
}
trap 'on_signal SIGINT' INT
trap 'on_signal SIGTERM' TERM
trap 'on_signal SIGHUP' HUP  # the processes have their own sessions: a closed terminal reaches them here
trap 'signal_all KILL "${alive[@]}"' EXIT  # should this script fail, it leaves no process behind

# Each process writes into its own filter, a process substitution that ignores Ctrl-C (what a process
# prints while it stops still comes through): it prefixes each line and appends it to the log. Each
# line goes out in one write, so that lines of different processes never mix. mawk (Debian's awk)
# reads its input in blocks unless told -W interactive (which also makes it write unbuffered).
awk_cmd=(awk)
if awk -W version 2>/dev/null | grep -qi mawk; then awk_cmd=(awk -W interactive); fi
# shellcheck disable=SC2016 # $0 is awk's
filter='{ printf "%s", prefix $0 "\n"; fflush(); printf "%s", $0 "\n" >> out; fflush(out) }'
pids=()
filters=()
filter_fds=()
started=$(date '+%Y-%m-%d %H:%M:%S')
for ((i = 0; i < n; i++)); do
  log=$logdir/process_$i.log
  printf '==== %s %s: process %d of %d: %s\n' "$started" "$me" "$i" "$n" "${cmd[*]}" >>"$log" \
    || die "cannot write $log"
  exec {fd}> >(trap '' INT TERM; exec "${awk_cmd[@]}" -v prefix="[process $i] " -v out="$log" "$filter")
  filters+=($!)
  filter_fds+=("$fd")
  extra=()
  if [[ -n ${env_for[$i]:-} ]]; then mapfile -t extra < <(printf '%s' "${env_for[$i]}"); fi
  $setsid env JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}" JAX_COORDINATOR_ADDRESS="127.0.0.1:$port" \
    JAX_NUM_PROCESSES="$n" JAX_PROCESS_ID="$i" PYTHONUNBUFFERED=1 "${extra[@]}" "${cmd[@]}" >&"$fd" 2>&1 &
  pids+=($!)
  alive+=($!)
done
declare -A index_of=()
for i in "${!pids[@]}"; do index_of[${pids[$i]}]=$i; done

# wait_any [TIMER_PID]: waits for the next of alive (or TIMER_PID) to end -> done_pid, done_rc; done_pid
# is empty when a signal interrupted the wait. Every wait here has its stderr closed, so that bash does
# not add its own "Killed" notice to the one line below.
if ((BASH_VERSINFO[0] > 5 || (BASH_VERSINFO[0] == 5 && BASH_VERSINFO[1] >= 1))); then
  wait_any() {
    done_pid=
    wait -n -p done_pid "${alive[@]}" "$@" 2>/dev/null
    done_rc=$?
  }
else  # bash < 5.1 has no wait -p: poll
  wait_any() {
    local p
    done_pid=
    while [[ -z $interrupted ]] || (($#)); do
      for p in "${alive[@]}" "$@"; do
        if ! kill -0 "$p" 2>/dev/null; then
          wait "$p" 2>/dev/null
          done_rc=$?
          done_pid=$p
          return
        fi
      done
      sleep 0.2
    done
  }
fi

forget() {  # forget PID: no longer alive
  local p kept=()
  for p in "${alive[@]}"; do [[ $p == "$1" ]] || kept+=("$p"); done
  alive=("${kept[@]}")
}

stop_alive() {  # stop_alive SECONDS: SIGTERM to every live process, SIGKILL to those left after SECONDS
  ((${#alive[@]})) || return 0
  signal_all TERM "${alive[@]}"
  sleep "$1" &
  local timer=$!
  while ((${#alive[@]})); do
    wait_any "$timer"
    if [[ ${done_pid:-} == "$timer" ]]; then
      signal_all KILL "${alive[@]}"
      wait "${alive[@]}" 2>/dev/null
      alive=()
    elif [[ -n ${done_pid:-} ]]; then
      forget "$done_pid"
    fi
  done
  kill "$timer" 2>/dev/null
  wait "$timer" 2>/dev/null
  return 0
}

failed_index=
failed_pid=
failed_rc=0
while ((${#alive[@]})) && [[ -z $interrupted ]]; do
  wait_any
  [[ -n ${done_pid:-} ]] || continue
  forget "$done_pid"
  if ((done_rc != 0)); then
    failed_index=${index_of[$done_pid]}
    failed_pid=$done_pid
    failed_rc=$done_rc
    break
  fi
done
others=${#alive[@]}
if [[ -n $failed_index ]]; then stop_alive "$grace"; else grace=$interrupt_grace; stop_alive "$grace"; fi

# What the processes left running in their groups goes too (it would hold their output open); then the
# filters print what the processes wrote last (2 s at most), and one line says how the run ended.
[[ -z $setsid ]] || signal_all KILL "${pids[@]}"
for fd in "${filter_fds[@]}"; do exec {fd}>&-; done
for ((t = 0; t < 20; t++)); do
  running=0
  for p in "${filters[@]}"; do kill -0 "$p" 2>/dev/null && running=1; done
  ((running)) || break
  sleep 0.1
done
kill "${filters[@]}" 2>/dev/null
wait "${filters[@]}" 2>/dev/null

describe() {  # describe STATUS: "exited with status 3" / "was killed by SIGKILL (exit status 137)"
  local name
  if (($1 > 128)) && name=$(kill -l $(($1 - 128)) 2>/dev/null); then
    echo "was killed by SIG${name#SIG} (exit status $1)"
  else
    echo "exited with status $1"
  fi
}
stopped() {  # stopped COUNT [other]: what happened to the processes still running at the end
  case $1 in
    0) echo "no ${2:+$2 }process was running" ;;
    1) echo "stopped the ${2:+$2 }process (SIGTERM, SIGKILL after ${grace} s)" ;;
    *) echo "stopped the ${2:+$2 }$1 processes (SIGTERM, SIGKILL after ${grace} s)" ;;
  esac
}
if [[ -n $failed_index ]]; then
  echo "$me: process $failed_index of $n (pid $failed_pid) $(describe "$failed_rc"); $(stopped "$others" other); logs in $logdir" >&2
  exit "$failed_rc"
elif [[ -n $interrupted ]]; then
  echo "$me: interrupted ($interrupted): $(stopped "$others"); logs in $logdir" >&2
  exit $((128 + $(kill -l "${interrupted#SIG}")))
fi
echo "$me: all $n processes exited with status 0; logs in $logdir" >&2
exit 0
