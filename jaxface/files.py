"""Every file a command writes goes through here: only process 0 writes, and writes are atomic.

Paths are `etils.epath` paths (`as_path`), so a workdir may be a local folder or any URL the installed
file systems serve (`gs://bucket/run` on a TPU VM): `pathlib.Path("gs://b/x")` would silently become
the local path "gs:/b/x". Local writes are atomic (temporary file + rename) so that an interrupted run
never leaves a half-written JSON, PNG or CSV where a complete one stood; object stores replace an
object whole, so remote paths are written directly. Files get the usual permissions (0666 less the
umask), readable by teammates on a shared workdir.
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import pathlib
import signal
import socket
import sys
import tempfile
import threading
from typing import Any

import numpy as np
from etils import epath

from jaxface.parallel import is_main_process


def as_path(path: str | os.PathLike) -> epath.Path:
    """A local path or a URL (gs://, s3://, ...) as an epath.Path; equal to pathlib.Path for local ones."""
    return epath.Path(path)


def is_local(path: str | os.PathLike) -> bool:
    return "://" not in os.fspath(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _to_jsonable(obj: Any):
    if isinstance(obj, dict):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _to_jsonable(obj.tolist())
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, pathlib.PurePath):
        return str(obj)
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):  # jax.Array
        return _to_jsonable(np.asarray(obj))
    return obj


def write_bytes(path: str | os.PathLike, data: bytes) -> epath.Path:
    path = as_path(path)
    if not is_main_process():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if not is_local(path):
        path.write_bytes(data)
        return path
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; the result should not be private
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _nearest_existing(directory) -> pathlib.Path:
    probe = pathlib.Path(os.fspath(directory)).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def writable(directory) -> bool:
    """Could this local folder be created (where missing) and written to?"""
    return os.access(_nearest_existing(directory), os.W_OK | os.X_OK)


def check_writable(directory) -> None:
    """Fails at once, with the OS's reason, when DIRECTORY could not be created or written (a read-only
    file system, no permission), so that a command finds out before its work instead of after it.
    Creates nothing; URL folders are not checked (their writes report their own errors)."""
    directory = as_path(directory)
    if not is_local(directory) or writable(directory):
        return
    read_only = bool(os.statvfs(_nearest_existing(directory)).f_flag & os.ST_RDONLY)
    code = errno.EROFS if read_only else errno.EACCES
    raise OSError(code, os.strerror(code), str(directory))


def write_text(path, text: str) -> epath.Path:
    return write_bytes(path, text.encode("utf-8"))


class DeferredInterrupt(KeyboardInterrupt):
    """A Ctrl-C that arrived inside ctrl_c_deferred, raised once its block had finished."""


@contextlib.contextmanager
def ctrl_c_deferred(what: str):
    """Ctrl-C inside the block takes effect when it ends: a set of files written together (a fitted store
    and its metadata) is never left half old, half new. One line says so; a no-op off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []

    def note(signum, frame):
        if not received:
            print(f"Ctrl-C: finishing {what} first", file=sys.stderr, flush=True)
        received.append(signum)

    previous = signal.signal(signal.SIGINT, note)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise DeferredInterrupt


def write_json(path, obj: Any) -> epath.Path:
    return write_text(path, json.dumps(_to_jsonable(obj), indent=2, allow_nan=True) + "\n")


def append_jsonl(path, obj: Any) -> None:
    """Appends one line; a line is small, so an append is effectively atomic."""
    if not is_main_process():
        return
    path = as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(_to_jsonable(obj)) + "\n"
    if not is_local(path):  # object stores cannot append: the (small) log is rewritten whole
        path.write_text((path.read_text() if path.exists() else "") + line)
        return
    with path.open("a") as f:
        f.write(line)


def save_figure(path, fig) -> epath.Path:
    """A matplotlib figure -> PNG, atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return write_bytes(path, buf.getvalue())


def save_image(path, image) -> epath.Path:
    """uint8 or float [0, 1] HWC -> PNG, atomically."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return write_bytes(path, buf.getvalue())


def image_grid(images, cols: int | None = None, pad: int = 2) -> np.ndarray:
    """(N, H, W, 3) float [0, 1] or uint8 -> one float grid image with white padding."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    n, h, w, c = images.shape
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, c), np.float32)
    for i in range(n):
        r, q = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        grid[y : y + h, x : x + w] = images[i]
    return grid


class WorkdirBusyError(ValueError):
    """Another live process holds the workdir's lock (a user mistake: two commands on one workdir)."""


class WorkdirLock:
    """WORKDIR/.lock, created exclusively and holding "pid@host", for as long as a command writes there:
    a second command on the same workdir refuses at once instead of both writing checkpoints. A lock
    left by a process that no longer runs (same host) is taken over. Only process 0 locks; URL workdirs
    (object stores have no exclusive create) are not locked."""

    NAME = ".lock"

    def __init__(self, workdir):
        self.path = as_path(workdir) / self.NAME
        self.held = False

    def __enter__(self):
        if not is_main_process() or not is_local(self.path):
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        owner = f"{os.getpid()}@{socket.gethostname()}"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                holder = self.path.read_text().strip() if self.path.exists() else ""
                if self._stale(holder, socket.gethostname()):
                    self.path.unlink(missing_ok=True)
                    continue
                raise WorkdirBusyError(
                    f"{self.path.parent} is in use by process {holder or '?'} (its lock is {self.path}); "
                    "wait for it to finish, or use another --workdir. If that process is gone, delete the lock"
                ) from None
            with os.fdopen(fd, "w") as f:
                f.write(owner + "\n")
            self.held = True
            return self
        raise WorkdirBusyError(f"could not take the lock {self.path}")

    @staticmethod
    def _stale(holder: str, host: str) -> bool:
        pid, _, owner_host = holder.partition("@")
        if owner_host != host or not pid.isdigit():
            return False  # another machine's lock (a shared disk): only its owner can tell
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def __exit__(self, *exc):
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
