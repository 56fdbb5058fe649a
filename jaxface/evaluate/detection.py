"""The detection evaluation: threshold calibration on the validation split (W/calibration.json), the
report (metrics.json, predictions.csv, confusion_matrix.png, roc_curve.png, per_generator.png and, with
the robustness suite, robustness.png/robustness.csv), and cross-dataset evaluation on any real/fake
folder. Every function takes an inference setup (`train.trainer.load_for_inference`: model state, jitted
predict function, checkpoint step); none loads or trains a model. The metrics themselves are in
`metrics.py`.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import pathlib
from typing import Sequence

import numpy as np

from jaxface import files, plots
from jaxface.config import option
from jaxface.data import pipeline, sources
from jaxface.evaluate import robustness
from jaxface.evaluate.evaluators import predict_source
from jaxface.evaluate.metrics import (
    CLASS_NAMES,
    THRESHOLD_METHODS,
    DetectionEvalError,
    band_outcome,
    calibrate_threshold,
    detection_metrics,
    fit_temperature,
    format_metric,
    generator_name,
    reliability,
    roc_curve,
    sigmoid,
    uncertain_band,
)

CALIBRATION_FILE = "calibration.json"


def metrics_table(metrics: dict, title: str = "") -> str:
    """The printable summary: headline numbers, Table 3 (per-class P/R/F1), per generator, robustness."""
    m = metrics
    lines = [title] if title else []
    lines.append(
        f"accuracy {format_metric(m['accuracy'])}  balanced {format_metric(m['balanced_accuracy'])}  AUC {format_metric(m['auc'])}  "
        f"AP {format_metric(m['ap'])}  EER {format_metric(m['eer'])}  (n={m['num_examples']}: {m['num_real']} real, "
        f"{m['num_fake']} fake)")
    lines.append(f"threshold p_fake >= {m['threshold']:.4f} ({m.get('threshold_method', 'fixed')}"
                 f"{', calibrated on ' + m['threshold_split'] if m.get('threshold_split') else ''}); "
                 f"accuracy at p=0.5: {format_metric(m['accuracy_at_0.5'])}")
    if "reliability" in m:
        cal = m.get("calibration") or {}
        band = cal.get("uncertain_band")
        lines.append(f"calibration: temperature {temperature_of(cal):.3f} (fitted on {cal.get('split', 'val')}); "
                     f"ECE {format_metric(m['reliability']['uncalibrated']['ece'])} -> {format_metric(m['ece'])}"
                     + (f"; uncertain band +-{band:.3f} around the threshold" if band is not None else ""))
    lines.append(f"{'class':10s} {'precision':>9s} {'recall':>7s} {'f1':>6s} {'support':>8s}")
    for name, r in m["per_class"].items():
        lines.append(f"{name:10s} {format_metric(r['precision']):>9s} {format_metric(r['recall']):>7s} {format_metric(r['f1']):>6s} "
                     f"{r['support']:8d}")
    if m.get("per_generator"):
        width = max(16, *(len(name) for name in m["per_generator"]))
        lines.append(f"{'generator':{width}s} {'n':>6s} {'accuracy':>8s} {'AUC vs real':>11s}")
        for name, r in m["per_generator"].items():
            lines.append(f"{name:{width}s} {r['n']:6d} {format_metric(r['accuracy']):>8s} "
                         f"{format_metric(r.get('auc_vs_real')) if 'auc_vs_real' in r else '':>11s}")
    if m.get("robustness"):
        lines.append(robustness.table(m["robustness"]))
    return "\n".join(lines)


def write_predictions_csv(path, outputs: dict, generator_names: Sequence[str], keys: Sequence[str] | None = None,
                          temperature: float = 1.0):
    """One row per example: id (path or index), label, generator, p_fake (sigmoid(logit / temperature))."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "label", "generator", "p_fake"])
    ids = keys if keys is not None else [str(int(i)) for i in outputs.get("index", range(len(outputs["label"])))]
    probs = sigmoid(np.asarray(outputs["logit"], np.float64) / temperature)
    for key, y, g, p in zip(ids, outputs["label"], outputs["generator_id"], probs):
        name = generator_name(generator_names, g)
        w.writerow([key, CLASS_NAMES[int(y)], name, f"{p:.6f}"])
    return files.write_text(path, buf.getvalue())


