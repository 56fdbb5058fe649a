"""The judge's measures: KID (unbiased, with a jackknife standard error) and feature diversity."""
import numpy as np
import pytest

from jaxface.evaluate import generation as metrics
from jaxface.generate import command
from jaxface.generate.settings import GenerateError


def test_kid_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 16)), rng.normal(size=(200, 16))
    same, same_se = metrics.kid(a, b)
    shifted, shifted_se = metrics.kid(a, b + 0.5)
    assert abs(same) < 3 * same_se  # unbiased: zero within its error for one distribution
    assert shifted > same + 5 * shifted_se > 0
    assert metrics.kid(a, b + 1.0)[0] > shifted  # further apart, larger


def test_kid_matches_its_definition_and_refuses_too_few_images():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(7, 3))
    k = lambda u, v: (u @ v.T / 3 + 1) ** 3  # noqa: E731
    kxx, kyy = k(x, x), k(y, y)
    expected = ((kxx.sum() - np.trace(kxx)) / 20 + (kyy.sum() - np.trace(kyy)) / 42 - 2 * k(x, y).mean())
    assert metrics.kid(x, y)[0] == pytest.approx(expected)
    assert np.isnan(metrics.kid(x[:1], y)[0])
    assert not np.isnan(metrics.kid(x[:2], y)[0]) and np.isnan(metrics.kid(x[:2], y)[1])


def test_feature_diversity_is_the_mean_pairwise_distance():
    f = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 8.0]])
    assert metrics.feature_diversity(f) == pytest.approx((5.0 + 8.0 + 5.0) / 3)
    assert np.isnan(metrics.feature_diversity(f[:1]))


def test_a_judge_applies_to_an_attribute_set_only(tmp_path):
    with pytest.raises(GenerateError, match="--judge_workdir applies to --attributes and --sweep, not to --reconstruct"):
        command.generate_command(tmp_path, reconstruct="face.png", judge_workdir=str(tmp_path))


@pytest.mark.slow
def test_a_sweep_with_a_judge_reports_its_figures_per_set(cgmm_workdir, tmp_path):
    import csv
    import json

    from jaxface import config as config_lib
    from jaxface.train import trainer

    judge_dir = tmp_path / "judge"
    cfg = config_lib.load_config("configs/attributes/synthfaces_judge.py", {
        "model.width": 0.125, "model.input_size": 32, "data.image_size": 32, "data.num_train": 128,
        "data.num_val": 16, "data.num_test": 200, "batch_size": 16, "num_train_steps": 2,
        "checkpoint_every_steps": 2, "optimizer.warmup_steps": 0})
    judge_dir.mkdir()
    (judge_dir / "config.json").write_text(cfg.to_json())
    trainer.train(cfg, judge_dir)
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps([{"attributes": ["Male"], "num": 3}, {"attributes": ["Eyeglasses"], "num": 3}]))
    result = command.generate_command(cgmm_workdir[0], sweep=str(sweep), judge_workdir=str(judge_dir),
                                      name="judged_sweep", verbose=False)
    assert len(result["summary"]) == 2
    for summary in result["summary"]:
        assert 0 <= summary["judge_hit_rate"] <= 1 and summary["judge_diversity"] > 0
        assert summary["num_real"] >= 2 and np.isfinite(summary["kid"]) and np.isfinite(summary["kid_se"])
    rows = list(csv.DictReader((result["directory"] / "summary.csv").open()))
    assert [float(r["judge_hit_rate"]) for r in rows] == pytest.approx([s["judge_hit_rate"] for s in result["summary"]],
                                                                       abs=1e-5)
    assert "judge: hit rate" in result["text"]
