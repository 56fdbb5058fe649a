"""Real/fake detection metrics: numpy only, importing nothing of jaxface, so that any layer (the trainer's
validation too) can use them.

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
- Temperature scaling (Guo et al. 2017): the T > 0 minimising the mean binary cross-entropy of
  sigmoid(logit / T) on the validation split; it changes probabilities, never the ranking or the decision.
  A perfectly separated validation split has no optimum (the loss falls as T -> 0): T stays 1.
- ECE (expected calibration error): probabilities in `num_bins` equal-width bins over [0, 1]; the
  count-weighted mean over bins of |mean predicted p_fake - fraction of fakes|.
- Uncertain band: the smallest d such that validation examples whose calibrated p_fake lies at least d
  from the threshold's are classified with at least the target accuracy (0.95); closer ones are
  "uncertain". A band never leaves fewer than half of the examples decided: a detector that cannot
  reach the target gets the band at that coverage, and its accuracy there is recorded.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

CLASS_NAMES = ("real", "fake")
THRESHOLD_METHODS = ("balanced_accuracy", "eer", "fixed")


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


def format_metric(value) -> str:
    """A metric for printed tables: three decimals, "n/a" for a missing or NaN value."""
    return "  n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


# -------------------------------------------------------------------------------------- calibration
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 50.0


def _mean_bce(y: np.ndarray, z: np.ndarray) -> float:
    # log(1 + exp(-z)) for fakes, log(1 + exp(z)) for reals, without overflow.
    return float(np.mean(np.logaddexp(0.0, np.where(y == 1, -z, z))))


def fit_temperature(labels, logits) -> float:
    """The temperature T minimising the validation NLL of sigmoid(logit / T); 1.0 without both classes."""
    from scipy.optimize import minimize_scalar

    y, z = _check(labels, logits)
    if len(y) == 0 or y.min() == y.max():
        return 1.0
    if z[y == 0].max() < z[y == 1].min():  # perfectly separated: the NLL falls as T -> 0, no optimum
        return 1.0
    result = minimize_scalar(lambda log_t: _mean_bce(y, z / math.exp(log_t)),
                             bounds=(math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)), method="bounded",
                             options={"xatol": 1e-6})
    return float(math.exp(result.x))


def reliability(labels, probs, num_bins: int = 10) -> dict:
    """ECE and the reliability diagram's bins: {ece, bins: [{low, high, count, mean_p, fraction_fake}]}."""
    y = np.asarray(labels, np.float64).ravel()
    p = np.asarray(probs, np.float64).ravel()
    if y.shape != p.shape or not np.all(np.isfinite(p)) or (p.size and (p.min() < 0 or p.max() > 1)):
        raise DetectionEvalError("reliability needs labels and probabilities in [0, 1] of the same length")
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1], right=False), 0, num_bins - 1)
    bins, ece = [], 0.0
    for b in range(num_bins):
        sel = which == b
        count = int(sel.sum())
        mean_p = float(p[sel].mean()) if count else float("nan")
        frac = float(y[sel].mean()) if count else float("nan")
        if count:
            ece += count * abs(mean_p - frac)
        bins.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": count,
                     "mean_p": mean_p, "fraction_fake": frac})
    return {"ece": ece / max(len(y), 1), "bins": bins}


def uncertain_band(labels, probs, threshold_p: float, target_accuracy: float = 0.95,
                   max_band: float = 0.45, min_coverage: float = 0.5) -> float:
    """The smallest band d around threshold_p outside which validation accuracy reaches target_accuracy;
    bands that would leave fewer than `min_coverage` of the examples decided are not considered: a
    detector that never reaches the target gets the widest band that still decides that many."""
    y = np.asarray(labels).ravel()
    p = np.asarray(probs, np.float64).ravel()
    distance = np.abs(p - threshold_p)
    correct = (p >= threshold_p) == (y == 1)
    best = 0.0
    for d in np.unique(np.r_[0.0, distance]):
        outside = distance >= d
        if d > max_band or outside.mean() < min_coverage:
            break
        if correct[outside].mean() >= target_accuracy:
            return float(d)
        best = float(d)
    return best


def band_outcome(labels, probs, threshold_p: float, band: float) -> dict:
    """Accuracy on, and the fraction of, the examples outside the uncertain band."""
    y = np.asarray(labels).ravel()
    p = np.asarray(probs, np.float64).ravel()
    outside = np.abs(p - threshold_p) >= band
    correct = (p >= threshold_p) == (y == 1)
    return {"coverage": float(outside.mean()) if len(p) else float("nan"),
            "accuracy": float(correct[outside].mean()) if outside.any() else float("nan")}
