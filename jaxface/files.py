"""Every file a command writes goes through here: only process 0 writes, and writes are atomic.

Atomic (temporary file + rename) so that an interrupted run never leaves a half-written JSON, PNG or
CSV where a complete one stood.
"""
from __future__ import annotations

import io
import json
import os
import pathlib
import tempfile
from typing import Any

import numpy as np

from jaxface.parallel import is_main_process


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
    if isinstance(obj, pathlib.Path):
        return str(obj)
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):  # jax.Array
        return _to_jsonable(np.asarray(obj))
    return obj


def write_bytes(path: str | os.PathLike, data: bytes) -> pathlib.Path:
    path = pathlib.Path(path)
    if not is_main_process():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text(path, text: str) -> pathlib.Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path, obj: Any) -> pathlib.Path:
    return write_text(path, json.dumps(_to_jsonable(obj), indent=2, allow_nan=True) + "\n")


def append_jsonl(path, obj: Any) -> None:
    """Appends one line; a line is small, so an append is effectively atomic."""
    if not is_main_process():
        return
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(_to_jsonable(obj)) + "\n")


def save_figure(path, fig) -> pathlib.Path:
    """A matplotlib figure -> PNG, atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return write_bytes(path, buf.getvalue())


def save_image(path, image) -> pathlib.Path:
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
