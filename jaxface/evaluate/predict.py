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
from jaxface.evaluate import faces as faces_lib
from jaxface.evaluate.metrics import sigmoid

CSV_COLUMNS = ("path", "label", "p_fake", "error")
CSV_FACE_COLUMNS = ("path", "face", "box", "label", "p_fake", "error")


SHIPPED_DETECTOR = "faces_wild"


def shipped_detector() -> pathlib.Path:
    """The exported detector inside the package (jaxface/assets/detectors/faces_wild: weights,
    calibration and MODEL_CARD.md), used by `jaxface predict` without --workdir."""
    folder = pathlib.Path(__file__).resolve().parents[1] / "assets" / "detectors" / SHIPPED_DETECTOR
    if not (folder / "model.safetensors").is_file():
        raise PredictError(f"the shipped detector is missing from this installation ({folder}); reinstall "
                           "jaxface, or pass --workdir=W of a detector you trained")
    return folder


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


def _load(path: str, preparer, finder=None):
    """-> (list of uint8 detector inputs, faces or None, None) or (None, None, reason); `preparer` is the
    model's `pipeline.image_preparer`, `finder` a `faces.FaceFinder` (one input per face) or None (the
    whole image)."""
    try:
        image = imageio.decode_image(path)
        if finder is None:
            return [preparer.map({"image": image})["image"]], None, None
        found = finder.find(image)
        return [preparer.map({"image": f.crop})["image"] for f in found], found, None
    except imageio.ImageDecodeError as err:
        return None, None, err.reason
    except Exception as err:  # noqa: BLE001 - one odd file must never stop a batch run
        return None, None, f"{type(err).__name__}: {err}"


def _threshold(setup) -> tuple[float, float, str]:
    """-> (threshold logit, temperature, the rule in words)."""
    cal = detection.read_calibration(setup.workdir, setup.step)
    if cal is None:
        return 0.0, 1.0, "p_fake >= 0.5 (no calibration for the latest checkpoint; run `jaxface evaluate`)"
    return float(cal["threshold_logit"]), detection.temperature_of(cal), (
        f"p_fake >= {cal['threshold']:.4f} (calibrated on the {cal.get('split', 'val')} split, {cal['method']}"
        f"; p_fake temperature-scaled, T = {detection.temperature_of(cal):.3f})")


def _own_model(setup):
    """(mesh, model state) for scoring this process's share alone: the setup's own in one process, or a
    copy on this process's devices when the setup spans several processes."""
    if jax.process_count() == 1 or all(d.process_index == jax.process_index() for d in setup.mesh.devices.flat):
        return setup.mesh, setup.model_state
    cached = getattr(setup, "_own_model", None)
    if cached is None:
        mesh = parallel.local_mesh()
        cached = (mesh, parallel.localize(setup.model_state, mesh))
        setup._own_model = cached
    return cached


