"""Real/fake detection metrics (numpy only), threshold calibration, and the evaluation report.

Scores are the detector's logits (p_fake = sigmoid(logit)); ranking metrics use logits because float32
probabilities saturate to exactly 1.0 for confident fakes, which would create artificial ties. Label 1 is
fake (the positive class), 0 is real.

Definitions (ties between scores are handled by grouping equal scores into one threshold, as in the
usual ROC construction, so tied positive/negative pairs count one half towards the AUC):

- ROC curve: for every distinct score t (descending), TPR and FPR of "fake iff score >= t", starting at
  (0, 0) for t = +inf.
- AUC: trapezoidal area under that curve (equal to the Mann-Whitney U statistic with half credit for ties).
- AP (average precision): sum over distinct thresholds of (R_k - R_{k-1}) * P_k, the step-wise area
  under the precision-recall curve without interpolation.
- EER (equal error rate): FPR = FNR, where FNR = 1 - TPR; on the piecewise-linear ROC curve the first
  segment on which FNR - FPR changes sign is interpolated linearly.
- Threshold calibration (on the validation split): the logit threshold that maximises balanced accuracy
  (mean of TPR and TNR, i.e. Youden's J), placed midway between two neighbouring distinct scores; among
  equally good thresholds the one nearest logit 0 (p = 0.5) wins. 'eer' uses the EER point instead and
  'fixed' keeps p = 0.5.

The report (DeepfakeTask.report, `evaluate_on_folder`) writes metrics.json, predictions.csv,
confusion_matrix.png, roc_curve.png, per_generator.png and, with the robustness suite,
robustness.png/robustness.csv.
"""
from __future__ import annotations

import csv
import io
import json
import math
import pathlib
from typing import Any, Sequence

import numpy as np

from jaxface import files

CLASS_NAMES = ("real", "fake")
THRESHOLD_METHODS = ("balanced_accuracy", "eer", "fixed")
CALIBRATION_FILE = "calibration.json"


class DetectionEvalError(ValueError):
    """Inputs that the detection metrics or the evaluation commands cannot use."""


# ------------------------------------------------------------------------------------------ metrics
def _check(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).reshape(-1)
    s = np.asarray(scores, np.float64).reshape(-1)
    if y.shape != s.shape:
        raise DetectionEvalError(f"labels {y.shape} and scores {s.shape} must have the same length")
    if not np.all(np.isin(y, (0, 1))):
        raise DetectionEvalError("labels must be 0 (real) or 1 (fake)")
    if not np.all(np.isfinite(s)):
        raise DetectionEvalError("scores contain NaN or infinite values")
    return y.astype(np.int64), s


def sigmoid(x):
    """Numerically stable logistic function in float64."""
    x = np.asarray(x, np.float64)
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))


def _cumulative_counts(labels, scores):
    """(thresholds descending, true positives, false positives) at each distinct score."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1] if len(s) else np.zeros(0, np.int64)
    tps = np.cumsum(y)[last_of_group]
    fps = (last_of_group + 1) - tps
    return s[last_of_group], tps.astype(np.float64), fps.astype(np.float64)


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), starting at (0, 0) with threshold +inf. NaN rates for a missing class."""
    y, s = _check(labels, scores)
    thresholds, tps, fps = _cumulative_counts(y, s)
    n_pos, n_neg = float(y.sum()), float(len(y) - y.sum())
    tpr = np.r_[0.0, tps / n_pos] if n_pos else np.full(len(tps) + 1, np.nan)
    fpr = np.r_[0.0, fps / n_neg] if n_neg else np.full(len(fps) + 1, np.nan)
    return fpr, tpr, np.r_[np.inf, thresholds]


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    fpr, tpr, _ = roc_curve(labels, scores)
    if np.isnan(fpr).any() or np.isnan(tpr).any():
        return float("nan")
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def average_precision(labels, scores) -> float:
    """Step-wise area under the precision-recall curve; NaN without positives."""
    y, s = _check(labels, scores)
    if y.sum() == 0:
        return float("nan")
    _, tps, fps = _cumulative_counts(y, s)
    precision = tps / (tps + fps)
    recall = tps / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def equal_error_rate(labels, scores) -> tuple[float, float]:
    """(EER, the score threshold at the EER point); NaNs when a class is missing."""
    fpr, tpr, thresholds = roc_curve(labels, scores)
    if np.isnan(fpr).any() or np.isnan(tpr).any():
        return float("nan"), float("nan")
    fnr = 1.0 - tpr
    diff = fnr - fpr  # 1 at the start, -1 at the end, non-increasing
    i = int(np.flatnonzero(diff <= 0)[0])
    if diff[i] == 0 or i == 0:
        return float(fpr[i]), float(thresholds[i])
    t = diff[i - 1] / (diff[i - 1] - diff[i])
    eer = fpr[i - 1] + t * (fpr[i] - fpr[i - 1])
    upper = thresholds[i - 1] if np.isfinite(thresholds[i - 1]) else thresholds[i]
    return float(eer), float(upper + t * (thresholds[i] - upper))


