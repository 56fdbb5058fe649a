"""The robustness suite: the detector on perturbed copies of an evaluation split.

The ICIAP 2021 challenge's test protocol perturbs the images themselves (rotation, mirroring, Gaussian
filtering, scaling, cropping, JPEG re-compression, each at several strengths) before the detector
sees them. Here the split's images are decoded once (`materialize`, at their stored resolution, shrunk
only when their long side exceeds `max_side`), each condition perturbs them on the host with
`augment.perturb` inside a source wrapper (`PerturbedSource`), and the ordinary pipeline then resizes
them to the model's input size, batches and shards them, exactly as for clean evaluation.

Results: {"num_examples", "threshold", "clean": {...}, "perturbations": {kind: [{"strength", "auc",
"accuracy", "ap", "eer"}, ...]}}, the accuracy at the threshold calibrated on the clean validation split.
"""
from __future__ import annotations

import concurrent.futures
import io
import math
import pathlib
from typing import Any, Mapping

import numpy as np

from jaxface import files
from jaxface.data import augment as augment_lib
from jaxface.data import imageio
from jaxface.evaluate.evaluators import predict_source
from jaxface.evaluate.metrics import detection_metrics, format_metric, sigmoid


class RobustnessError(ValueError):
    """A robustness suite that names unknown perturbations or bad strengths."""


def _label_arrays(source) -> tuple[np.ndarray, np.ndarray]:
    """(labels, generator ids) of every record, without decoding images where the source allows."""
    labels = getattr(source, "labels", None)
    gids = getattr(source, "generator_ids", None)
    if labels is not None and gids is not None and len(labels) == len(source):
        return np.asarray(labels, np.int64), np.asarray(gids, np.int64)
    records = [source[i] for i in range(len(source))]
    return (np.array([int(r["label"]) for r in records], np.int64),
            np.array([int(r.get("generator_id", r["label"])) for r in records], np.int64))


def stratified_subsample(labels: np.ndarray, generator_ids: np.ndarray, max_examples: int,
                         seed: int) -> np.ndarray:
    """Sorted indices of at most `max_examples` records, each (label, generator) group kept in
    proportion (at least one record of every group); all indices when there are few enough."""
    n = len(labels)
    if n <= max_examples:
        return np.arange(n)
    rng = np.random.default_rng([seed, 0x50B5])
    keys = labels * 1_000_003 + generator_ids
    groups, counts = np.unique(keys, return_counts=True)
    quota = counts * max_examples / n
    take = np.minimum(np.maximum(1, np.floor(quota).astype(np.int64)), counts)
    # Largest remainders fill up to exactly max_examples (or trim the largest groups back to it).
    for g in np.argsort(-(quota - np.floor(quota)), kind="stable"):
        if take.sum() >= max_examples:
            break
        take[g] += int(take[g] < counts[g])
    while take.sum() > max_examples and take.max() > 1:
        take[int(np.argmax(take))] -= 1
    chosen = [rng.permutation(np.flatnonzero(keys == key))[:t] for key, t in zip(groups, take)]
    return np.sort(np.concatenate(chosen))


def _shrink(image: np.ndarray, max_side: int) -> np.ndarray:
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    return imageio.resize(image, max(1, round(h * scale)), max(1, round(w * scale)))


def materialize(source, *, max_examples: int = 500, max_side: int = 512, seed: int = 0) -> list[dict]:
    """The (sub-sampled) records of `source` with decoded uint8 images; unreadable files are left out."""
    labels, gids = _label_arrays(source)
    indices = stratified_subsample(labels, gids, int(max_examples), seed)

    def load(records: list[dict]) -> list[dict]:
        out = []
        for r in records:
            try:
                image = np.asarray(r["image"], np.uint8) if "image" in r else imageio.decode_image(r["path"])
            except imageio.ImageDecodeError:
                continue
            out.append({"image": _shrink(image, max_side), "label": np.int32(r["label"]),
                        "generator_id": np.int32(r.get("generator_id", r["label"])),
                        "index": np.int64(r.get("index", 0))})
        return out

    chunks = [indices[i:i + 64] for i in range(0, len(indices), 64)]
    batched = getattr(source, "_getitems", None)  # grain's batched read (renders synthetic faces together)

    def read(chunk):
        records = batched([int(i) for i in chunk]) if batched else [source[int(i)] for i in chunk]
        return load(records)

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        return [r for part in pool.map(read, chunks) for r in part]


class PerturbedSource:
    """Random-access source over decoded records, each image passed through `perturb(kind, strength)`
    (None: unchanged). Picklable; the pipeline resizes the perturbed image to the model size."""

    def __init__(self, records: list[dict], kind: str | None = None, strength: float = 0.0):
        if kind is not None and kind not in augment_lib.PERTURBATION_KINDS:
            raise RobustnessError(
                f"unknown perturbation {kind!r}; valid kinds: {', '.join(augment_lib.PERTURBATION_KINDS)}")
        self.records = records
        self.kind = kind
        self.strength = float(strength)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index) -> dict:
        record = dict(self.records[int(index)])
        if self.kind is not None:
            record["image"] = augment_lib.perturb(record["image"], self.kind, self.strength)
        return record

    def __repr__(self) -> str:
        return f"PerturbedSource(n={len(self)}, kind={self.kind!r}, strength={self.strength})"


