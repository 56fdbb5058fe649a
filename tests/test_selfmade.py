"""Self-made fakes, the unseen-generator split, native-resolution patches and NPR inputs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxface import config as config_lib
from jaxface import files
from jaxface.data import pipeline, selfmade, sources
from jaxface.models import layers, registry


def _photo(h=40, w=36, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(x / 3.0 + c) * np.cos(y / 5.0) for c in range(3)], -1) * 80 + 128
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


def test_reupsampled_fakes_keep_size_and_leave_their_trace():
    photo = _photo()
    nearest = selfmade.reupsample(photo, "reup_nearest")
    assert nearest.shape == photo.shape and nearest.dtype == np.uint8
    blocks = nearest.reshape(20, 2, 18, 2, 3)
    assert (blocks == blocks[:, :1, :, :1]).all()  # every 2x2 block constant: NPR exactly zero
    residual = np.asarray(layers.npr_residual(jnp.asarray(nearest[None], jnp.float32)))
    assert np.abs(residual).max() == 0 and np.abs(np.asarray(layers.npr_residual(
        jnp.asarray(photo[None], jnp.float32)))).mean() > 1
    for kind in ("reup_bilinear", "reup_tconv", "reup_sharp"):
        fake = selfmade.reupsample(photo, kind)
        assert fake.shape == photo.shape
        assert 0 < np.abs(fake.astype(int) - photo).mean() < 40  # same picture, other pixels
    odd = _photo(41, 37)
    assert selfmade.reupsample(odd, "reup_tconv").shape == odd.shape
    a, b = selfmade.tconv_kernels(0), selfmade.tconv_kernels(1)
    assert np.array_equal(a, selfmade.tconv_kernels(0)) and not np.array_equal(a, b)
    with pytest.raises(selfmade.SelfMadeConfigError, match="valid: reup_nearest"):
        selfmade.reupsample(photo, "stylegan")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("rf")
    for i in range(20):
        files.save_image(root / "real" / f"r{i}.png", _photo(seed=i))
    for i in range(10):
        files.save_image(root / "fake" / "gan" / f"g{i}.png", _photo(seed=100 + i))
        files.save_image(root / "fake" / "swap" / f"s{i}.png", _photo(seed=200 + i))
    return root


def _data_cfg(root, **extra):
    cfg = config_lib.load_config("configs/detect/faces_unseen.py", {"data.image_size": 16})
    cfg.data.root = str(root)
    cfg.data.unseen_generators = ("gan",)
    for k, v in extra.items():
        cfg.data[k] = v
    return cfg.data


def test_self_made_fakes_join_each_split_and_unseen_generators_only_the_test_split(folder):
    by_split = {s: pipeline.build_source(_data_cfg(folder), s) for s in ("train", "val", "test")}
    plain = {s: sources.RealFakeFolder(folder, split=s) for s in by_split}
    for split, src in by_split.items():
        names = src.generator_names
        assert names == ("real", "gan", "swap", "selfmade_reup_nearest", "selfmade_reup_bilinear",
                         "selfmade_reup_tconv")
        base = plain[split]
        reals = int((base.labels == 0).sum())
        gan = int((base.generator_ids == 1).sum())
        kept = len(base) - (gan if split != "test" else 0)
        assert len(src) == kept + 3 * reals == len(src.labels) == len(src.paths)
        ids = [int(src[i]["generator_id"]) for i in range(len(src))]
        assert ids == list(src.generator_ids)
        assert (1 in ids) == (split == "test")  # the unseen generator: test split only
        fake = src[len(src) - 1]
        assert fake["label"] == 1 and fake["image"].shape == (40, 36, 3)
        assert src.paths[-1].endswith("#selfmade_reup_tconv")
        indices = [int(src[i]["index"]) for i in range(len(src))]
        assert len(set(indices)) == len(indices)


def test_self_made_setting_mistakes_are_one_clear_error(folder):
    with pytest.raises(pipeline.DataConfigError, match="'midjourney'.*its generators: gan, swap"):
        pipeline.build_source(_data_cfg(folder, unseen_generators=("midjourney",)), "train")
    with pytest.raises(pipeline.DataConfigError, match="unknown self-made fake kind.*valid: reup_nearest"):
        pipeline.build_source(_data_cfg(folder, self_made=("blur",)), "train")
    cfg = config_lib.load_config("configs/detect/synthfakes_mobilenet.py")
    with cfg.unlocked():
        cfg.data.self_made = ("reup_nearest",)
    with pytest.raises(pipeline.DataConfigError, match="exclude_generators_train"):
        pipeline.build_source(cfg.data, "train")
    with pytest.raises(pipeline.DataConfigError, match="valid: resize, patches"):
        pipeline.check_crop("tiles")


def test_patches_are_native_resolution_at_even_offsets():
    image = np.arange(50 * 45 * 3, dtype=np.int64).reshape(50, 45, 3).astype(np.uint8)
    grid = pipeline.patch_grid(image, 16, 3)
    assert grid.shape == (9, 16, 16, 3)
    assert np.array_equal(grid[0], image[:16, :16]) and np.array_equal(grid[-1], image[34:50, 28:44])
    small = pipeline.pad_to_min_side(_photo(10, 30), 16)
    assert small.shape == (16, 30, 3)  # mirrored out, never resampled
    decode = pipeline.DecodeAndResize(16, crop="patches", patch_grid=2)
    assert decode.map({"image": image})["image"].shape == (4, 16, 16, 3)
    train = pipeline.DecodeAndResize(16, crop="patches", train=True).map({"image": image, "landmarks": np.zeros((5, 2))})
    assert train["image"].shape == image.shape and "landmarks" not in train
    crop = pipeline.RandomPatch(16)
    rng = np.random.default_rng(0)
    offsets = set()
    coords = np.arange(50 * 45 * 3).reshape(50, 45, 3)
    for _ in range(30):
        patch = crop.random_map({"image": coords}, rng)["image"]
        y, x = divmod(int(patch[0, 0, 0]) // 3, 45)
        assert patch.shape == (16, 16, 3) and y % 2 == 0 and x % 2 == 0
        offsets.add((y, x))
    assert len(offsets) > 5


def test_a_detector_scores_patches_as_the_mean_logit_and_takes_npr_inputs():
    model = registry.build_detector("resnet18", input_size=32, width=0.125, depth=0.5, dropout=0.0,
                                    input_transform="npr", rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(0), (2, 3, 32, 32, 3))
    patches = model(x)
    one_by_one = jnp.stack([model(x[:, p]) for p in range(3)], 1).mean(1)
    assert patches.shape == (2, 1) and np.allclose(patches, one_by_one, atol=1e-5)
    # NPR sees only within-block differences: adding a 2x2-block-constant picture changes nothing.
    blocks = jnp.repeat(jnp.repeat(jax.random.uniform(jax.random.key(1), (2, 16, 16, 3)), 2, 1), 2, 2) * 0.3
    assert np.allclose(model(x[:, 0]), model(x[:, 0] + blocks), atol=1e-5)
    with pytest.raises(layers.BackboneConfigError, match="valid: none, npr"):
        registry.build_detector("resnet18", input_size=32, input_transform="fft", rngs=nnx.Rngs(0))
    with pytest.raises(layers.BackboneConfigError, match="does not take an input_transform"):
        registry.build_detector("spectrum", input_size=32, input_transform="npr", rngs=nnx.Rngs(0))


@pytest.mark.slow
def test_unseen_generator_recipe_trains_evaluates_and_predicts_end_to_end(folder, tmp_path):
    from jaxface.evaluate import evaluators, predict
    from jaxface.train import trainer

    cfg = config_lib.load_config("configs/detect/faces_unseen.py", {
        "data.image_size": 32, "model.input_size": 32, "data.patch_grid": 2, "model.width": 0.125,
        "model.depth": 0.5, "batch_size": 16, "eval_batch_size": 16, "num_train_steps": 3,
        "eval_every_steps": 0, "checkpoint_every_steps": 3, "log_every_steps": 1,
        "optimizer.warmup_steps": 0, "evaluate.robustness": False})
    cfg.data.root = str(folder)
    cfg.data.unseen_generators = ("gan",)
    trainer.train(cfg, tmp_path)
    setup = trainer.load_for_inference(tmp_path, cfg)
    metrics = evaluators.evaluate_split(setup, "test")["metrics"]
    assert {"real", "gan", "selfmade_reup_nearest", "selfmade_reup_tconv"} <= set(metrics["per_generator"])
    paths = [str(folder / "real" / "r0.png"), str(folder / "fake" / "gan" / "g0.png")]
    records = predict.predict_command(setup, paths)["records"]
    assert [r["error"] for r in records] == [None, None] and all(0 <= r["p_fake"] <= 1 for r in records)


def test_quarter_turns_are_lossless_and_keep_the_shape():
    from jaxface.data import augment

    cfg = augment.identity_augment_config()
    cfg.rot90.prob = 1.0
    aug = augment.Augmenter(cfg)
    square, wide = _photo(32, 32), _photo(20, 32)
    turned = {aug(square, np.random.default_rng(s)).tobytes() for s in range(12)}
    assert turned == {np.rot90(square, k).tobytes() for k in (1, 2, 3)}
    assert np.array_equal(aug(wide, np.random.default_rng(0)), np.rot90(wide, 2))