def confusion_matrix(labels, scores, threshold: float) -> np.ndarray:
    """[[TN, FP], [FN, TP]]: rows true (real, fake), columns predicted; fake iff score >= threshold."""
    y, s = _check(labels, scores)
    pred = (s >= threshold).astype(np.int64)
    cm = np.zeros((2, 2), np.int64)
    np.add.at(cm, (y, pred), 1)
    return cm


def classification_report(cm: np.ndarray) -> dict:
    """Per-class precision, recall, F1 and support from a 2x2 confusion matrix (the report's Table 3)."""
    cm = np.asarray(cm, np.float64)
    out = {}
    for k, name in enumerate(CLASS_NAMES):
        tp = cm[k, k]
        predicted = cm[:, k].sum()
        actual = cm[k, :].sum()
        # Nothing predicted as this class: precision 0 (none of them right), as Table 3 reports it;
        # no example of this class: recall undefined (NaN).
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else float("nan")
        if math.isnan(recall):
            f1 = float("nan")
        elif precision + recall == 0:
            f1 = 0.0
        else:
            f1 = 2 * precision * recall / (precision + recall)
        out[name] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                     "support": int(actual)}
    return out


def balanced_accuracy(cm: np.ndarray) -> float:
    cm = np.asarray(cm, np.float64)
    rates = [cm[k, k] / cm[k].sum() for k in range(2) if cm[k].sum()]
    return float(np.mean(rates)) if rates else float("nan")


def calibrate_threshold(labels, scores, method: str = "balanced_accuracy") -> dict:
    """The decision threshold (in score units) chosen on a validation set; see the module docstring."""
    if method not in THRESHOLD_METHODS:
        raise DetectionEvalError(f"unknown threshold method {method!r}; valid: {', '.join(THRESHOLD_METHODS)}")
    y, s = _check(labels, scores)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if method == "fixed" or n_pos == 0 or n_neg == 0:
        note = "" if method == "fixed" else "validation split lacks a class; kept p=0.5"
        return {"threshold_logit": 0.0, "method": "fixed" if note else method, "note": note}
    if method == "eer":
        _, thr = equal_error_rate(y, s)
        return {"threshold_logit": float(thr), "method": method, "note": ""}
    distinct = np.unique(s)
    candidates = np.r_[distinct[0] - 1.0, (distinct[1:] + distinct[:-1]) / 2.0, distinct[-1] + 1.0]
    # For "fake iff score >= c": positives at or above c, negatives below c.
    pos_sorted, neg_sorted = np.sort(s[y == 1]), np.sort(s[y == 0])
    tpr = 1.0 - np.searchsorted(pos_sorted, candidates, side="left") / n_pos
    tnr = np.searchsorted(neg_sorted, candidates, side="left") / n_neg
    bal = (tpr + tnr) / 2.0
    best = np.flatnonzero(np.isclose(bal, bal.max(), rtol=0, atol=1e-12))
    choice = best[np.argmin(np.abs(candidates[best]))]
    return {"threshold_logit": float(candidates[choice]), "method": method,
            "val_balanced_accuracy": float(bal[choice]), "note": ""}


