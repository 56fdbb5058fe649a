"""Workdir paths through etils.epath: URLs keep their scheme, remote writes and appends, file modes."""
import json
import os
import stat

import numpy as np
import pytest
from epath_utils import bucket_on_disk
from jaxface import files


def test_url_workdirs_keep_their_scheme():
    path = files.as_path("gs://bucket/run") / "eval" / "metrics.json"
    assert os.fspath(path) == "gs://bucket/run/eval/metrics.json"
    assert not files.is_local(path) and files.is_local("/tmp/run") and files.is_local("relative/run")


def test_writes_and_appends_reach_a_bucket(tmp_path):
    with bucket_on_disk(tmp_path):
        written = files.write_json("gs://bucket/run/eval/metrics.json", {"auc": np.float32(0.5)})
        files.append_jsonl("gs://bucket/run/metrics.jsonl", {"step": 1})
        files.append_jsonl("gs://bucket/run/metrics.jsonl", {"step": 2})
        files.save_image("gs://bucket/run/grid.png", np.zeros((4, 4, 3), np.uint8))
        assert os.fspath(written) == "gs://bucket/run/eval/metrics.json"
        assert files.as_path("gs://bucket/run/grid.png").exists()
    local = tmp_path / "bucket" / "run"
    assert json.loads((local / "eval" / "metrics.json").read_text()) == {"auc": 0.5}
    assert [json.loads(l)["step"] for l in (local / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert (local / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not any(p.name.endswith(".tmp") for p in local.rglob("*"))


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = files.write_text(tmp_path / "shared" / "config.json", "{}")
        files.append_jsonl(tmp_path / "shared" / "metrics.jsonl", {"step": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "shared" / "metrics.jsonl").st_mode) == 0o644


def test_a_second_command_on_a_locked_workdir_refuses_and_a_stale_lock_is_taken_over(tmp_path):
    import socket
    import subprocess
    import sys

    import pytest

    with files.WorkdirLock(tmp_path):
        owner = (tmp_path / ".lock").read_text().strip()
        assert owner == f"{os.getpid()}@{socket.gethostname()}"
        with pytest.raises(files.WorkdirBusyError, match=f"in use by process {owner}"):
            with files.WorkdirLock(tmp_path):
                pass
    assert not (tmp_path / ".lock").exists()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".lock").write_text(f"{gone.stdout.strip()}@{socket.gethostname()}\n")  # its process ended
    with files.WorkdirLock(tmp_path) as lock:
        assert lock.held
    (tmp_path / ".lock").write_text("1@another-host\n")  # a shared disk: only its owner can tell
    with pytest.raises(files.WorkdirBusyError):
        with files.WorkdirLock(tmp_path):
            pass


def test_ctrl_c_inside_a_deferred_block_takes_effect_after_every_file_is_written(tmp_path, capsys):
    import os
    import signal

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(files.DeferredInterrupt):
        with files.ctrl_c_deferred(f"writing {tmp_path}"):
            files.write_text(tmp_path / "a.txt", "first")
            os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C between two files
            files.write_text(tmp_path / "b.txt", "second")
    assert (tmp_path / "a.txt").read_text() == "first" and (tmp_path / "b.txt").read_text() == "second"
    assert "Ctrl-C: finishing writing" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is before  # the previous handler is back
    assert issubclass(files.DeferredInterrupt, KeyboardInterrupt)  # still stops the command
