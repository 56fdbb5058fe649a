"""The deepfake task through the shared trainer: training, `evaluate` outputs, robustness suite,
closed-form spectrum baseline, leave-one-generator-out, cross-dataset folders, real data."""
import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from jaxface import config as config_lib
from jaxface import files
from jaxface.data import augment as augment_lib
from jaxface.data.synthfakes import SynthRealFake
from jaxface.evaluate import detection, evaluators, robustness
from jaxface.experiments import logo
from jaxface.train import spectrum_fit, trainer
from jaxface.train.tasks import base as tasks
from jaxface.train.tasks import deepfake as det_task

pytestmark = pytest.mark.slow  # trains detectors end to end

CONFIG = "configs/detect/synthfakes_mobilenet.py"
TINY_SUITE = {"jpeg": [50.0], "rotation": [15.0]}


def tiny_config(**overrides):
    base = {
        "model.width": 0.25, "model.depth": 0.5, "model.input_size": 32, "model.dropout": 0.0,
        "data.image_size": 32, "data.num_train": 64, "data.num_val": 32, "data.num_test": 48,
        "batch_size": 16, "eval_batch_size": 16, "num_train_steps": 4, "eval_every_steps": 0,
        "checkpoint_every_steps": 4, "log_every_steps": 2, "optimizer.warmup_steps": 0,
        "evaluate.robustness_max_examples": 24,
    }
    base.update(overrides)
    cfg = config_lib.load_config(CONFIG, base)
    cfg.evaluate.robustness_suite = dict(TINY_SUITE)
    return cfg


def spectrum_config(**overrides):
    return tiny_config(**{"model.name": "spectrum", "model.width": 1.0, "model.depth": 1.0,
                          "data.augment.enabled": False, **overrides})


def test_task_trains_and_evaluate_writes_every_output(tmp_path):
    # The spectrum detector keeps this end-to-end test fast (a CNN's init and step compile alone take
    # tens of seconds here); the real-data test below trains a CNN through the same path.
    cfg = spectrum_config()
    result = trainer.train(cfg, tmp_path)
    assert result["step"] == 4
    logged = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
    assert all(np.isfinite(r["loss"]) and 0 <= r["accuracy"] <= 1 for r in logged if r["split"] == "train")

    ev = evaluators.evaluate_split(trainer.load_for_inference(tmp_path, cfg), "test")
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("accuracy", "auc", "ap", "eer", "threshold", "per_class", "per_generator", "robustness"):
        assert key in saved, key
    assert saved["num_examples"] == 48 and saved["threshold_method"] == "balanced_accuracy"
    assert set(saved["per_class"]) == {"real", "fake"}
    assert set(saved["per_generator"]) == {"real", "upsample", "faceswap"}
    assert set(saved["robustness"]["perturbations"]) == set(TINY_SUITE)
    assert saved["robustness"]["num_examples"] == 24
    cal = json.loads((tmp_path / detection.CALIBRATION_FILE).read_text())
    assert cal["split"] == "val" and cal["step"] == 4
    assert saved["threshold"] == pytest.approx(cal["threshold"])
    assert cal["temperature"] > 0 and 0 <= cal["uncertain_band"] <= 0.45 and 0 <= cal["val_ece"] <= 1
    assert 0 <= saved["ece"] <= 1 and len(saved["reliability"]["bins"]) == 10
    assert sum(b["count"] for b in saved["reliability"]["bins"]) == 48
    for name in ("confusion_matrix.png", "roc_curve.png", "per_generator.png", "robustness.png",
                 "robustness.csv", "predictions.csv", "reliability.png"):
        assert (tmp_path / "eval" / name).stat().st_size > 0, name
    assert "precision" in ev["text"] and "jpeg" in ev["text"]
    assert ev["metrics"]["auc"] == saved["auc"]  # the returned metrics are the calibrated ones