def detection_metrics(labels, scores, threshold_logit: float = 0.0, generator_ids=None,
                      generator_names: Sequence[str] | None = None) -> dict:
    """Every number of the evaluation at one threshold: accuracy, AUC, AP, EER, per class/generator."""
    y, s = _check(labels, scores)
    cm = confusion_matrix(y, s, threshold_logit)
    eer, eer_threshold = equal_error_rate(y, s)
    out = {
        "num_examples": int(len(y)),
        "num_real": int((y == 0).sum()),
        "num_fake": int((y == 1).sum()),
        "accuracy": float(np.trace(cm) / max(cm.sum(), 1)),
        "balanced_accuracy": balanced_accuracy(cm),
        "auc": roc_auc(y, s),
        "ap": average_precision(y, s),
        "eer": eer,
        "eer_threshold": float(sigmoid(eer_threshold)) if np.isfinite(eer_threshold) else float("nan"),
        "threshold": float(sigmoid(threshold_logit)),
        "threshold_logit": float(threshold_logit),
        "accuracy_at_0.5": float(np.mean((s >= 0.0) == (y == 1))) if len(y) else float("nan"),
        "confusion_matrix": cm.tolist(),
        "per_class": classification_report(cm),
    }
    if generator_ids is not None:
        out["per_generator"] = per_generator_metrics(y, s, generator_ids, generator_names, threshold_logit)
    return out


def generator_name(generator_names: Sequence[str] | None, generator_id) -> str:
    """The name of a generator id ('real' for 0; generator_<k> when the names do not cover it)."""
    k = int(generator_id)
    if generator_names is not None and k < len(generator_names):
        return generator_names[k]
    return "real" if k == 0 else f"generator_{k}"


def per_generator_metrics(labels, scores, generator_ids, generator_names, threshold_logit: float) -> dict:
    """Per generator (and 'real'): count, accuracy at the threshold, and for fakes the AUC of
    real-vs-this-generator (how well this generator's fakes are ranked above the real images)."""
    y, s = _check(labels, scores)
    g = np.asarray(generator_ids).reshape(-1)
    real = g == 0
    out = {}
    for k in np.unique(g):
        name = generator_name(generator_names, k)
        sel = g == k
        correct = (s[sel] >= threshold_logit) == (y[sel] == 1)
        entry = {"n": int(sel.sum()), "accuracy": float(correct.mean())}
        if k != 0:
            entry["auc_vs_real"] = roc_auc(np.r_[np.zeros(real.sum()), np.ones(sel.sum())],
                                           np.r_[s[real], s[sel]]) if real.any() else float("nan")
        out[name] = entry
    return out


# ------------------------------------------------------------------------------------------- report
def _fmt(v) -> str:
    return "  n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def metrics_table(metrics: dict, title: str = "") -> str:
    """The printable summary: headline numbers, Table 3 (per-class P/R/F1), per generator, robustness."""
    m = metrics
    lines = [title] if title else []
    lines.append(
        f"accuracy {_fmt(m['accuracy'])}  balanced {_fmt(m['balanced_accuracy'])}  AUC {_fmt(m['auc'])}  "
        f"AP {_fmt(m['ap'])}  EER {_fmt(m['eer'])}  (n={m['num_examples']}: {m['num_real']} real, "
        f"{m['num_fake']} fake)")
    lines.append(f"threshold p_fake >= {m['threshold']:.4f} ({m.get('threshold_method', 'fixed')}"
                 f"{', calibrated on ' + m['threshold_split'] if m.get('threshold_split') else ''}); "
                 f"accuracy at p=0.5: {_fmt(m['accuracy_at_0.5'])}")
    lines.append(f"{'class':10s} {'precision':>9s} {'recall':>7s} {'f1':>6s} {'support':>8s}")
    for name, r in m["per_class"].items():
        lines.append(f"{name:10s} {_fmt(r['precision']):>9s} {_fmt(r['recall']):>7s} {_fmt(r['f1']):>6s} "
                     f"{r['support']:8d}")
    if m.get("per_generator"):
        lines.append(f"{'generator':16s} {'n':>6s} {'accuracy':>8s} {'AUC vs real':>11s}")
        for name, r in m["per_generator"].items():
            lines.append(f"{name:16s} {r['n']:6d} {_fmt(r['accuracy']):>8s} "
                         f"{_fmt(r.get('auc_vs_real')) if 'auc_vs_real' in r else '':>11s}")
    if m.get("robustness"):
        from jaxface.evaluate import robustness

        lines.append(robustness.table(m["robustness"]))
    return "\n".join(lines)