def write_report(out_dir, outputs: dict, metrics: dict, generator_names: Sequence[str], *,
                 title: str, keys: Sequence[str] | None = None) -> tuple[str, list]:
    """metrics.json + predictions.csv + confusion matrix, ROC, per-generator and robustness plots."""
    out_dir = files.as_path(out_dir)
    written = [files.write_json(out_dir / "metrics.json", metrics)]
    temperature = temperature_of(metrics.get("calibration"))
    written.append(write_predictions_csv(out_dir / "predictions.csv", outputs, generator_names, keys, temperature))
    if "reliability" in metrics:
        rel = metrics["reliability"]
        series = {}
        for name, bins in (("uncalibrated", rel["uncalibrated"]["bins"]), (f"T = {temperature:.2f}", rel["bins"])):
            used = [b for b in bins if b["count"]]
            series[name] = ([b["mean_p"] for b in used], [b["fraction_fake"] for b in used])
        written.append(plots.line_plot(
            out_dir / "reliability.png", series, diagonal=True,
            title=f"{title}: ECE {rel['uncalibrated']['ece']:.3f} -> {rel['ece']:.3f}",
            xlabel="mean predicted p_fake (per bin)", ylabel="fraction of fakes"))
    m = metrics
    written.append(plots.confusion_matrix(
        out_dir / "confusion_matrix.png", np.asarray(m["confusion_matrix"]), list(CLASS_NAMES),
        title=f"{title}: accuracy {m['accuracy']:.3f} at p>={m['threshold']:.2f}"))
    labels, scores = outputs["label"], outputs["logit"]
    if m["num_real"] and m["num_fake"]:
        series = {f"all (AUC {m['auc']:.3f})": roc_curve(labels, scores)[:2]}
        g = np.asarray(outputs["generator_id"])
        fakes = [k for k in np.unique(g) if k != 0]
        if len(fakes) > 1:
            for k in fakes:
                sel = (g == 0) | (g == k)
                name = generator_name(generator_names, k)
                series[f"real vs {name} (AUC {m['per_generator'][name]['auc_vs_real']:.3f})"] = \
                    roc_curve(labels[sel], scores[sel])[:2]
        written.append(plots.line_plot(out_dir / "roc_curve.png", series, title=f"{title}: ROC",
                                       xlabel="false positive rate (real called fake)",
                                       ylabel="true positive rate (fakes detected)", diagonal=True))
    if m.get("per_generator"):
        names = list(m["per_generator"])
        written.append(plots.bar_chart(
            out_dir / "per_generator.png", names, [m["per_generator"][n]["accuracy"] for n in names],
            title=f"{title}: accuracy per generator", xlabel="accuracy", sort=False))
    if m.get("robustness"):
        written += robustness.write_outputs(out_dir, m["robustness"], title=title)
    return metrics_table(m, title=title), written


# ------------------------------------------------------------------------------ running a detector
def _evaluate_option(config, key: str, default):
    return option(config.get("evaluate", None), key, default)


def read_calibration(workdir, step: int | None) -> dict | None:
    """W/calibration.json when it was written for checkpoint STEP (the one being used), else None.

    A file that cannot be read, or that belongs to another checkpoint, is never used (its threshold
    would be silently wrong for this model): one warning names it and the caller falls back."""
    path = files.as_path(workdir) / CALIBRATION_FILE
    if not path.exists():
        return None
    try:
        cal = json.loads(path.read_text())
        float(cal["threshold_logit"])
    except (OSError, ValueError, TypeError, KeyError) as err:
        logging.warning("ignoring %s: it is not a readable calibration (%s: %s)", path, type(err).__name__, err)
        return None
    if cal.get("step") != step:
        logging.warning("ignoring %s: it was written for checkpoint step %s, the model in use is step %s",
                        path, cal.get("step"), step)
        return None
    return cal


def _temperature_fit(labels, logits, threshold_logit: float) -> dict:
    """Temperature scaling on the validation outputs: T, the ECE before and after, the uncertain band."""
    temperature = fit_temperature(labels, logits)
    probs = sigmoid(np.asarray(logits, np.float64) / temperature)
    threshold_p = float(sigmoid(threshold_logit / temperature))
    band = uncertain_band(labels, probs, threshold_p)
    outcome = band_outcome(labels, probs, threshold_p, band)
    return {"temperature": temperature,
            "val_ece_uncalibrated": reliability(labels, sigmoid(np.asarray(logits, np.float64)))["ece"],
            "val_ece": reliability(labels, probs)["ece"], "uncertain_band": band,
            "val_accuracy_outside_band": outcome["accuracy"], "val_coverage_outside_band": outcome["coverage"]}


def temperature_of(calibration: dict | None) -> float:
    """The calibration's temperature (1.0 for none, or for files written before temperature scaling)."""
    return float((calibration or {}).get("temperature", 1.0))


def probability(logits, calibration: dict | None):
    """Calibrated p_fake = sigmoid(logit / T)."""
    return sigmoid(np.asarray(logits, np.float64) / temperature_of(calibration))