def test_loss_masks_padding_and_weights_classes(tmp_path):
    task = tasks.get_task(tiny_config())
    assert isinstance(task, det_task.DeepfakeTask)
    task._class_weights = np.array([1.0, 3.0], np.float32)  # as if fakes were three times rarer
    logits = jnp.array([[2.0], [-1.0], [0.5], [40.0]])
    batch = {"image": jnp.zeros((4, 32, 32, 3)), "label": jnp.array([1, 0, 0, 0]),
             "valid": jnp.array([True, True, True, False])}
    loss, metrics = task.loss(lambda x, train: logits, batch, train=True)
    per = np.log1p(np.exp(-np.array([2.0, 1.0, -0.5])))  # BCE of the three valid rows
    expected = (3 * per[0] + per[1] + per[2]) / 5  # the padded row (a huge loss) is ignored
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["accuracy"]) == pytest.approx(2 / 3)


def test_class_weights_follow_the_training_split(tmp_path):
    root = tmp_path / "imbalanced"
    image = np.full((40, 40, 3), 128, np.uint8)
    for i in range(30):
        files.save_image(root / "real" / f"r{i}.png", image)
    for i in range(10):
        files.save_image(root / "fake" / f"f{i}.png", image)
    cfg = tiny_config(**{"data.source": "realfake"})
    cfg.data.root = str(root)
    w = tasks.get_task(cfg).class_weights()
    # train split 24 real + 8 fake: N / (2 n_class)
    np.testing.assert_allclose(w, [32 / 48, 32 / 16])
    cfg.data.balance = "none"
    np.testing.assert_allclose(tasks.get_task(cfg).class_weights(), [1.0, 1.0])


def test_config_mistakes_are_one_clear_error():
    with pytest.raises(tasks.TaskConfigError, match="valid detectors: mobilenetv3_small"):
        tasks.get_task(tiny_config(**{"model.name": "mobilenet"}))
    with pytest.raises(tasks.TaskConfigError, match="image_size=32 differs from model.input_size=64"):
        tasks.get_task(tiny_config(**{"model.input_size": 64}))
    with pytest.raises(tasks.TaskConfigError, match="valid layers are: stem, blocks/0, blocks/1"):
        tasks.get_task(tiny_config()).layer_index("conv9")


def test_augment_comes_from_config():
    cfg = tiny_config()
    transform = tasks.get_task(cfg).augment(cfg)
    assert isinstance(transform, augment_lib.AugmentTransform)
    assert transform.augmenter.config["hflip"]["prob"] == 0.5
    assert transform.augmenter.config["jpeg"]["prob"] == 0.0
    cfg.data.augment.enabled = False
    assert tasks.get_task(cfg).augment(cfg) is None


def test_freezing_below_the_head_trains_only_the_head():
    from flax import nnx

    from jaxface.train import optim

    task = tasks.get_task(tiny_config(freeze_below="head"))
    state = nnx.state(nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0))), nnx.Param)
    trainable = optim.trainable_filter("head", task.layer_of, task.layer_index)
    flags = {"/".join(map(str, path)): trainable(path, nnx.Param(v)) for path, v in nnx.to_flat_state(state)}
    assert flags["head/kernel"] and flags["head/bias"]
    assert not any(v for k, v in flags.items() if not k.startswith("head/"))
    assert task.layer_of(("blocks", 3, "depthwise", "conv", "kernel")) == "blocks/3"
    assert task.layer_index("blocks/3") < task.layer_index("pre_logits") < task.layer_index("head")


def test_perturbed_source_and_suite_validation():
    records = robustness.materialize(SynthRealFake(12, resolution=32, seed=1), max_examples=6, seed=0)
    assert len(records) == 6 and {int(r["label"]) for r in records} == {0, 1}
    src = robustness.PerturbedSource(records, "rotation", 90.0)
    assert src[0]["image"].shape == records[0]["image"].shape
    assert not np.array_equal(src[0]["image"], records[0]["image"])
    np.testing.assert_array_equal(robustness.PerturbedSource(records)[1]["image"], records[1]["image"])
    with pytest.raises(robustness.RobustnessError, match="valid kinds: rotation"):
        robustness.check_suite({"sharpen": [1.0]})
    with pytest.raises(robustness.RobustnessError, match="jpeg=500"):
        robustness.check_suite({"jpeg": [500]})