def write_predictions_csv(path, outputs: dict, generator_names: Sequence[str], keys: Sequence[str] | None = None):
    """One row per example: id (path or index), label, generator, p_fake."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "label", "generator", "p_fake"])
    ids = keys if keys is not None else [str(int(i)) for i in outputs.get("index", range(len(outputs["label"])))]
    probs = sigmoid(outputs["logit"])
    for key, y, g, p in zip(ids, outputs["label"], outputs["generator_id"], probs):
        name = generator_name(generator_names, g)
        w.writerow([key, CLASS_NAMES[int(y)], name, f"{p:.6f}"])
    return files.write_text(path, buf.getvalue())


def write_report(out_dir, outputs: dict, metrics: dict, generator_names: Sequence[str], *,
                 title: str, keys: Sequence[str] | None = None) -> tuple[str, list]:
    """metrics.json + predictions.csv + confusion matrix, ROC, per-generator and robustness plots."""
    from jaxface.evaluate import plots

    out_dir = pathlib.Path(out_dir)
    written = [files.write_json(out_dir / "metrics.json", metrics)]
    written.append(write_predictions_csv(out_dir / "predictions.csv", outputs, generator_names, keys))
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
        from jaxface.evaluate import robustness

        written += robustness.write_outputs(out_dir, m["robustness"], title=title)
    return metrics_table(m, title=title), written


# ----------------------------------------------------------------------------- running a detector
def predict_source(setup, source, predict=None) -> dict:
    """The detector's outputs (logit, label, generator_id, index) on every readable record of `source`."""
    import jax

    from jaxface.data import pipeline
    from jaxface.train import trainer

    predict = predict or trainer.make_predict_step(setup.task, setup.model_def)
    with jax.set_mesh(setup.mesh):
        batches = pipeline.batches(setup.config, "test", setup.mesh, source=source, training=False)
        return trainer.run_predictions(setup.task, predict, setup.model_state, batches)


def _eval_option(config, key: str, default):
    section = config.get("evaluate", None)
    value = section.get(key, default) if section is not None else default
    return default if value is None else value


def _latest_step(workdir) -> int | None:
    from jaxface.train import checkpoint

    try:
        return checkpoint.manager(workdir, create=False).latest_step()
    except checkpoint.CheckpointError:
        return None


def read_calibration(workdir) -> dict | None:
    """W/calibration.json when it was written for the latest checkpoint, else None."""
    path = pathlib.Path(workdir) / CALIBRATION_FILE
    if not path.exists():
        return None
    try:
        cal = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if cal.get("step") != _latest_step(workdir):
        return None
    return cal


def calibrate(setup, workdir, predict=None, *, split: str = "val") -> dict:
    """Calibrates the threshold on the config's validation split and saves W/calibration.json.

    Falls back to p = 0.5 (method 'fixed', with a note) when the split cannot be read."""
    from jaxface.data import pipeline, sources

    method = _eval_option(setup.config, "threshold_method", "balanced_accuracy")
    if method not in THRESHOLD_METHODS:
        raise DetectionEvalError(
            f"config.evaluate.threshold_method={method!r}; valid: {', '.join(THRESHOLD_METHODS)}")
    try:
        source = pipeline.build_source(setup.config.data, split)
        outputs = predict_source(setup, source, predict)
        cal = calibrate_threshold(outputs["label"], outputs["logit"], method)
        cal["num_examples"] = int(len(outputs["label"]))
    except (pipeline.DataConfigError, sources.DatasetError) as err:
        cal = {"threshold_logit": 0.0, "method": "fixed", "num_examples": 0,
               "note": f"no usable {split} split ({err}); kept p=0.5"}
    cal.update(split=split, threshold=float(sigmoid(cal["threshold_logit"])), step=_latest_step(workdir))
    files.write_json(pathlib.Path(workdir) / CALIBRATION_FILE, cal)
    return cal


