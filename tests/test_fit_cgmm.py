"""The fit-cgmm driver: activations of a trained classifier streamed over a split -> W/cgmm/."""
import json

import jax
import numpy as np
import pytest
from flax import nnx

from jaxface.cgmm import fit, store
from jaxface.data import pipeline
from cgmm_test_utils import classifier_config, gen_config

pytestmark = pytest.mark.slow  # trains a classifier and fits the cGMM (the session fixture)


@pytest.fixture(scope="module")
def shared(cgmm_workdir):
    return cgmm_workdir


@pytest.fixture(scope="module")
def classifier(shared):
    return shared[0]


@pytest.fixture(scope="module")
def fitted(shared):
    return shared[1]


def naive_layer_stats(workdir, layer, split="train"):
    """Per-attribute mean and variance of the layer over the whole split, one attribute at a time in
    float64 numpy, from one unsharded forward pass of all images (no streaming, no pipeline)."""
    setup = fit.load_classifier(workdir)  # the cached, already restored model
    source = pipeline.build_source(setup.config.data, split)
    records = [source[i] for i in range(len(source))]
    images = np.stack([r["image"] for r in records]).astype(np.float32) / 255.0
    forward = nnx.jit(lambda model, x: model.activations(x, [layer])[layer])
    acts = np.asarray(forward(setup.model, images), np.float64)
    acts = acts.reshape(len(records), -1)
    attrs = np.stack([r["attributes"] for r in records]) > 0.5
    means = np.stack([acts[attrs[:, k]].mean(0) for k in range(attrs.shape[1])])
    variances = np.stack([acts[attrs[:, k]].var(0) for k in range(attrs.shape[1])])
    return means, variances, attrs.sum(0)


def test_fit_writes_the_store_its_metadata_and_the_generate_config(classifier, fitted):
    directory = classifier / "cgmm"
    for name in ("cgmm.npz", "cgmm.json", "config.json", "mean_image.png", "fit_summary.txt"):
        assert (directory / name).is_file(), name
    assert {str(p) for p in fitted["outputs"]} >= {str(directory / "cgmm.json"), str(directory / "cgmm.npz")}
    meta = json.loads((directory / "cgmm.json").read_text())
    assert meta["layer"] == "conv5_3"
    assert meta["layer_shape"] == [2, 2, 32]  # 32 px -> 2 x 2 before pool5; 512 channels x 1/16
    assert meta["schema"]["name"] == "synthfaces"
    assert meta["source_checkpoint"].endswith("checkpoints/3")
    assert set(meta["counts"]) == set(fitted["store"].schema.attribute_names)
    # min_count=30 on 256 images excludes the rare attributes, and they are listed, not kept
    assert meta["excluded"], "expected some attributes below min_count=30"
    for name in meta["excluded"]:
        assert meta["counts"][name] < 30
        assert meta["weights"][name] == 0.0
    lambdas = meta["grid"]["lambdas"]
    assert any(np.isclose(meta["chosen_lambda"], lam) for lam in lambdas)
    assert len(meta["fit_losses"]["exact_heldout_error"]) == len(lambdas)
    # the exact ridge solution minimises the training objective: no SGD run of the grid beats it
    losses = meta["fit_losses"]
    sgd_train = np.asarray(losses["sgd_final_train_loss"], np.float64)  # (learning rates, lambdas)
    assert sgd_train.shape == (len(meta["grid"]["lrs"]), len(lambdas))
    assert np.all(sgd_train >= np.asarray(losses["exact_train_loss"]) * (1 - 1e-4))
    gap = meta["extra"]["sgd_exact_gap"]
    assert gap["relative_weight_distance"] >= 0.0
    assert meta["joint"]["num_examples"] == 256
    text = fitted["text"]
    assert "EXCLUDED" in text and all(name in text for name in meta["excluded"])
    assert "chosen lambda" in text and "SGD vs exact" in text
    loaded = store.load_cgmm(directory)
    np.testing.assert_array_equal(loaded.weights, fitted["store"].weights)
    saved = json.loads((directory / "config.json").read_text())
    assert saved["invert"]["steps"] == gen_config().invert.steps
    # the image prior of param='pca': the PCA of the training images as the classifier sees them
    prior = loaded.image_prior
    assert loaded.image_size == 32 and meta["image_prior"]["image_size"] == 32
    report = meta["extra"]["image_prior"]
    assert report["num_images"] == 256 and prior.components == report["components"] <= 255
    np.testing.assert_allclose(np.asarray(prior.basis, np.float64) @ np.asarray(prior.basis, np.float64).T,
                               np.eye(prior.components), atol=1e-3)
    assert np.all(np.diff(prior.std) <= 1e-6)
    assert 0.9 < report["explained_variance"] <= 1.0 + 1e-9, report
    assert "image prior (param='pca')" in text
    # its attribute-conditional form, fitted on the same images
    assert meta["image_joint"]["num_examples"] == 256 and loaded.image_joint.dim == prior.components
    assert 0.0 <= report["conditional_explained"] < 1.0 and "(conditional prior)" in text


