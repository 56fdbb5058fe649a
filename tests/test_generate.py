"""The generate driver: targets -> batched compiled inversion -> images, results and quality metrics."""
import csv
import json

import numpy as np
import pytest
from PIL import Image

from jaxface import files
from jaxface.data import pipeline
from jaxface.evaluate import generation
from jaxface.generate import command as gen
from jaxface.generate import settings as gen_settings
from jaxface.generate import targets as gen_targets
from cgmm_test_utils import classifier_config

pytestmark = pytest.mark.slow  # trains a classifier, fits the cGMM and runs inversions


@pytest.fixture(scope="module")
def workdir(cgmm_workdir):
    """A tiny classifier trained a few steps with a cGMM fitted on it (shared with test_fit_cgmm)."""
    return cgmm_workdir[0]


def read_results(result):
    return json.loads((result["directory"] / "results.json").read_text())


def test_generate_writes_grid_images_and_results(workdir):
    result = gen.generate_command(workdir, attributes="male, Black Hair", num=3, seed=4, verbose=False)
    directory = result["directory"]
    assert directory.parent == workdir / "generate"
    assert (directory / "grid.png").is_file()
    images = [np.asarray(Image.open(directory / "images" / f"{i:03d}.png")) for i in range(3)]
    assert all(im.shape == (32, 32, 3) for im in images)
    assert not (directory / "images" / "003.png").exists()
    records = read_results(result)
    assert len(records) == 3
    for i, r in enumerate(records):
        assert {"attributes", "seed", "settings", "objective", "feature_error", "attribute_probs",
                "hit_rate"} <= set(r)
        assert r["attributes"] == ["Male", "Black Hair"]
        assert r["seed"] == 4 + i
        assert r["settings"]["steps"] == 3 and r["settings"]["mode"] == "mean"
        assert set(r["attribute_probs"]) == {"Male", "Black Hair"}
        assert all(0.0 <= p <= 1.0 for p in r["attribute_probs"].values())
        assert r["hit_rate"] == np.mean(list(r["detected"].values()))
        assert np.isfinite(r["objective"]) and r["feature_error"] >= 0.0
    summary = json.loads((directory / "summary.json").read_text())
    assert summary["mean_hit_rate"] == pytest.approx(np.mean([r["hit_rate"] for r in records]))
    assert "hit rate" in result["text"]


def test_same_seed_gives_identical_images_and_different_seeds_differ(workdir):
    first = gen.generate_command(workdir, attributes="Smiling", num=2, seed=7, name="a", verbose=False)
    again = gen.generate_command(workdir, attributes="Smiling", num=2, seed=7, name="b", verbose=False)
    a = [np.asarray(Image.open(first["directory"] / "images" / f"{i:03d}.png")) for i in range(2)]
    b = [np.asarray(Image.open(again["directory"] / "images" / f"{i:03d}.png")) for i in range(2)]
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert np.mean(np.abs(a[0].astype(float) - a[1].astype(float))) > 1.0  # seeds 7 and 8


def test_sample_targets_vary_by_seed_and_mean_targets_do_not(workdir):
    ctx = gen_targets.load_context(workdir)
    names, indices = gen_targets.resolve_set(ctx.store, "Male, Smiling")
    settings = gen_settings.Settings()

    def targets(mode, model, seeds):
        items = [gen_targets.Item(0, names, indices, s, mode, model, "invert", settings) for s in seeds]
        return gen_targets.item_targets(ctx, items)

    for model in ("cgmm", "joint"):
        mean = targets("mean", model, [0, 1, 2])
        np.testing.assert_array_equal(mean[0], mean[1])
        sample = targets("sample", model, [0, 1, 2])
        assert generation.diversity(sample[:, None, None, :]) > 0.0
        assert not np.allclose(sample[0], sample[1])
        # an item's sample depends on its seed only, not on its position or batch
        np.testing.assert_allclose(targets("sample", model, [2])[0], sample[2], rtol=1e-5, atol=1e-6)
    result = gen.generate_command(workdir, attributes="Male, Smiling", num=3, mode="sample",
                                  model="joint", verbose=False)
    assert all(r["settings"]["mode"] == "sample" and r["settings"]["model"] == "joint" for r in read_results(result))