def evaluate_outputs(setup, outputs: dict, out_dir, *, generator_names, calibration: dict,
                     robustness_source=None, predict=None, title: str, split: str,
                     keys: Sequence[str] | None = None, extra: dict | None = None) -> dict:
    """Metrics at the calibrated threshold (+ the robustness suite on `robustness_source`) -> files."""
    metrics = detection_metrics(outputs["label"], outputs["logit"], calibration["threshold_logit"],
                                outputs["generator_id"], generator_names)
    metrics.update(split=split, threshold_method=calibration["method"],
                   threshold_split=calibration.get("split", ""), calibration=calibration, **(extra or {}))
    if robustness_source is not None:
        from jaxface.evaluate import robustness

        metrics["robustness"] = robustness.run_suite(
            setup, robustness_source, calibration["threshold_logit"], predict=predict,
            suite=_eval_option(setup.config, "robustness_suite", None),
            max_examples=int(_eval_option(setup.config, "robustness_max_examples", 500)),
            max_side=int(_eval_option(setup.config, "robustness_max_side", 512)),
            seed=int(setup.config.seed))
    else:
        metrics["robustness"] = {}
    text, written = write_report(out_dir, outputs, metrics, generator_names, title=title, keys=keys)
    return {"metrics": metrics, "text": text, "outputs": written}


def evaluate_on_folder(workdir, root, out_dir, *, robustness: bool | None = None) -> dict:
    """Cross-dataset evaluation: the trained detector in WORKDIR on any ROOT/real + ROOT/fake folder.

    Every image of the folder is used (split 'all'); the threshold is the one calibrated on the training
    data's validation split (W/calibration.json, recomputed when stale, p=0.5 when that data is absent).
    Writes the same report as `jaxface evaluate` into OUT_DIR. The robustness suite runs when
    `robustness` is True (default: config.evaluate.robustness_on_folder, False).
    -> dict(metrics, text, outputs)
    """
    from jaxface.data import sources
    from jaxface.train import trainer

    workdir, root = pathlib.Path(workdir), pathlib.Path(root)
    source = sources.RealFakeFolder(root, split="all")
    setup = trainer.load_for_inference(workdir)
    predict = trainer.make_predict_step(setup.task, setup.model_def)
    calibration = read_calibration(workdir) or calibrate(setup, workdir, predict)
    outputs = predict_source(setup, source, predict)
    if robustness is None:
        robustness = bool(_eval_option(setup.config, "robustness_on_folder", False))
    all_paths = source.paths
    keys = [all_paths[int(i)] for i in outputs["index"]]
    result = evaluate_outputs(
        setup, outputs, out_dir, generator_names=source.generator_names, calibration=calibration,
        robustness_source=source if robustness else None, predict=predict,
        title=f"{root.name} (cross-dataset)", split="all", keys=keys,
        extra={"dataset": str(root), "trained_on": str(workdir)})
    return result


def task_report(task, outputs: dict, metrics: dict, out_dir) -> tuple[str, list]:
    """DeepfakeTask.report: calibrate on val, recompute the metrics at that threshold, run the
    robustness suite on the evaluated split, write everything to OUT_DIR (= WORKDIR/eval).

    The model comes from `task.inference_setup` when the caller attached one, otherwise it is restored
    from OUT_DIR's parent workdir (evaluate_command writes to WORKDIR/eval)."""
    from jaxface.data import pipeline
    from jaxface.train import trainer

    out_dir = pathlib.Path(out_dir)
    workdir = out_dir.parent
    setup = getattr(task, "inference_setup", None) or trainer.load_for_inference(workdir, task.config)
    predict = trainer.make_predict_step(setup.task, setup.model_def)
    calibration = calibrate(setup, workdir, predict)
    split = metrics.get("split", "test")
    robust = None
    if bool(_eval_option(setup.config, "robustness", True)):
        robust = pipeline.build_source(setup.config.data, split)
    result = evaluate_outputs(
        setup, outputs, out_dir, generator_names=task.generator_names, calibration=calibration,
        robustness_source=robust, predict=predict,
        title=f"{setup.config.data.source} {split}", split=split)
    full = result["metrics"]
    metrics.clear()
    metrics.update(full)
    return result["text"], result["outputs"]
