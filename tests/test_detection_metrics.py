"""Detection metrics against hand-computed examples (ties, EER interpolation, threshold calibration)."""
import math

import numpy as np
import pytest

from jaxface.evaluate import metrics as D

# Four real (0) and four fake (1) images; the scores tie across classes at 0.35 and 0.8.
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1])
SCORES = np.array([0.1, 0.4, 0.35, 0.8, 0.35, 0.7, 0.9, 0.8])
# Descending distinct thresholds 0.9, 0.8, 0.7, 0.4, 0.35, 0.1 give (TP, FP) =
# (1, 0), (2, 1), (3, 1), (3, 2), (4, 3), (4, 4).


def test_roc_curve_groups_tied_scores():
    fpr, tpr, thr = D.roc_curve(LABELS, SCORES)
    np.testing.assert_allclose(fpr, [0, 0, .25, .25, .5, .75, 1])
    np.testing.assert_allclose(tpr, [0, .25, .5, .75, .75, 1, 1])
    assert thr[0] == np.inf and list(thr[1:]) == [0.9, 0.8, 0.7, 0.4, 0.35, 0.1]


def test_auc_by_hand_and_equals_mann_whitney_with_half_ties():
    # Trapezoids: .25*(.25+.5)/2 + .25*.75 + .25*(.75+1)/2 + .25*1 = 0.75
    assert D.roc_auc(LABELS, SCORES) == pytest.approx(0.75)
    # Pairs (fake > real) + half the ties: 0.35 -> 1.5, 0.7 -> 3, 0.9 -> 4, 0.8 -> 3.5; 12 / 16
    pos, neg = SCORES[LABELS == 1], SCORES[LABELS == 0]
    u = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))
    assert u == pytest.approx(0.75)
    rng = np.random.default_rng(0)
    y, s = rng.integers(0, 2, 200), rng.integers(0, 10, 200).astype(float)  # many ties
    pos, neg = s[y == 1], s[y == 0]
    u = np.mean((pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None]))
    assert D.roc_auc(y, s) == pytest.approx(u)


def test_average_precision_with_ties_by_hand():
    # sum (R_k - R_{k-1}) P_k = .25*1 + .25*2/3 + .25*3/4 + 0 + .25*4/7 + 0 = 251/336
    assert D.average_precision(LABELS, SCORES) == pytest.approx(251 / 336)
    assert D.average_precision([1, 1, 0], [3, 2, 1]) == pytest.approx(1.0)
    assert D.average_precision([1, 0], [1, 1]) == pytest.approx(0.5)  # one tie: precision 1/2 at recall 1


def test_equal_error_rate_exact_and_interpolated():
    # (FPR, FNR) along the curve: (0,1) (0,.75) (.25,.5) (.25,.25): FNR = FPR = 0.25 at score 0.7.
    eer, thr = D.equal_error_rate(LABELS, SCORES)
    assert eer == pytest.approx(0.25) and thr == pytest.approx(0.7)
    # fakes 0.9, 0.3; reals 0.5, 0.1, 0.05: (FPR, FNR) goes (1/3, 1/2) -> (1/3, 0); FNR - FPR = 1/6
    # then -1/3, so t = 1/3 of the way: FNR = 1/2 - 1/6 = 1/3 = FPR.
    eer, thr = D.equal_error_rate([1, 0, 1, 0, 0], [0.9, 0.5, 0.3, 0.1, 0.05])
    assert eer == pytest.approx(1 / 3)
    assert thr == pytest.approx(0.5 + (0.3 - 0.5) / 3)
    assert D.equal_error_rate([0, 0, 1, 1], [0, 1, 2, 3])[0] == 0.0  # separable