def test_reconstruct_writes_the_input_and_its_reconstruction_side_by_side(workdir, tmp_path):
    record = pipeline.build_source(classifier_config().data, "test")[0]
    path = files.save_image(tmp_path / "face.png", record["image"])
    result = gen.generate_command(workdir, reconstruct=str(path), verbose=False)
    directory = result["directory"]
    side = np.asarray(Image.open(directory / "reconstruction.png"))
    assert side.shape == (32 + 4, 2 * 32 + 6, 3)  # input | reconstruction, 2 px padding
    np.testing.assert_array_equal(np.asarray(Image.open(directory / "input.png")), record["image"])
    (r,) = read_results(result)
    assert r["input"] == str(path)
    assert np.isfinite(r["feature_error"]) and 0.0 <= r["head_agreement"] <= 1.0
    assert "feature error" in result["text"]
    assert r["settings"]["layers"] == ["conv5_3"]
    assert r["layer_feature_errors"]["conv5_3"] == pytest.approx(r["feature_error"], rel=1e-3, abs=1e-5)


def test_reconstruct_from_several_layers_reports_each(workdir, tmp_path):
    record = pipeline.build_source(classifier_config().data, "test")[1]
    path = files.save_image(tmp_path / "face.png", record["image"])
    result = gen.generate_command(workdir, reconstruct=str(path), layers="conv2_2, conv5_3", num=2,
                                  verbose=False)
    records = read_results(result)
    assert len(records) == 2
    for r in records:
        assert r["settings"]["layers"] == ["conv2_2", "conv5_3"]
        errors = r["layer_feature_errors"]
        assert set(errors) == {"conv2_2", "conv5_3"} and all(np.isfinite(e) for e in errors.values())
        # the objective is their mean plus the prior (settings from the fitted config)
        assert r["objective"] >= 0.5 * (errors["conv2_2"] + errors["conv5_3"]) - 1e-6
    assert "at conv2_2" in result["text"]


def test_sweep_groups_equal_settings_into_one_batched_call_and_writes_summaries(workdir, tmp_path):
    sweep = [
        {"attributes": "Male", "seeds": [0, 1]},
        {"attributes": ["Smiling", "Bangs"], "num": 2, "mode": "sample", "model": "joint"},
        # a different setting makes its own group (max_batch only splits calls: no new compilation)
        {"attributes": "Eyeglasses", "seeds": [3], "settings": {"max_batch": 4}, "label": "glasses"},
        {"attributes": "Wearing Hat", "seeds": [5, 6], "method": "classvis"},
    ]
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(sweep))
    result = gen.generate_command(workdir, sweep=str(path), verbose=False)
    # entries 0 and 1 differ only in targets (data): one compiled call; the others need their own
    assert result["groups"] == 3 and result["calls"] == 3
    directory = result["directory"]
    labels = [s["label"] for s in result["summary"]]
    assert labels[2] == "glasses"
    for label, n in zip(labels, (2, 2, 1, 2)):
        assert (directory / label / "grid.png").is_file()
        assert len(list((directory / label / "images").glob("*.png"))) == n
    records = read_results(result)
    assert [r["set"] for r in records] == [0, 0, 1, 1, 2, 3, 3]
    assert records[-1]["settings"]["method"] == "classvis" and records[-1]["settings"]["init"] == "mean"
    summaries = json.loads((directory / "summary.json").read_text())
    assert [s["num_images"] for s in summaries] == [2, 2, 1, 2]
    for s in summaries:
        assert {"mean_hit_rate", "mean_feature_error", "diversity"} <= set(s)
    assert np.isnan(summaries[2]["diversity"])  # one image: no pairs
    rows = list(csv.DictReader((directory / "summary.csv").open()))
    assert [r["label"] for r in rows] == labels
    assert float(rows[0]["diversity"]) == pytest.approx(summaries[0]["diversity"], abs=1e-5)