def calibrate(setup, *, split: str = "val") -> dict:
    """Calibrates the threshold (and the temperature of the probabilities) on the config's validation
    split and saves W/calibration.json.

    Falls back to p = 0.5 (method 'fixed', with a note) when the split cannot be read."""
    method = _evaluate_option(setup.config, "threshold_method", "balanced_accuracy")
    if method not in THRESHOLD_METHODS:
        raise DetectionEvalError(
            f"config.evaluate.threshold_method={method!r}; valid: {', '.join(THRESHOLD_METHODS)}")
    try:
        source = pipeline.build_source(setup.config.data, split)
        outputs = predict_source(setup, source)
        cal = calibrate_threshold(outputs["label"], outputs["logit"], method)
        cal["num_examples"] = int(len(outputs["label"]))
        cal.update(_temperature_fit(outputs["label"], outputs["logit"], cal["threshold_logit"]))
    except (pipeline.DataConfigError, sources.DatasetError) as err:
        cal = {"threshold_logit": 0.0, "method": "fixed", "num_examples": 0, "temperature": 1.0,
               "note": f"no usable {split} split ({err}); kept p=0.5"}
    cal.update(split=split, threshold=float(sigmoid(cal["threshold_logit"] / cal["temperature"])), step=setup.step)
    try:
        files.write_json(files.as_path(setup.workdir) / CALIBRATION_FILE, cal)
    except OSError as err:  # a workdir the user may only read: the threshold is still right, just not kept
        logging.warning("could not save %s (%s); it is recomputed on every run",
                        files.as_path(setup.workdir) / CALIBRATION_FILE, err.strerror or err)
    return cal


def evaluate_outputs(setup, outputs: dict, out_dir, *, generator_names, calibration: dict,
                     robustness_source=None, title: str, split: str,
                     keys: Sequence[str] | None = None, extra: dict | None = None) -> dict:
    """Metrics at the calibrated threshold (+ the robustness suite on `robustness_source`) -> files."""
    metrics = detection_metrics(outputs["label"], outputs["logit"], calibration["threshold_logit"],
                                outputs["generator_id"], generator_names)
    metrics.update(split=split, threshold_method=calibration["method"],
                   threshold_split=calibration.get("split", ""), calibration=calibration, **(extra or {}))
    temperature = temperature_of(calibration)
    metrics["threshold"] = float(sigmoid(calibration["threshold_logit"] / temperature))
    labels, logits = np.asarray(outputs["label"]), np.asarray(outputs["logit"], np.float64)
    metrics["reliability"] = dict(reliability(labels, sigmoid(logits / temperature)),
                                  uncalibrated=reliability(labels, sigmoid(logits)))
    metrics["ece"] = metrics["reliability"]["ece"]
    if robustness_source is not None:
        metrics["robustness"] = robustness.run_suite(
            setup, robustness_source, calibration["threshold_logit"],
            suite=_evaluate_option(setup.config, "robustness_suite", None),
            max_examples=int(_evaluate_option(setup.config, "robustness_max_examples", 500)),
            max_side=int(_evaluate_option(setup.config, "robustness_max_side", 512)),
            seed=int(setup.config.seed))
    else:
        metrics["robustness"] = {}
    text, written = write_report(out_dir, outputs, metrics, generator_names, title=title, keys=keys)
    return {"metrics": metrics, "text": text, "outputs": written}


def evaluate_on_folder(setup, root, out_dir, *, robustness: bool | None = None) -> dict:
    """Cross-dataset evaluation: the detector of SETUP on any ROOT/real + ROOT/fake folder.

    Every image of the folder is used (split 'all'); the threshold is the one calibrated on the training
    data's validation split (W/calibration.json, recomputed when stale, p=0.5 when that data is absent).
    Writes the same report as `jaxface evaluate` into OUT_DIR. The robustness suite runs when
    `robustness` is True (default: config.evaluate.robustness_on_folder, False).
    -> dict(metrics, text, outputs)
    """
    root = pathlib.Path(root)
    source = sources.RealFakeFolder(root, split="all")
    calibration = read_calibration(setup.workdir, setup.step) or calibrate(setup)
    outputs = predict_source(setup, source)
    if robustness is None:
        robustness = bool(_evaluate_option(setup.config, "robustness_on_folder", False))
    all_paths = source.paths
    keys = [all_paths[int(i)] for i in outputs["index"]]
    return evaluate_outputs(
        setup, outputs, out_dir, generator_names=source.generator_names, calibration=calibration,
        robustness_source=source if robustness else None,
        title=f"{root.name} (cross-dataset)", split="all", keys=keys,
        extra={"dataset": str(root), "trained_on": str(setup.workdir)})


def report(setup, outputs: dict, metrics: dict, out_dir) -> tuple[dict, str, list]:
    """The deepfake task's evaluation: calibrate on val, recompute the metrics at that threshold, run
    the robustness suite on the evaluated split, write everything to OUT_DIR.
    -> (full metrics, printable table, written paths)"""
    calibration = calibrate(setup)
    split = metrics.get("split", "test")
    robust = None
    if bool(_evaluate_option(setup.config, "robustness", True)):
        robust = pipeline.build_source(setup.config.data, split)
    result = evaluate_outputs(
        setup, outputs, out_dir, generator_names=setup.task.generator_names, calibration=calibration,
        robustness_source=robust, title=f"{setup.config.data.source} {split}", split=split)
    return result["metrics"], result["text"], result["outputs"]