def test_confusion_and_table3_report():
    cm = D.confusion_matrix(LABELS, SCORES, 0.5)  # fake iff score >= 0.5
    # reals: 0.8 is called fake; fakes: 0.35 is called real
    np.testing.assert_array_equal(cm, [[3, 1], [1, 3]])
    rep = D.classification_report(cm)
    assert rep["fake"] == {"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4}
    cm = np.array([[1632, 368], [952, 4048]])  # the report's MobileNetV3 confusion matrix (Figure 7)
    rep = D.classification_report(cm)
    assert round(rep["fake"]["precision"], 2) == 0.92 and round(rep["fake"]["recall"], 2) == 0.81
    assert round(rep["real"]["precision"], 2) == 0.63 and round(rep["real"]["recall"], 2) == 0.82
    assert round(rep["real"]["f1"], 2) == 0.71 and round(rep["fake"]["f1"], 2) == 0.86  # Table 3
    only_real = D.classification_report(np.array([[5, 0], [0, 0]]))
    assert only_real["fake"]["precision"] == 0.0 and math.isnan(only_real["fake"]["recall"])


def test_threshold_calibration_maximises_balanced_accuracy():
    labels = [0, 0, 0, 1, 1, 1]
    scores = [-2.0, -1.0, 0.5, 0.0, 1.0, 2.0]
    # Midpoints -0.5 (TPR 1, TNR 2/3) and 0.75 (TPR 2/3, TNR 1) tie at 5/6; -0.5 is nearer logit 0.
    cal = D.calibrate_threshold(labels, scores)
    assert cal["threshold_logit"] == pytest.approx(-0.5)
    assert cal["val_balanced_accuracy"] == pytest.approx(5 / 6)
    # Separable with an offset: the midpoint of the gap, not p = 0.5.
    cal = D.calibrate_threshold([0, 0, 1, 1], [2.0, 3.0, 5.0, 6.0])
    assert cal["threshold_logit"] == pytest.approx(4.0)
    assert D.calibrate_threshold([1, 1], [0.3, 0.4])["method"] == "fixed"  # one class: p = 0.5 kept
    with pytest.raises(D.DetectionEvalError, match="valid: balanced_accuracy"):
        D.calibrate_threshold(labels, scores, "youden")


def test_detection_metrics_per_generator_and_missing_class():
    labels = np.array([0, 0, 1, 1, 1, 1])
    gids = np.array([0, 0, 1, 1, 2, 2])
    scores = np.array([-1.0, 0.2, 2.0, 3.0, -0.5, 0.1])
    m = D.detection_metrics(labels, scores, 0.0, gids, ("real", "upsample", "faceswap"))
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_generator"]["real"] == {"n": 2, "accuracy": 0.5}
    assert m["per_generator"]["upsample"] == {"n": 2, "accuracy": 1.0, "auc_vs_real": 1.0}
    # faceswap -0.5, 0.1 vs real -1, 0.2: pairs won 1 + 0 + 1 + 0 = 2 of 4
    assert m["per_generator"]["faceswap"]["auc_vs_real"] == pytest.approx(0.5)
    assert m["threshold"] == pytest.approx(0.5) and m["confusion_matrix"] == [[1, 1], [1, 3]]
    only_fake = D.detection_metrics([1, 1], [0.3, -0.2])
    assert math.isnan(only_fake["auc"]) and math.isnan(only_fake["eer"]) and only_fake["accuracy"] == 0.5
    with pytest.raises(D.DetectionEvalError, match="0 \\(real\\) or 1 \\(fake\\)"):
        D.detection_metrics([0, 2], [0.1, 0.2])


def test_sigmoid_is_stable():
    np.testing.assert_allclose(D.sigmoid([-800.0, 0.0, 800.0]), [0.0, 0.5, 1.0])
    assert D.sigmoid(30.0) < 1.0  # float64: confident fakes stay distinguishable


def test_a_calibration_from_another_checkpoint_or_unreadable_is_never_used(tmp_path, caplog):
    import json
    import logging

    from jaxface.evaluate import detection

    assert detection.read_calibration(tmp_path, 100) is None  # none written: no warning
    path = tmp_path / detection.CALIBRATION_FILE
    path.write_text(json.dumps({"threshold_logit": 0.7, "threshold": 0.668, "method": "eer", "step": 100}))
    assert detection.read_calibration(tmp_path, 100)["threshold_logit"] == 0.7
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        assert detection.read_calibration(tmp_path, 200) is None
        path.write_text('{"threshold_logit": ')
        assert detection.read_calibration(tmp_path, 100) is None
        path.write_text('{"step": 100}')
        assert detection.read_calibration(tmp_path, 100) is None
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    assert "written for checkpoint step 100, the model in use is step 200" in messages[0]
    assert all(str(path) in m for m in messages)
    assert "not a readable calibration" in messages[1] and "KeyError" in messages[2]


def test_temperature_scaling_recovers_an_overconfident_scale():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, 20000)
    labels = (rng.random(20000) < D.sigmoid(true_logits)).astype(int)
    t = D.fit_temperature(labels, 3.0 * true_logits)  # a detector 3x too confident
    assert t == pytest.approx(3.0, rel=0.05)
    before = D.reliability(labels, D.sigmoid(3.0 * true_logits))["ece"]
    after = D.reliability(labels, D.sigmoid(3.0 * true_logits / t))["ece"]
    assert after < 0.02 < before
    assert D.fit_temperature([1, 1], [2.0, 3.0]) == 1.0  # one class: nothing to fit
    assert D.fit_temperature([0, 0, 1, 1], [-1.0, -0.5, 0.5, 2.0]) == 1.0  # separated: no optimum


def test_reliability_bins_and_ece_by_hand():
    labels = [0, 0, 1, 1, 1]
    probs = [0.05, 0.15, 0.15, 0.95, 0.85]
    rel = D.reliability(labels, probs, num_bins=2)
    low, high = rel["bins"]
    assert (low["count"], high["count"]) == (3, 2)
    assert low["mean_p"] == pytest.approx(0.35 / 3) and low["fraction_fake"] == pytest.approx(1 / 3)
    assert high["mean_p"] == pytest.approx(0.9) and high["fraction_fake"] == 1.0
    assert rel["ece"] == pytest.approx((3 * abs(0.35 / 3 - 1 / 3) + 2 * 0.1) / 5)
    with pytest.raises(D.DetectionEvalError):
        D.reliability([0, 1], [0.5, 1.5])


def test_uncertain_band_is_the_smallest_band_outside_which_answers_are_right():
    labels = [0, 1, 0, 1, 0, 1]
    probs = [0.1, 0.9, 0.55, 0.45, 0.2, 0.8]  # the two near 0.5 are wrong
    assert D.uncertain_band(labels, probs, 0.5) == pytest.approx(0.3)
    # never right: the widest band that still decides half of the examples
    assert D.uncertain_band([0, 1, 0, 1], [0.9, 0.1, 0.7, 0.3], 0.5) == pytest.approx(0.4)
    assert D.band_outcome([0, 1, 0, 1], [0.9, 0.1, 0.7, 0.3], 0.5, 0.4) == {"coverage": 0.5, "accuracy": 0.0}
