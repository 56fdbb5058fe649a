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
    with pytest.raises(GenerateError, match="--judge_workdir applies to --attributes, --sweep and --compare, not to --reconstruct"):
        command.generate_command(tmp_path, reconstruct="face.png", judge_workdir=str(tmp_path))


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    """A ResNet-18 judge (synthfaces_judge.py) trained 2 steps at 32 px."""
    from jaxface import config as config_lib
    from jaxface.train import trainer

    judge_dir = tmp_path_factory.mktemp("judge")
    cfg = config_lib.load_config("configs/attributes/synthfaces_judge.py", {
        "model.width": 0.125, "model.input_size": 32, "data.image_size": 32, "data.num_train": 128,
        "data.num_val": 16, "data.num_test": 200, "batch_size": 16, "num_train_steps": 2,
        "checkpoint_every_steps": 2, "optimizer.warmup_steps": 0})
    (judge_dir / "config.json").write_text(cfg.to_json())
    trainer.train(cfg, judge_dir)
    return judge_dir


@pytest.mark.slow
def test_a_sweep_with_a_judge_reports_its_figures_per_set(cgmm_workdir, judge_dir, tmp_path):
    import csv
    import json

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


@pytest.mark.slow
def test_compare_runs_methods_and_references_on_the_same_sets_and_seeds(cgmm_workdir, judge_dir, tmp_path,
                                                                        tmp_path_factory):
    import csv
    import json

    from PIL import Image

    from serve_test_utils import detector_workdir

    spec = {"sets": ["Male", "Smiling, Mouth Open"], "seeds": [0, 1, 2],
            "methods": [{"label": "joint", "model": "joint"}, {"label": "cgmm", "model": "cgmm", "mode": "sample"}],
            "references": ["mean_image_noise", "attribute_mean"]}
    path = tmp_path / "methods.json"
    path.write_text(json.dumps(spec))
    result = command.generate_command(cgmm_workdir[0], compare=str(path), judge_workdir=str(judge_dir),
                                      detector_workdir=str(detector_workdir(tmp_path_factory)), verbose=False)
    directory = result["directory"]
    assert directory.name == "compare_methods"
    rows = list(csv.DictReader((directory / "compare.csv").open()))
    order = ["real", "joint", "cgmm", "mean_image_noise", "attribute_mean"]
    for s in ("set0", "set1"):
        assert [r["row"] for r in rows if r["set"] == s] == order
    assert [r["row"] for r in rows if r["set"] == "all sets"] == order
    for r in rows:
        assert 0 <= float(r["hit_rate"]) <= 1 and 0 <= float(r["judge_hit_rate"]) <= 1
        assert 0 <= float(r["detector_catch_rate"]) <= 1 and 0 < float(r["detector_mean_p_fake"]) < 1
        if r["set"] != "all sets":
            assert int(r["num_images"]) == 3 and r["kid"] != ""
    means = {r["row"]: r for r in rows if r["set"] == "all sets"}
    by_set = [r for r in rows if r["row"] == "joint" and r["set"] != "all sets"]
    assert float(means["joint"]["judge_hit_rate"]) == pytest.approx(
        np.mean([float(r["judge_hit_rate"]) for r in by_set]), abs=1e-4)
    assert float(means["attribute_mean"]["diversity"]) == pytest.approx(0.0, abs=1e-6)  # one image per set
    grids = sorted((directory / "grids").glob("*.png"))
    assert [g.name for g in grids] == ["set0_male.png", "set1_smiling_mouth_open.png"]
    grid = np.asarray(Image.open(grids[0]))
    assert grid.shape[0] > 5 * 32 and grid.shape[1] > 3 * 32  # five labelled rows of three seeds
    assert "joint: hit rate" in result["text"] and "judge" in result["text"] and "called fake" in result["text"]
    with pytest.raises(GenerateError, match="--detector_workdir applies to --compare"):
        command.generate_command(cgmm_workdir[0], attributes="Male", detector_workdir=str(judge_dir))
    with pytest.raises(GenerateError, match="holds a 'attributes' model, not a deepfake detector"):
        command.generate_command(cgmm_workdir[0], compare=str(path), detector_workdir=str(judge_dir))


@pytest.mark.parametrize("spec, message", [
    ({"sets": [], "seeds": [0], "methods": [{"model": "joint"}]}, "'sets' must be a non-empty list"),
    ({"sets": ["Male"], "seeds": [-1], "methods": [{"model": "joint"}]}, "'seeds' must be a non-empty list"),
    ({"sets": ["Male"], "seeds": [0], "methods": [{"colour": 1}]}, r"method 0: unknown key\(s\) 'colour'"),
    ({"sets": ["Male"], "seeds": [0], "methods": [{"label": "a"}, {"label": "a"}]}, "labels must be unique"),
    ({"sets": ["Male"], "seeds": [0], "methods": [{}], "references": ["median"]}, "'references' must be a list of"),
    ({"sets": ["Male"], "seeds": [0], "methods": [{}], "colour": 1}, r"unknown key\(s\) 'colour'"),
])
def test_compare_file_mistakes_are_one_clear_error(tmp_path, spec, message):
    import json

    from jaxface.generate import compare

    path = tmp_path / "bad.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(GenerateError, match=message):
        compare.read_compare(path)
    with pytest.raises(GenerateError, match="cannot read"):
        compare.read_compare(tmp_path / "missing.json")


def test_the_multilayer_targets_experiment_scores_both_variants(cgmm_workdir, judge_dir):
    """The protocol of jaxface.experiments.multilayer_targets, tiny: one set, two seeds, conv3_3 beside
    the fitted layer, each variant scored by the judge."""
    from jaxface.experiments import multilayer_targets

    workdir = cgmm_workdir[0]
    rows = multilayer_targets.run(workdir, judge_dir, sets=("Male",), seeds=(0, 1), modes=("sample",), num_fit=64)
    assert [r["layers"] for r in rows] == [["conv5_3"], ["conv3_3", "conv5_3"]]
    assert all(0.0 <= r["judge_hit_rate"] <= 1.0 for r in rows)
    with pytest.raises(GenerateError, match="--layers"):
        multilayer_targets.run(workdir, judge_dir, mid_layer="conv9_9", sets=("Male",), seeds=(0,), num_fit=8)