def test_image_prior_is_the_pca_of_the_first_training_images(classifier, tmp_path):
    cfg = gen_config(**{"generate.classifier_workdir": str(classifier), "generate.prior_examples": 40,
                        "generate.prior_components": 8, "generate.max_heldout_examples": 64})
    s = fit.fit_cgmm_command(cfg, tmp_path)["store"]
    images = np.stack([r["image"] for r in pipeline.build_source(classifier_config().data, "train")._getitems(
        list(range(40)))]).astype(np.float32) / 255.0
    flat = images.reshape(40, -1).astype(np.float64)
    _, singular, vt = np.linalg.svd(flat - flat.mean(0), full_matrices=False)
    np.testing.assert_allclose(s.image_prior.mean, flat.mean(0), atol=1e-5)
    np.testing.assert_allclose(s.image_prior.std, singular[:8] / np.sqrt(40), rtol=1e-3)
    np.testing.assert_allclose(np.abs(np.asarray(s.image_prior.basis, np.float64) @ vt[:8].T), np.eye(8), atol=1e-3)
    none = fit.fit_cgmm_command(gen_config(**{"generate.classifier_workdir": str(classifier),
                                              "generate.prior_components": 0}), tmp_path / "none")["store"]
    assert none.image_prior is None and "image prior: no" in none.summary()


def test_streamed_sharded_statistics_equal_a_naive_per_image_computation(classifier, fitted):
    means, variances, counts = naive_layer_stats(classifier, "conv5_3")
    s = fitted["store"]
    np.testing.assert_array_equal(s.count, counts)
    keep = s.included
    np.testing.assert_allclose(s.mean[keep], means[keep], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s.var[keep], variances[keep], rtol=1e-3, atol=1e-6)
    assert np.all(np.isnan(s.mean[~keep]))


def test_report_protocol_uses_equal_size_subsets(classifier, tmp_path):
    cfg = gen_config(**{"generate.classifier_workdir": str(classifier), "generate.subset_size": 40,
                        "generate.min_count": 5})
    result = fit.fit_cgmm_command(cfg, tmp_path)
    s = result["store"]
    positives = np.asarray([s.extra["positives"][n] for n in s.schema.attribute_names])
    assert positives.min() < 40 < positives.max()
    np.testing.assert_array_equal(s.count, np.minimum(positives, 40))
    assert not s.excluded
    meta = json.loads((tmp_path / "cgmm" / "cgmm.json").read_text())
    assert meta["extra"]["subset_size"] == 40 and meta["extra"]["classifier_workdir"] == str(classifier)
    assert not (tmp_path / "config.json").exists()  # the classifier's workdir is elsewhere


def test_fit_errors_are_clear(classifier, tmp_path):
    with pytest.raises(fit.FitConfigError, match="valid: conv1_1.*fc7"):
        fit.fit_cgmm_command(gen_config(**{"generate.layer": "heads"}), classifier)
    with pytest.raises(fit.FitConfigError, match="unknown or unusable layer 'conv9_9'"):
        fit.fit_cgmm_command(gen_config(**{"generate.layer": "conv9_9"}), classifier)
    with pytest.raises(fit.FitConfigError, match="no trained classifier.*jaxface train"):
        fit.fit_cgmm_command(gen_config(), tmp_path)
    with pytest.raises(fit.FitConfigError, match="batch_size.*divisible"):
        fit.fit_cgmm_command(gen_config(**{"generate.batch_size": 12}), classifier)
    with pytest.raises(fit.FitConfigError, match="every attribute has fewer than min_count"):
        fit.fit_cgmm_command(gen_config(**{"generate.min_count": 10_000}), classifier)
    with pytest.raises(fit.FitConfigError, match="generate.weights"):
        fit.fit_cgmm_command(gen_config(**{"generate.weights": "best"}), classifier)
    with pytest.raises(fit.FitConfigError, match="prior_components must be >= 0"):
        fit.fit_cgmm_command(gen_config(**{"generate.prior_components": -1}), classifier)
    with pytest.raises(fit.FitConfigError, match="prior_examples must be at least 2"):
        fit.fit_cgmm_command(gen_config(**{"generate.prior_examples": 1}), classifier)
    with pytest.raises(fit.FitConfigError, match="no 'generate' section"):
        fit.fit_cgmm_command(classifier_config(), classifier)