def test_spectrum_closed_form_fit_then_evaluate(tmp_path):
    cfg = spectrum_config(**{"data.num_train": 160, "data.num_test": 64})
    cfg.evaluate.robustness = False
    fit = spectrum_fit.fit_spectrum(cfg, tmp_path)
    assert fit["num_examples"] == 160 and fit["gradient_norm"] < 1e-3
    ev = evaluators.evaluate_split(trainer.load_for_inference(tmp_path, cfg), "test")
    # The transposed-convolution generator leaves a spectral fingerprint the baseline picks up.
    assert ev["metrics"]["per_generator"]["upsample"]["auc_vs_real"] > 0.8
    assert ev["metrics"]["robustness"] == {}


def test_leave_one_generator_out_trains_without_each_generator(tmp_path):
    cfg = spectrum_config(num_train_steps=2, checkpoint_every_steps=2)
    held = logo.held_out_config(cfg, "faceswap")
    assert held.data.exclude_generators_train == ("faceswap",) and held.data.exclude_generators_test == ()
    from jaxface.data import pipeline

    train_gens = set(np.unique(pipeline.build_source(held.data, "train").generator_ids).tolist())
    assert train_gens == {0, 1}  # real and upsample only
    result = logo.leave_one_generator_out(cfg, tmp_path)
    assert [r["held_out"] for r in result["rows"]] == ["upsample", "faceswap"]
    for r in result["rows"]:
        assert 0 <= r["held_out_auc_vs_real"] <= 1 and 0 <= r["held_out_detection_rate"] <= 1
    assert (tmp_path / "logo_summary.json").exists() and (tmp_path / "logo.png").exists()
    with pytest.raises(logo.LogoError, match="synthfakes"):
        logo.leave_one_generator_out(tiny_config(**{"data.source": "realfake"}), tmp_path)


def test_evaluate_on_another_folder(tmp_path):
    cfg = spectrum_config(**{"data.num_train": 96})
    spectrum_fit.fit_spectrum(cfg, tmp_path / "w")
    root = tmp_path / "other"
    data = SynthRealFake(12, resolution=48, seed=99)  # another size and seed: a "different dataset"
    for i in range(len(data)):
        r = data[i]
        sub = "real" if r["label"] == 0 else f"fake/{data.generator_names[int(r['generator_id'])]}"
        files.save_image(root / sub / f"{i}.png", r["image"])
    (root / "real" / "broken.jpg").write_bytes(b"not a jpeg")
    result = detection.evaluate_on_folder(trainer.load_for_inference(tmp_path / "w"), root, tmp_path / "cross")
    m = result["metrics"]
    assert m["num_examples"] == 12 and m["dataset"] == str(root)  # the broken file is skipped
    assert set(m["per_generator"]) == {"real", "faceswap", "upsample"}
    rows = (tmp_path / "cross" / "predictions.csv").read_text().splitlines()
    assert rows[0] == "id,label,generator,p_fake" and str(root) in rows[1]
    assert (tmp_path / "cross" / "roc_curve.png").exists()


def test_short_training_run_on_real_faces(tmp_path, shared_data):
    root = shared_data / "realfake"
    if not root.is_dir():
        pytest.skip("../shared/data/realfake is absent")
    cfg = config_lib.load_config("configs/detect/realfake_resnet18.py", {
        "model.width": 0.125, "model.depth": 0.5, "model.input_size": 32, "data.image_size": 32,
        "batch_size": 16, "eval_batch_size": 64, "num_train_steps": 3, "eval_every_steps": 3,
        "checkpoint_every_steps": 3, "log_every_steps": 1, "optimizer.warmup_steps": 0,
    })
    cfg.data.root = str(root)
    trainer.train(cfg, tmp_path)
    logged = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
    train = [r for r in logged if r["split"] == "train"]
    assert len(train) == 3 and all(np.isfinite(r["loss"]) for r in train)
    (val,) = [r for r in logged if r["split"] == "val"]
    assert val["num_real"] == 59 and val["num_fake"] == 70  # 10 % of 589 and 700, stratified
    assert 0.0 <= val["auc"] <= 1.0 and 0.0 <= val["accuracy"] <= 1.0