def classify(setup, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Logits (N,) of uint8 (N, H, W, 3) images, in fixed-shape padded batches, on this process's
    devices (a multi-process predict scores each process's share apart)."""
    mesh, state = _own_model(setup)
    shards = parallel.data_parallel_size(mesh)
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
        with jax.set_mesh(mesh):
            out = setup.predict(state, parallel.host_to_global(host, mesh))
        logits.append(np.asarray(out["logit"], np.float64)[:n])
    return np.concatenate(logits) if logits else np.zeros(0)


def score_images(setup, images: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A detector's verdict on images already in memory (uint8 or float in [0, 1], any size), prepared as
    predict prepares a file (whole image): -> (p_fake (N,), called fake (N,) bool)."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = (np.clip(images, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    preparer = pipeline.image_preparer(setup.config.data)
    inputs = np.stack([preparer.map({"image": image})["image"] for image in images])
    logits = classify(setup, inputs, batch_size)
    threshold_logit, temperature, _ = _threshold(setup)
    return sigmoid(logits / temperature), logits >= threshold_logit


def write_csv(path, records: Sequence[dict]) -> pathlib.Path:
    """path,label,p_fake,error; with faces found, path,face,box,label,p_fake,error: one row for the image
    (face empty: the largest p_fake of its faces) and one per face (0, 1, ... and its box x0 y0 x1 y1)."""
    with_faces = any("faces" in r for r in records)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FACE_COLUMNS if with_faces else CSV_COLUMNS)

    def row(r, face="", box=""):
        p = "" if r["p_fake"] is None else f"{r['p_fake']:.6f}"
        cells = [r["path"], face, box] if with_faces else [r["path"]]
        return cells + [r["label"] or "", p, r.get("error") or ""]

    for r in records:
        writer.writerow(row(r))
        for j, face in enumerate(r.get("faces", ())):
            writer.writerow(row(dict(face, path=r["path"]), str(j), " ".join(f"{v:.1f}" for v in face["box"])))
    return files.write_text(path, buf.getvalue())


def _verdict(path: str, logit: float, threshold_logit: float, temperature: float = 1.0) -> dict:
    return {"path": path, "label": "fake" if logit >= threshold_logit else "real",
            "p_fake": float(sigmoid(logit / temperature)), "logit": float(logit), "error": None}


def predict_command(setup, paths: Sequence[str], output_csv=None, batch_size: int = 64,
                    faces: str | None = None) -> dict:
    """Classifies every image under PATHS with the detector of SETUP (`load_for_inference(W)`).

    faces: 'align' finds every face first (evaluate.faces): the record's p_fake is the largest of its
    faces', `faces` lists each (box, landmarks, p_fake, label), and an image without a face is labelled
    'no face found'; 'off' scores the whole image; None: what the detector was trained with.

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
    threshold_logit, temperature, rule = _threshold(setup)
    preparer = pipeline.image_preparer(setup.config.data)
    faces = faces_lib.default_mode(setup.config) if faces is None else faces_lib.check_mode(faces)
    finder = faces_lib.FaceFinder(setup.config.data) if faces == "align" else None
    every_item = collect_image_paths(paths)
    # A multi-process run: each process reads and scores items p, p+P, ...; the records are gathered.
    items = parallel.process_share(every_item)
    records: list[dict] = []
    chunk = max(int(batch_size), 1) * 4  # decode a few batches ahead, keep memory bounded
    workers = 1 if finder is not None else 2  # the face detector is not shared between threads
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(items), chunk):
            part = items[start:start + chunk]
            loaded = list(pool.map(lambda it: (None, None, it[1]) if it[1] else _load(it[0], preparer, finder),
                                   part))
            inputs = [x for images, _, _ in loaded if images for x in images]
            logits = iter(classify(setup, np.stack(inputs), int(batch_size)) if inputs else ())
            for (path, _), (images, found, error) in zip(part, loaded):
                if images is None:
                    records.append({"path": path, "label": None, "p_fake": None, "error": error})
                    continue
                scores = [float(next(logits)) for _ in images]
                if found is None:
                    records.append(_verdict(path, scores[0], threshold_logit, temperature))
                    continue
                record = _verdict(path, max(scores), threshold_logit, temperature) if scores else \
                    {"path": path, "label": faces_lib.NO_FACE, "p_fake": None, "error": None}
                record["faces"] = [dict(_verdict(path, z, threshold_logit, temperature), box=[round(v, 1) for v in f.box],
                                        landmarks=np.round(f.landmarks, 1).tolist(), face_score=round(f.score, 4))
                                   for z, f in zip(scores, found)]
                for face in record["faces"]:
                    del face["path"], face["error"]
                records.append(record)
    if jax.process_count() > 1:
        shares = parallel.gather_objects(records)
        records = [shares[i % len(shares)][i // len(shares)] for i in range(len(every_item))]
    outputs = [write_csv(output_csv, records)] if output_csv else []
    parallel.barrier("predictions written")
    return {"records": records, "outputs": outputs, "threshold": float(sigmoid(threshold_logit / temperature)),
            "rule": rule}


def evaluate_folder_with_faces(setup, root, out_dir) -> dict:
    """`jaxface evaluate --data_root=ROOT --faces=align`: every face of every image of a ROOT/real +
    ROOT/fake folder found and scored, an image's logit the largest of its faces'; images without a face
    (and unreadable ones) are counted in the metrics (`num_no_face`, `num_unreadable`), not scored.
    The same report as `detection.evaluate_on_folder` (no robustness suite: it perturbs whole images)."""
    from jaxface.data import sources

    root = pathlib.Path(root)
    source = sources.RealFakeFolder(root, split="all")
    calibration = detection.read_calibration(setup.workdir, setup.step) or detection.calibrate(setup)
    records = predict_command(setup, source.paths, faces="align")["records"]
    scored = [i for i, r in enumerate(records) if r.get("logit") is not None]
    if not scored:
        raise PredictError(f"no face was found in any readable image of {root}")
    outputs = {"logit": np.array([records[i]["logit"] for i in scored]),
               "label": source.labels[scored], "generator_id": source.generator_ids[scored],
               "index": np.array(scored)}
    extra = {"dataset": str(root), "trained_on": str(setup.workdir), "faces": "align",
             "num_no_face": sum(r["label"] == faces_lib.NO_FACE for r in records),
             "num_unreadable": sum(r["error"] is not None for r in records)}
    return detection.evaluate_outputs(
        setup, outputs, out_dir, generator_names=source.generator_names, calibration=calibration,
        title=f"{root.name} (cross-dataset, faces aligned)", split="all",
        keys=[records[i]["path"] for i in scored], extra=extra)
