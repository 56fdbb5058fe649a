"""`jaxface predict --workdir=W PATH...`: real/fake for image files and folders with a trained detector.

Each PATH is a file (used whatever its extension) or a folder (searched recursively for image files,
hidden entries skipped, sorted). Images are decoded on the host (two threads), centre-square cropped and
resized to the model's input size exactly as in training, and classified in jitted batches of a fixed
shape (the last batch padded). One record per image, in input order:

    {"path": ..., "label": "real" | "fake", "p_fake": 0.93, "error": null}

A file that cannot be read gives {"label": null, "p_fake": null, "error": "<reason>"} and the run goes on
(as do a missing path and a folder without images). The label uses the threshold calibrated on the
validation split when W/calibration.json matches the latest checkpoint (written by `jaxface evaluate`),
otherwise p_fake >= 0.5. `output_csv` also writes path,label,p_fake,error (atomically).
"""
from __future__ import annotations

import concurrent.futures
import csv
import io
import math
import os
import pathlib
from typing import Iterable, Sequence

import jax
import numpy as np

from jaxface import files, parallel
from jaxface.data import imageio, pipeline
from jaxface.data.sources import IMAGE_EXTENSIONS
from jaxface.evaluate import detection
from jaxface.evaluate.metrics import sigmoid

CSV_COLUMNS = ("path", "label", "p_fake", "error")


class PredictError(ValueError):
    """A predict request that cannot run at all (no paths, bad batch size)."""


def collect_image_paths(paths: Iterable[str | os.PathLike]) -> list[tuple[str, str | None]]:
    """(path, None) for every image to classify, (path, reason) for inputs that cannot be."""
    out: list[tuple[str, str | None]] = []
    for raw in paths:
        path = pathlib.Path(os.path.expanduser(str(raw)))
        if path.is_dir():
            found = []
            for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in filenames:
                    if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                        found.append(str(pathlib.Path(dirpath) / name))
            if found:
                out += [(p, None) for p in sorted(found)]
            else:
                out.append((str(path), f"folder holds no image files ({', '.join(IMAGE_EXTENSIONS)})"))
        elif path.exists():
            out.append((str(path), None))
        else:
            out.append((str(path), "no such file or folder"))
    return out


def _load(path: str, size: int):
    """-> (uint8 (size, size, 3) image, None) or (None, reason)."""
    try:
        image = imageio.decode_image(path)
        return pipeline.DecodeAndResize(size, strict=True).map({"image": image})["image"], None
    except imageio.ImageDecodeError as err:
        return None, err.reason
    except Exception as err:  # noqa: BLE001 - one odd file must never stop a batch run
        return None, f"{type(err).__name__}: {err}"


def _threshold(setup) -> tuple[float, str]:
    cal = detection.read_calibration(setup.workdir, setup.step)
    if cal is None:
        return 0.0, "p_fake >= 0.5 (no calibration for the latest checkpoint; run `jaxface evaluate`)"
    return float(cal["threshold_logit"]), (f"p_fake >= {cal['threshold']:.4f} (calibrated on the "
                                           f"{cal.get('split', 'val')} split, {cal['method']})")


def classify(setup, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Logits (N,) of uint8 (N, H, W, 3) images, in fixed-shape padded batches."""
    shards = parallel.data_parallel_size(setup.mesh)
    batch = int(math.ceil(batch_size / shards) * shards)
    logits = []
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        n = len(chunk)
        host = {
            "image": np.zeros((batch,) + chunk.shape[1:], np.float32),
            "label": np.zeros(batch, np.int32),
            "generator_id": np.zeros(batch, np.int32),
            "index": np.arange(start, start + batch, dtype=np.int32),
            "valid": np.arange(batch) < n,
        }
        host["image"][:n] = chunk.astype(np.float32) / 255.0
        with jax.set_mesh(setup.mesh):
            out = setup.predict(setup.model_state, parallel.host_to_global(host, setup.mesh))
        logits.append(np.asarray(out["logit"], np.float64)[:n])
    return np.concatenate(logits) if logits else np.zeros(0)


def write_csv(path, records: Sequence[dict]) -> pathlib.Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in records:
        writer.writerow([r["path"], r["label"] or "", "" if r["p_fake"] is None else f"{r['p_fake']:.6f}",
                         r["error"] or ""])
    return files.write_text(path, buf.getvalue())


def predict_command(setup, paths: Sequence[str], output_csv=None, batch_size: int = 64) -> dict:
    """Classifies every image under PATHS with the detector of SETUP (`load_for_inference(W)`).

    -> dict(records=[{path, label, p_fake, error}], outputs=[written files], threshold=p, rule=text)
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise PredictError("give at least one image file or folder to classify")
    if int(batch_size) < 1:
        raise PredictError(f"batch_size must be at least 1, got {batch_size}")
    if setup.task.name != "deepfake":
        raise PredictError(f"{setup.workdir} holds a {setup.task.name!r} model, not a deepfake detector")
    threshold_logit, rule = _threshold(setup)
    size = int(setup.config.data.image_size)
    items = collect_image_paths(paths)
    records: list[dict] = []
    chunk = max(int(batch_size), 1) * 4  # decode a few batches ahead, keep memory bounded
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        for start in range(0, len(items), chunk):
            part = items[start:start + chunk]
            loaded = list(pool.map(lambda it: (None, it[1]) if it[1] else _load(it[0], size), part))
            ok = [i for i, (image, _) in enumerate(loaded) if image is not None]
            logits = classify(setup, np.stack([loaded[i][0] for i in ok]), int(batch_size)) \
                if ok else np.zeros(0)
            by_item = dict(zip(ok, logits))
            for i, (path, _) in enumerate(part):
                if i in by_item:
                    z = by_item[i]
                    records.append({"path": path, "label": "fake" if z >= threshold_logit else "real",
                                    "p_fake": float(sigmoid(z)), "error": None})
                else:
                    records.append({"path": path, "label": None, "p_fake": None, "error": loaded[i][1]})
    outputs = [write_csv(output_csv, records)] if output_csv else []
    return {"records": records, "outputs": outputs, "threshold": float(sigmoid(threshold_logit)),
            "rule": rule}
