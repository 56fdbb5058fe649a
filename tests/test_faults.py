"""Faults a user meets, injected deterministically: a full disk during checkpointing, a read-only workdir,
Ctrl-C inside evaluate and fit-cgmm. Each asserts the exit code, the one-line message and what is on disk."""
import errno
import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from jaxface import faults

pytestmark = pytest.mark.slow  # all but the first test run the CLI in subprocesses

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(pathlib.Path(__file__).parent))
from cgmm_test_utils import GEN_OVERRIDES  # noqa: E402

TINY = ["--config=configs/attributes/synthfaces_tiny.py", "--config.model.norm=none",
        "--config.model.width=0.0625", "--config.model.input_size=32", "--config.data.image_size=32",
        "--config.batch_size=16", "--config.eval_every_steps=0", "--config.log_every_steps=2",
        "--config.checkpoint_every_steps=2", "--config.data.num_train=64", "--config.data.num_val=16",
        "--config.data.num_test=32"]


def _jaxface(*args):
    return [sys.executable, "-m", "jaxface", *args]


def _run(args, *, faults_spec="", timeout=300):
    env = dict(os.environ)
    env.pop(faults.ENV, None)
    if faults_spec:
        env[faults.ENV] = faults_spec
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def _steps(workdir) -> list[int]:
    return sorted(int(p.name) for p in (pathlib.Path(workdir) / "checkpoints").iterdir() if p.name.isdigit())


def _digests(folder) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(pathlib.Path(folder).rglob("*")) if p.is_file()}