def test_an_interrupted_sweep_keeps_its_images_and_a_rerun_renders_only_the_rest(workdir, tmp_path, monkeypatch):
    from jaxface.generate import sweep as sweep_lib

    entries = [{"attributes": "Male", "seeds": [0, 1, 2], "settings": {"max_batch": 1}, "steps": 3}]
    path = tmp_path / "resume.json"
    path.write_text(json.dumps(entries))
    reference = gen.generate_command(workdir, sweep=str(path), name="whole", verbose=False)
    assert reference["calls"] == 3 and reference["reused"] == 0
    assert not (reference["directory"] / sweep_lib.PARTIAL_DIR).exists()  # removed once the outputs exist

    from jaxface.generate import rendering

    real_render, calls = rendering.render_items, []

    def ctrl_c_on_the_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_render(*args, **kwargs)

    monkeypatch.setattr(rendering, "render_items", ctrl_c_on_the_second_batch)
    with pytest.raises(sweep_lib.SweepInterrupted, match=r"1 of 3 image\(s\) are kept in .*partial; run the same"):
        gen.generate_command(workdir, sweep=str(path), name="cut", verbose=False)
    directory = reference["directory"].parent / "cut"
    assert len(list((directory / sweep_lib.PARTIAL_DIR).glob("*.npz"))) == 1
    assert not (directory / "results.json").exists()
    monkeypatch.setattr(rendering, "render_items", real_render)
    # A changed sweep (other steps) reuses nothing; the same sweep renders only the two missing images.
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps([dict(entries[0], steps=2)]))
    assert gen.generate_command(workdir, sweep=str(changed), name="cut_other", verbose=False)["reused"] == 0
    resumed = gen.generate_command(workdir, sweep=str(path), name="cut", verbose=False)
    assert resumed["calls"] == 2 and resumed["reused"] == 1
    assert "1 reused from an interrupted run" in resumed["text"]
    assert not (directory / sweep_lib.PARTIAL_DIR).exists()
    for a, b in zip(read_results(reference), read_results(resumed)):
        assert a["seed"] == b["seed"] and a["hit_rate"] == b["hit_rate"]
        assert a["feature_error"] == pytest.approx(b["feature_error"], rel=1e-4, abs=1e-6)
    label = reference["summary"][0]["label"]
    for k in range(3):
        same = [np.asarray(Image.open(d / label / "images" / f"{k:03d}.png")) for d in (reference["directory"], directory)]
        np.testing.assert_allclose(same[0].astype(int), same[1].astype(int), atol=1)
    reserved = tmp_path / "reserved.json"
    reserved.write_text(json.dumps([{"attributes": "Male", "label": sweep_lib.PARTIAL_DIR}]))
    with pytest.raises(gen_settings.GenerateError, match="label 'partial' is reserved"):
        gen.generate_command(workdir, sweep=str(reserved), verbose=False)