def check_suite(suite: Mapping[str, Any] | None) -> dict[str, list[float]]:
    """A suite {kind: [strengths]} (default: augment.ROBUSTNESS_SUITE) validated up front."""
    if suite is None:
        suite = augment_lib.ROBUSTNESS_SUITE
    suite = suite.to_dict() if hasattr(suite, "to_dict") else dict(suite)
    out = {}
    for kind, strengths in suite.items():
        if kind not in augment_lib.PERTURBATION_KINDS:
            raise RobustnessError(
                f"unknown perturbation {kind!r} in the robustness suite; valid kinds: "
                f"{', '.join(augment_lib.PERTURBATION_KINDS)}")
        strengths = [strengths] if isinstance(strengths, (int, float)) else list(strengths)
        probe = np.zeros((8, 8, 3), np.uint8)
        for s in strengths:
            try:
                augment_lib.perturb(probe, kind, float(s))
            except augment_lib.AugmentError as err:
                raise RobustnessError(f"robustness suite {kind}={s}: {err}") from None
        out[kind] = [float(s) for s in strengths]
    return out


def _scores(outputs: dict, threshold_logit: float) -> dict:
    m = detection_metrics(outputs["label"], outputs["logit"], threshold_logit)
    return {"auc": m["auc"], "accuracy": m["accuracy"], "ap": m["ap"], "eer": m["eer"],
            "balanced_accuracy": m["balanced_accuracy"], "n": m["num_examples"]}


def run_suite(setup, source, threshold_logit: float, *, suite=None, max_examples: int = 500,
              max_side: int = 512, seed: int = 0, records: list[dict] | None = None) -> dict:
    """Evaluates the detector of `setup` on every (kind, strength) of the suite applied to `source`."""
    suite = check_suite(suite)
    records = records if records is not None else materialize(
        source, max_examples=max_examples, max_side=max_side, seed=seed)
    if not records:
        raise RobustnessError(f"no readable image in {source!r} for the robustness suite")
    clean = _scores(predict_source(setup, PerturbedSource(records)), threshold_logit)
    results = {}
    for kind, strengths in suite.items():
        rows = []
        for strength in strengths:
            outputs = predict_source(setup, PerturbedSource(records, kind, strength))
            rows.append({"strength": strength, **_scores(outputs, threshold_logit)})
        results[kind] = rows
    return {"num_examples": len(records), "threshold_logit": float(threshold_logit),
            "threshold": float(sigmoid(threshold_logit)), "clean": clean, "perturbations": results}


_UNITS = {"rotation": "degrees", "mirror": "flip", "gaussian_blur": "sigma (px)",
          "scaling": "scale factor", "crop": "fraction kept", "jpeg": "quality"}


def table(results: dict) -> str:
    clean = results["clean"]
    lines = [f"robustness (n={results['num_examples']}, threshold p>={results['threshold']:.3f}): clean AUC "
             f"{format_metric(clean['auc'])} accuracy {format_metric(clean['accuracy'])}",
             f"{'perturbation':14s} {'strength':>8s} {'AUC':>6s} {'accuracy':>8s} {'AP':>6s} {'EER':>6s}"]
    for kind, rows in results["perturbations"].items():
        for r in rows:
            lines.append(f"{kind:14s} {r['strength']:8g} {format_metric(r['auc']):>6s} {format_metric(r['accuracy']):>8s} "
                         f"{format_metric(r['ap']):>6s} {format_metric(r['eer']):>6s}")
    return "\n".join(lines)


def write_outputs(out_dir, results: dict, *, title: str = "") -> list[pathlib.Path]:
    """robustness.csv and robustness.png (AUC and accuracy against strength, one panel per kind)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = files.as_path(out_dir)
    buf = io.StringIO()
    buf.write("perturbation,strength,auc,accuracy,ap,eer,n\n")
    clean = results["clean"]
    buf.write(f"none,0,{clean['auc']:.6f},{clean['accuracy']:.6f},{clean['ap']:.6f},{clean['eer']:.6f},"
              f"{clean['n']}\n")
    for kind, rows in results["perturbations"].items():
        for r in rows:
            buf.write(f"{kind},{r['strength']:g},{r['auc']:.6f},{r['accuracy']:.6f},{r['ap']:.6f},"
                      f"{r['eer']:.6f},{r['n']}\n")
    written = [files.write_text(out_dir / "robustness.csv", buf.getvalue())]

    kinds = list(results["perturbations"])
    if not kinds:
        return written
    cols = min(3, len(kinds))
    rows_n = int(math.ceil(len(kinds) / cols))
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.2 * rows_n), squeeze=False)
    for ax in axes.ravel()[len(kinds):]:
        ax.axis("off")
    for ax, kind in zip(axes.ravel(), kinds):
        rows = results["perturbations"][kind]
        x = [r["strength"] for r in rows]
        ax.plot(x, [r["auc"] for r in rows], "o-", label="AUC")
        ax.plot(x, [r["accuracy"] for r in rows], "s--", label="accuracy")
        ax.axhline(clean["auc"], color="C0", lw=0.6, ls=":")
        ax.axhline(clean["accuracy"], color="C1", lw=0.6, ls=":")
        ax.set_title(kind, fontsize=9)
        ax.set_xlabel(_UNITS.get(kind, "strength"), fontsize=8)
        ax.set_ylim(0.0, 1.02)
        ax.grid(alpha=0.3)
        if kind == "mirror":
            ax.set_xticks(x, [{1.0: "horizontal", 2.0: "vertical"}.get(v, f"{v:g}") for v in x])
            ax.set_xlim(min(x) - 0.5, max(x) + 0.5)
        if kind in ("jpeg", "scaling", "crop"):
            ax.invert_xaxis()  # smaller values are stronger: stronger to the right, like the other panels
    axes.ravel()[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{title}: robustness (dotted: clean), n={results['num_examples']}", fontsize=10)
    fig.tight_layout()
    written.append(files.save_figure(out_dir / "robustness.png", fig))
    plt.close(fig)
    return written