def _private_mounts_work() -> bool:
    """A user namespace with its own mounts (unshare -rm): a small tmpfs and a read-only bind mount."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d"],
                           capture_output=True)
    return probe.returncode == 0


# ------------------------------------------------------------------------------------------ the hook
def test_fault_specs_are_checked_and_fire_at_their_count(monkeypatch):
    for spec, message in (("train_step=SIGINT", "is not point@count=action"),
                          ("train_stpe@1=SIGINT", "unknown point 'train_stpe'; valid points: train_step"),
                          ("train_step@1=SIGHUP", "unknown action 'SIGHUP'; valid actions: SIGINT"),
                          ("train_step@0=SIGINT", "must be a positive integer")):
        with pytest.raises(faults.FaultSpecError, match=message):
            faults.parse(spec)
    monkeypatch.setenv(faults.ENV, "eval_batch@2=ENOSPC,fit_batch@1=EROFS")
    faults.hit("eval_batch")  # the first pass: nothing
    faults.hit("train_step")  # not planned
    with pytest.raises(OSError) as caught:
        faults.hit("eval_batch")
    assert caught.value.errno == errno.ENOSPC and "eval_batch #2" in str(caught.value)
    faults.hit("eval_batch")  # the third: nothing
    with pytest.raises(OSError, match="Read-only"):
        faults.hit("fit_batch")
    monkeypatch.delenv(faults.ENV)
    faults.hit("eval_batch")  # unset: a no-op


# ------------------------------------------------------------------------------------- a full disk
def test_a_disk_that_fills_up_keeps_the_saved_checkpoints_and_says_so_in_one_line(tmp_path):
    """On a 4 MiB tmpfs (a private mount) two checkpoints of the tiny model fit and the third does not:
    exit 1, one line naming the intact step, and a rerun with room resumes from it. (Where private mounts
    are not allowed, the next test injects the failure instead.)"""
    if not _private_mounts_work():
        pytest.skip("no private mounts (unshare -rm) here: test_an_injected_write_failure_is_one_line_too")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    train = _jaxface("train", *TINY, "--config.num_train_steps=12")
    mount = tmp_path / "small_disk"
    mount.mkdir()
    script = (f'mount -t tmpfs -o size=4000k tmpfs "{mount}" && "$@" --workdir="{mount}/run" '
              f'2> "{out_dir}/stderr"; echo $? > "{out_dir}/rc"; cp -a "{mount}/run" "{out_dir}/run"')
    subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", *train], cwd=REPO, timeout=300,
                   capture_output=True, env={k: v for k, v in os.environ.items() if k != faults.ENV})
    rc, stderr = int((out_dir / "rc").read_text()), (out_dir / "stderr").read_text()
    assert rc == 1, stderr
    lines = _error_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    # Where the disk runs out depends on the file system's block accounting; what must hold does not.
    found = re.search(r"not enough disk space for checkpoint step (\d+) in .*: it needs about [\d.]+ MiB and "
                      r"[\d.]+ MiB are free\. The checkpoints already saved are intact \(latest: step (\d+)\)",
                      lines[0])
    assert found, lines[0]
    failed, latest = int(found.group(1)), int(found.group(2))
    assert latest == failed - 2 >= 2
    assert _steps(out_dir / "run") == list(range(2, latest + 1, 2))[-3:]
    resumed = _run(train + [f"--workdir={out_dir / 'run'}"])
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from checkpoint step {latest}" in resumed.stdout
    assert _steps(out_dir / "run")[-1] == 12


def test_an_injected_write_failure_is_one_line_too(tmp_path):
    done = _run(_jaxface("train", *TINY, "--config.num_train_steps=4", f"--workdir={tmp_path / 'run'}"),
                faults_spec="checkpoint_save@2=ENOSPC")
    assert done.returncode == 1
    lines = _error_lines(done.stderr)
    assert len(lines) == 1 and "could not write checkpoint step 4" in lines[0], done.stderr
    assert "latest: step 2" in lines[0]
    assert _steps(tmp_path / "run") == [2]


# ------------------------------------------------------------------------------ a read-only workdir
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("faults") / "classifier"
    done = _run(_jaxface("train", *TINY, "--config.num_train_steps=2", f"--workdir={workdir}"))
    assert done.returncode == 0, done.stderr
    return workdir


def test_a_read_only_workdir_is_one_line_and_evaluate_can_write_elsewhere(trained, tmp_path):
    """A teammate's run on a shared disk: train and evaluate into it fail at once with the reason;
    evaluate --output_dir writes its report elsewhere."""
    report = tmp_path / "report"
    commands = {
        "train": _jaxface("train", *TINY, "--config.num_train_steps=4", "--workdir=RO"),
        "evaluate": _jaxface("evaluate", "--workdir=RO"),
        "evaluate_elsewhere": _jaxface("evaluate", "--workdir=RO", f"--output_dir={report}"),
    }
    results = {}
    if os.geteuid() != 0:  # permissions bind a normal user
        view = tmp_path / "view"
        shutil.copytree(trained, view)
        for p in [view, *view.rglob("*")]:
            p.chmod(p.stat().st_mode & ~0o222)
        try:
            for name, args in commands.items():
                results[name] = _run([a.replace("RO", str(view)) for a in args])
        finally:
            for p in [view, *view.rglob("*")]:
                p.chmod(p.stat().st_mode | 0o200)
        reason = "Permission denied"
    elif _private_mounts_work():  # root ignores permissions: a read-only bind mount instead
        view = tmp_path / "view"
        view.mkdir()
        for name, args in commands.items():
            script = (f'mount --bind "{trained}" "{view}" && mount -o remount,bind,ro "{view}" && "$@" '
                      f'> "{tmp_path}/{name}.out" 2> "{tmp_path}/{name}.err"; echo $? > "{tmp_path}/{name}.rc"')
            subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh",
                            *[a.replace("RO", str(view)) for a in args]], cwd=REPO, timeout=300)
            results[name] = subprocess.CompletedProcess(
                args, int((tmp_path / f"{name}.rc").read_text()), (tmp_path / f"{name}.out").read_text(),
                (tmp_path / f"{name}.err").read_text())
        reason = "Read-only file system"
    else:
        pytest.skip("running as root without private mounts: no way to make a folder read-only")
    for name in ("train", "evaluate"):
        out = results[name]
        assert out.returncode == 1, (name, out.stderr)
        lines = _error_lines(out.stderr)
        assert len(lines) == 1 and lines[0].startswith(f"error: cannot write {view}"), (name, out.stderr)
        assert reason in lines[0]
    assert results["evaluate_elsewhere"].returncode == 0, results["evaluate_elsewhere"].stderr
    assert (report / "metrics.json").is_file() and not (trained / "eval").exists()


# ------------------------------------------------------------------------- Ctrl-C inside commands
def test_ctrl_c_during_evaluate_exits_130_and_keeps_the_previous_report(trained, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    first = _run(_jaxface("evaluate", f"--workdir={workdir}"))
    assert first.returncode == 0, first.stderr
    before = _digests(workdir / "eval")
    cut = _run(_jaxface("evaluate", f"--workdir={workdir}", "--split=val"), faults_spec="eval_batch@1=SIGINT")
    assert cut.returncode == 130, cut.stderr
    lines = _error_lines(cut.stderr)
    assert lines == ["error: interrupted (Ctrl-C); jaxface evaluate stopped before it finished; every file it "
                     "writes is written whole, so none is half-written"], cut.stderr
    assert _digests(workdir / "eval") == before


def _fit_cgmm(workdir):
    return _jaxface("fit-cgmm", "--config=configs/generate/synthfaces_tiny.py", f"--workdir={workdir}",
                    *[f"--config.{k}={v}" for k, v in GEN_OVERRIDES.items()])


@pytest.fixture(scope="module")
def fitted(trained, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("faults_fitted") / "run"
    shutil.copytree(trained, workdir)
    done = _run(_fit_cgmm(workdir))
    assert done.returncode == 0, done.stderr
    return workdir


def test_ctrl_c_during_fit_cgmm_leaves_the_fitted_store_as_it_was(fitted, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(fitted, workdir)
    before = _digests(workdir / "cgmm")
    cut = _run(_fit_cgmm(workdir), faults_spec="fit_batch@1=SIGINT")
    assert cut.returncode == 130, cut.stderr
    assert _error_lines(cut.stderr) == [
        f"error: interrupted; {workdir / 'cgmm'}: nothing was written; a fitted model already there is unchanged"]
    assert _digests(workdir / "cgmm") == before


@pytest.mark.parametrize("sig, status", [("SIGINT", 130), ("SIGTERM", -15)])
def test_a_sweep_stopped_after_its_first_batch_keeps_it_and_a_rerun_renders_only_the_rest(
        fitted, tmp_path, sig, status):
    """Ctrl-C: exit 130 and one line. SIGTERM (the default action, no handler): the process ends at once,
    yet the batch it finished is on disk, written whole. Either way the same command then finishes the
    sweep and reuses that image."""
    workdir = tmp_path / "run"
    shutil.copytree(fitted, workdir)
    sweep = tmp_path / "sweep.json"
    sweep.write_text('[{"attributes": "Male", "seeds": [0, 1, 2], "settings": {"max_batch": 1}, "steps": 2}]')
    command = _jaxface("generate", f"--workdir={workdir}", f"--sweep={sweep}", "--name=cut")
    partial = workdir / "generate" / "cut" / "partial"
    cut = _run(command, faults_spec=f"sweep_batch@1={sig}")
    assert cut.returncode == status, cut.stderr
    assert "Traceback" not in cut.stderr
    if sig == "SIGINT":
        assert _error_lines(cut.stderr)[-1] == (
            f"error: interrupted: 1 of 3 image(s) are kept in {partial}; run the same command again to "
            "render the rest"), cut.stderr
    assert len(list(partial.glob("*.npz"))) == 1
    assert not (workdir / "generate" / "cut" / "results.json").exists()
    rerun = _run(command)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming: 1 of 3 image(s) already in {partial}" in rerun.stdout
    assert (workdir / "generate" / "cut" / "results.json").is_file() and not partial.exists()