def test_user_errors_are_clear(workdir, tmp_path):
    store = gen_targets.load_context(workdir).store
    assert store.excluded, "the fixture's min_count should exclude a rare attribute"
    excluded = store.excluded_names[0]
    cases = [
        (dict(attributes="Male, Wizard Hat"), r"unknown attribute 'Wizard Hat'.*valid names: .*Male"),
        (dict(attributes=" , "), r"no attributes given.*valid names"),
        (dict(attributes=excluded), rf"{excluded}.*excluded.*min_count"),
        (dict(attributes="Black Hair, Blond Hair"), r"mutually exclusive"),
        (dict(attributes="Male", mode="median"), r"unknown mode 'median'; valid: mean, sample"),
        (dict(attributes="Male", model="vae"), r"unknown model 'vae'; valid: cgmm, joint"),
        (dict(attributes="Male", method="dream"), r"unknown method 'dream'; valid: invert, classvis"),
        (dict(attributes="Male", num=0), r"num must be a positive integer"),
        (dict(attributes="Male", steps=0), r"--steps must be a positive integer"),
        (dict(attributes="Male", strength=0), r"--strength: strength must be a positive number"),
        (dict(attributes="Male", strength=float("nan")), r"--strength: strength must be a positive number"),
        (dict(attributes="Male", name="../x"), r"--name"),
        (dict(attributes="Male", sweep="x.json"), r"give one of"),
        (dict(attributes="Male", layers="conv2_2"), r"--layers applies to --reconstruct only"),
        (dict(), r"no attributes given"),
    ]
    for kwargs, pattern in cases:
        with pytest.raises(gen_settings.GenerateError, match=pattern):
            gen.generate_command(workdir, verbose=False, **kwargs)

    with pytest.raises(gen_settings.GenerateError, match=r"no fitted cGMM.*fit-cgmm"):
        gen.generate_command(tmp_path, attributes="Male", verbose=False)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(gen_settings.GenerateError, match=r"--reconstruct: cannot decode image .*broken.png"):
        gen.generate_command(workdir, reconstruct=str(bad), verbose=False)
    with pytest.raises(gen_settings.GenerateError, match=r"--reconstruct: cannot decode image .*missing.png"):
        gen.generate_command(workdir, reconstruct=str(tmp_path / "missing.png"), verbose=False)
    face = files.save_image(tmp_path / "face.png", np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(gen_settings.GenerateError, match=r"--layers: unknown or unusable layer 'conv9_9'.*valid: conv1_1"):
        gen.generate_command(workdir, reconstruct=str(face), layers="conv9_9", verbose=False)
    with pytest.raises(gen_settings.GenerateError, match=r"--layers=.*distinct"):
        gen.generate_command(workdir, reconstruct=str(face), layers="conv5_3,conv5_3", verbose=False)

    sweeps = [
        ([{"attributes": "Male", "colour": "red"}], r"sweep entry 0: unknown key\(s\) 'colour'"),
        ([{"attributes": "Male"}, {"attributes": "Bogus"}], r"sweep entry 1: unknown attribute 'Bogus'"),
        ([{"attributes": "Male", "settings": {"learning_rate": 1}}], r"unknown sweep entry 0 settings key"),
        ([{"attributes": "Male", "seeds": [-1]}], r"seeds must be integers"),
        ([{"attributes": "Male", "settings": {"param": "wavelet"}}], r"param='wavelet'; valid: pixels, fft, pca"),
        ([{"attributes": "Male", "settings": {"param": "fft", "prior_weight": 0.1}}], r"prior_weight=0.1 needs param='pca'"),
        ([], r"non-empty JSON list"),
    ]
    for n, (entries, pattern) in enumerate(sweeps):
        path = tmp_path / f"sweep{n}.json"
        path.write_text(json.dumps(entries))
        with pytest.raises(gen_settings.GenerateError, match=pattern):
            gen.generate_command(workdir, sweep=str(path), verbose=False)
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(gen_settings.GenerateError, match=r"not valid JSON"):
        gen.generate_command(workdir, sweep=str(tmp_path / "bad.json"), verbose=False)


def test_pca_without_a_fitted_image_prior_is_refused_with_the_remedy(workdir, tmp_path):
    import shutil
    from jaxface.cgmm import store as store_lib

    other = tmp_path / "w"
    shutil.copytree(workdir / "cgmm", other / "cgmm")
    config = json.loads((other / "cgmm" / "config.json").read_text())
    config["generate"]["classifier_workdir"] = str(workdir)
    (other / "cgmm" / "config.json").write_text(json.dumps(config))
    fitted = store_lib.load_cgmm(other / "cgmm")
    fitted.image_prior, fitted.image_size, fitted.image_joint = None, None, None
    store_lib.save_cgmm(other / "cgmm", fitted)
    with pytest.raises(gen_settings.GenerateError, match=r"param='pca' needs the image prior.*prior_components > 0"):
        gen.generate_command(other, attributes="Male", num=1, verbose=False)


def test_strength_scales_the_targets_departure_from_the_mean_activation(workdir):
    ctx = gen_targets.load_context(workdir)
    names, indices = gen_targets.resolve_set(ctx.store, "Male,Smiling")
    settings = gen_settings.settings_from_config(ctx.config, "invert")
    items = [gen_targets.Item(0, names, indices, 0, "mean", "cgmm", "invert", settings, strength)
             for strength in (1.0, 2.0)]
    base, doubled = gen_targets.item_targets(ctx, items)
    mean = np.asarray(ctx.store.overall_mean, np.float32)
    np.testing.assert_allclose(doubled, np.maximum(mean + 2.0 * (base - mean), 0.0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(doubled, base)


def test_edit_starts_from_held_out_exemplars_and_other_items_of_its_batch_are_unchanged(workdir):
    from jaxface.cgmm import image_prior
    from jaxface.generate import rendering, starts

    ctx = gen_targets.load_context(workdir)
    names, indices = gen_targets.resolve_set(ctx.store, "Male")
    base = gen_settings.settings_from_config(ctx.config, "invert")
    edit_settings = starts.item_settings(base, "edit")
    assert (edit_settings.init, edit_settings.noise_std, edit_settings.param, edit_settings.steps) == (
        "exemplar", 0.0, "pixels", 100)
    assert starts.item_settings(base, "edit", {"noise_std": 0.3}).noise_std == base.noise_std
    assert starts.item_settings(base, "sample") == base
    pool = starts.exemplar_pool(ctx, indices)
    assert len(pool) > 0
    # An edit with (almost) no optimisation is its exemplar: in pixels exactly, with param='pca' its
    # projection on the prior's subspace, where the prior is centred
    still = {"steps": 1, "lr": 1e-6, "jitter": 0, "blur_every": 0}
    prior, size = ctx.store.image_prior, ctx.clf.input_size
    for overrides in ({}, {"param": "pca"}):
        settings = starts.item_settings(base.replace({**still, **overrides}), "edit", overrides)
        edit = [gen_targets.Item(0, names, indices, s, "edit", "joint", "invert", settings, 3.0) for s in (0, 1)]
        rendered = rendering.render_items(ctx, edit, verbose=False)
        start, extra = starts.item_starts(ctx, settings, edit)
        for row, seed in enumerate((0, 1)):
            exemplar = pool[seed % len(pool)]
            np.testing.assert_allclose(start[row], exemplar)
            if overrides:
                exemplar = np.clip(image_prior.coefficient_image(
                    prior, image_prior.coefficients(prior, exemplar[None]), size, size)[0], 0, 1)
                np.testing.assert_allclose(extra["prior_mean"][row], image_prior.coefficients(prior, pool[seed % len(pool)][None])[0], atol=1e-5)
            else:
                assert extra == {}
            np.testing.assert_allclose(rendered["images"][row], exemplar, atol=2e-3)
    # its target: the exemplar's activation plus strength x (the model's mean target - the mean activation)
    feats = rendering.classify_images(ctx.clf, pool[:1])[0]
    item = lambda seed, mode: gen_targets.Item(0, names, indices, seed, mode, "joint", "invert",  # noqa: E731
                                               edit_settings, 3.0)
    plain = gen_targets.Item(0, names, indices, 0, "mean", "joint", "invert", edit_settings, 1.0)
    t_mean = gen_targets.item_targets(ctx, [plain])[0]
    t_edit = gen_targets.item_targets(ctx, [item(0, "edit")], feats)[0]
    np.testing.assert_allclose(t_edit, np.maximum(feats[0] + 3.0 * (t_mean - ctx.store.overall_mean), 0.0),
                               rtol=1e-5, atol=1e-5)
    # a mean-target item batched with an edit (settings shared) starts where it would alone
    shared = lambda seed, mode: gen_targets.Item(0, names, indices, seed, mode, "joint", "invert", base, 3.0)  # noqa: E731
    mixed = rendering.render_items(ctx, [shared(5, "mean"), shared(0, "edit")], verbose=False)
    alone = rendering.render_items(ctx, [shared(5, "mean")], verbose=False)
    np.testing.assert_allclose(mixed["images"][0], alone["images"][0], atol=1e-5)
    result = gen.generate_command(workdir, attributes="Male", num=2, mode="edit", model="joint", steps=2,
                                  verbose=False)
    assert all(r["settings"]["mode"] == "edit" and r["settings"]["init"] == "exemplar" and r["settings"]["steps"] == 2
               for r in read_results(result))


def test_the_conditional_prior_starts_from_its_mean_for_the_request_and_refuses_what_it_cannot_do(workdir, tmp_path):
    from jaxface.cgmm import image_prior
    from jaxface.generate import rendering, starts

    ctx = gen_targets.load_context(workdir)
    assert ctx.store.image_joint is not None and ctx.store.image_joint.dim == ctx.store.image_prior.components
    names, indices = gen_targets.resolve_set(ctx.store, "Male, Smiling")
    settings = gen_settings.settings_from_config(ctx.config, "invert").replace(
        {"prior": "conditional", "steps": 1, "lr": 1e-6, "jitter": 0, "blur_every": 0, "noise_std": 0.0})
    items = [gen_targets.Item(0, names, indices, 0, "mean", "joint", "invert", settings, 1.0)]
    mean, std = starts.conditional_prior(ctx, items)
    assert np.all(std > 0) and np.all(std <= 1.5)
    rendered = rendering.render_items(ctx, items, verbose=False)
    size = ctx.clf.input_size
    np.testing.assert_allclose(
        rendered["images"][0], np.clip(image_prior.coefficient_image(ctx.store.image_prior, mean, size, size)[0], 0, 1),
        atol=2e-3)
    # refine_steps: more steps on the pixels, from the subspace's image, leave the subspace
    refined = rendering.render_items(ctx, [gen_targets.Item(0, names, indices, 0, "mean", "joint", "invert", settings.replace(
        {"refine_steps": 2, "lr": 0.05}), 1.0)], verbose=False)["images"]
    projection = image_prior.coefficient_image(
        ctx.store.image_prior, image_prior.coefficients(ctx.store.image_prior, refined), size, size)
    assert np.abs(refined - projection).max() > 1e-3
    with pytest.raises(gen_settings.GenerateError, match="refine_steps must be >= 0"):
        settings.replace({"refine_steps": -1})
    with pytest.raises(gen_settings.GenerateError, match="prior='conditional' is a prior on param='pca'"):
        settings.replace({"param": "fft", "prior_weight": 0.0})
    with pytest.raises(gen_settings.GenerateError, match="prior='bogus'; valid: global, conditional"):
        settings.replace({"prior": "bogus"})
    with pytest.raises(gen_settings.GenerateError, match="init='x'; valid: noise, mean, exemplar"):
        settings.replace({"init": "x"})
    ctx.store.image_joint = None
    with pytest.raises(gen_settings.GenerateError, match="conditional image prior, which this fitted model lacks.*rerun fit-cgmm"):
        starts.conditional_prior(ctx, items)
    with pytest.raises(gen_settings.GenerateError, match="unknown mode 'edits'; valid: mean, sample, edit"):
        gen.generate_command(workdir, attributes="Male", num=1, mode="edits", verbose=False)

