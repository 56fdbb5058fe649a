#!/usr/bin/env bash
# Installs jaxface on every worker of the slice with the package versions of this checkout's `make`:
# the local tree (tracked files and the untracked ones git does not ignore) is packed, copied to each
# worker and unpacked into ~/jaxface (its .venv kept), then installed into ~/jaxface/.venv together with
# 'jax[tpu]' at the same jax version, every package constrained by the lock. Each worker ends with one
# line: "HOST jaxface ready: jax X libtpu Y".
#   launch/tpu/setup.sh --name=NAME --zone=ZONE --project=PROJECT [--lock=FILE] [--extras=serve]
#     [--repo-url=URL [--ref=REF]] [--python=python3.11] [--dry-run]
# The lock: --lock=FILE, else requirements.lock in the repository, else a `pip freeze` of .venv (what
# `make` installed here). --repo-url: the workers clone (or fetch) that repository and check out REF
# instead of receiving the local tree.
set -euo pipefail
# shellcheck source=launch/tpu/common.sh
source "$(dirname "$0")/common.sh"

lock=
extras=
repo_url=
ref=origin/HEAD
python=${PYTHON_BIN:-python3.11}  # the project needs Python >= 3.11 (Ubuntu 22.04: apt's python3.11)
parse_common "$@"
for arg in "${ARGS[@]}"; do
  case $arg in
    --lock=*) lock=${arg#*=} ;;
    --extras=*) extras=${arg#*=} ;;
    --repo-url=*) repo_url=${arg#*=} ;;
    --ref=*) ref=${arg#*=} ;;
    --python=*) python=${arg#*=} ;;
    *) die "unknown argument '$arg'; usage: $me --name=NAME --zone=ZONE --project=PROJECT [--lock=FILE] [--extras=EXTRAS] [--repo-url=URL [--ref=REF]] [--python=PYTHON] [--dry-run]" ;;
  esac
done
require name zone project
[[ $extras =~ ^[A-Za-z0-9_,-]*$ ]] || die "--extras must be comma-separated extra names, got '$extras'"
[[ $python =~ ^[A-Za-z0-9_./-]+$ ]] || die "--python must be a command name or path, got '$python'"
[[ $REPO_DIR =~ ^[A-Za-z0-9_./-]+$ ]] || die "REPO_DIR must be a plain relative path, got '$REPO_DIR'"
mapfile -t opts < <(where)

# Locally: the lock and the tree, staged under runs/ (git-ignored), copied to each worker's home.
cd "$here"
stage=runs/tpu-setup
if [[ -z $lock && -f requirements.lock ]]; then lock=requirements.lock; fi
if [[ -n $lock && ! -f $lock ]]; then die "--lock=$lock: no such file"; fi
if [[ -z $lock && ! -x .venv/bin/python && $DRY_RUN == 0 ]]; then
  die "no lock to install from: pass --lock=FILE, or run make first (its .venv is frozen into one)"
fi
run mkdir -p "$stage"
if [[ -n $lock ]]; then
  run cp "$lock" "$stage/jaxface-setup.lock"
else
  run_sh ".venv/bin/python -m pip freeze --exclude-editable > $stage/jaxface-setup.lock"
fi
files=("$stage/jaxface-setup.lock")
if [[ -z $repo_url ]]; then
  run_sh "git ls-files -z -co --exclude-standard | tar --null -T - -czf $stage/jaxface-setup.tar.gz"
  files+=("$stage/jaxface-setup.tar.gz")
fi
run gcloud compute tpus tpu-vm scp "${files[@]}" "$TPU_NAME:" "${opts[@]}" --worker=all

# On every worker: Python, the tree, the venv, the packages, one line to say so.
q() { quote "$1"; }  # a word inside the remote command line
if [[ -z $repo_url ]]; then
  get_tree="mkdir -p ~/$REPO_DIR && find ~/$REPO_DIR -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} + && tar -xzf ~/jaxface-setup.tar.gz -C ~/$REPO_DIR"
else
  get_tree="{ test -d ~/$REPO_DIR/.git || git clone -q $(q "$repo_url") ~/$REPO_DIR; } && git -C ~/$REPO_DIR fetch -q origin && git -C ~/$REPO_DIR checkout -q --detach $(q "$ref")"
fi
remote="set -e; command -v $python >/dev/null || { sudo apt-get update -qq && sudo apt-get install -y -qq $python $python-venv; }"
remote+="; $get_tree && cd ~/$REPO_DIR && { test -x .venv/bin/python || $python -m venv .venv; }"
remote+=" && jax_version=\$(sed -n 's/^jax==//p' ~/jaxface-setup.lock)"
remote+=" && .venv/bin/python -m pip install -q -U pip"
remote+=" && .venv/bin/python -m pip install -q -c ~/jaxface-setup.lock -e '.${extras:+[$extras]}' \"jax[tpu]\${jax_version:+==\$jax_version}\""
# The check imports only: touching the TPU on a slice waits for every worker, so it is left to run.sh.
remote+=" && .venv/bin/python -c 'import importlib.metadata as m, socket, jaxface; print(socket.gethostname(), \"jaxface ready: jax\", m.version(\"jax\"), \"libtpu\", m.version(\"libtpu\"))'"
ssh_all "$remote"
