"""Behaviour of the compiled, batched image optimisation (jaxface.invert) on a tiny conv net."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxface.cgmm import image_prior
from jaxface.invert import objectives, param, render, transforms
from jaxface.kernels import onednn

SIZE = 32


def _conv_net(key, widths=(8, 16, 16)):
    weights, cin = [], 3
    for cout in widths:
        key, k = jax.random.split(key)
        weights.append(jax.random.normal(k, (3, 3, cin, cout)) * np.sqrt(2.0 / (9 * cin)))
        cin = cout
    return weights


def _features(weights, images):
    x = images - 0.5
    for i, w in enumerate(weights):
        x = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        x = jax.nn.relu(x)
        if i < len(weights) - 1:
            x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    return x


@pytest.fixture(scope="module")
def problem():
    weights = _conv_net(jax.random.key(0))
    images = _smooth_images(4, 1)
    return weights, images, jax.jit(_features)(weights, images)


@jax.jit
def _blur_noise(key):
    noise = jax.random.uniform(key, (4, SIZE, SIZE, 3))
    return jnp.clip(0.5 + 2.0 * (transforms.gaussian_blur(noise, 1.5) - 0.5), 0, 1)


def _smooth_images(n, seed):
    """Images with structure at several scales (blurred noise), in [0, 1]."""
    return _blur_noise(jax.random.key(seed))[:n]


def _high_frequency_energy(images):
    spectrum = np.abs(np.fft.fft2(np.asarray(images), axes=(1, 2))) ** 2
    freqs = np.sqrt(np.fft.fftfreq(SIZE)[:, None] ** 2 + np.fft.fftfreq(SIZE)[None, :] ** 2)
    return spectrum[:, freqs > 0.25].sum(axis=(1, 2))


# Shared settings: runs with the same static configuration reuse one compiled program, which keeps
# this file fast (compilation dominates at this size).
COMMON = dict(size=SIZE, lr=0.05, jitter=2, blur_every=2, blur_sigma=1.0, tv_weight=0.05, chunk=3)


def _invert(problem, **kw):
    weights, _, targets = problem
    targets = kw.pop("targets", targets)
    settings = {**COMMON, "key": jax.random.key(7), "steps": 6, "loop": "unrolled", **kw}
    return render.invert((_features, weights), targets, **settings)


@pytest.fixture(scope="module")
def reference(problem):
    """The common settings on the 4 problem targets, unsharded, unrolled loop."""
    return _invert(problem)


@pytest.mark.slow
def test_reconstruction_reduces_normalised_feature_error(problem):
    weights, _, targets = problem
    key = jax.random.key(3)
    result = render.invert(
        (_features, weights), targets, key=key, steps=60, size=SIZE, lr=0.05, tv_weight=0.05,
        loop="scan", chunk=20,
    )
    params, image_param = param.make_param("pixels", 4, SIZE, key)
    initial = np.asarray(
        objectives.normalized_feature_error(_features(weights, image_param(params)), targets)
    )
    assert np.all(initial > 0.3), initial
    assert np.all(result.feature_error < 0.25 * initial), (initial, result.feature_error)
    assert result.images.shape == (4, SIZE, SIZE, 3) and result.images.dtype == np.float32
    assert result.images.min() >= 0.0 and result.images.max() <= 1.0
    assert [h["step"] for h in result.history] == [20, 40, 60]
    assert result.history[-1]["feature_match"].shape == (4,)


def test_jitter_draws_differ_across_items_and_depend_only_on_the_item():
    config = transforms.make_transform_config(jitter=4, scales=(0.9, 1.0, 1.1), rotate_degrees=10)
    keys = param.item_keys(jax.random.key(0), jnp.arange(8))
    draws = render.sample_all_draws(config, keys, 5)
    offsets = np.asarray(draws.offsets)  # (items, steps, 2)
    assert offsets.shape == (8, 5, 2)
    assert len({tuple(o) for o in offsets[:, 0]}) > 1, "items share their jitter"
    assert len({tuple(o) for o in offsets[0]}) > 1, "an item repeats its jitter every step"
    assert np.abs(offsets).max() <= 4
    # Item 5's draws are the same when it is drawn alone.
    alone = render.sample_all_draws(config, param.item_keys(jax.random.key(0), jnp.array([5])), 5)
    np.testing.assert_array_equal(np.asarray(alone.offsets)[0], offsets[5])
    np.testing.assert_array_equal(np.asarray(alone.angles)[0], np.asarray(draws.angles)[5])
    # The transforms move identical images differently.
    images = jnp.broadcast_to(_smooth_images(1, 2), (8, SIZE, SIZE, 3))
    moved = np.asarray(jax.jit(transforms.apply_transforms, static_argnums=0)(config, images, keys))
    assert moved.shape == images.shape
    assert not np.allclose(moved[0], moved[1])


def test_shift_matches_reflect_padded_crop():
    images = _smooth_images(2, 4)
    offsets = jnp.array([[2, -1], [-3, 0]])
    out = np.asarray(jax.jit(transforms.shift, static_argnums=2)(images, offsets, 3))
    padded = np.pad(np.asarray(images), ((0, 0), (3, 3), (3, 3), (0, 0)), mode="reflect")
    for b, (dy, dx) in enumerate(np.asarray(offsets)):
        np.testing.assert_array_equal(out[b], padded[b, 3 + dy : 3 + dy + SIZE, 3 + dx : 3 + dx + SIZE])


def test_item_result_does_not_depend_on_the_rest_of_the_batch(problem, reference):
    _, _, targets = problem
    # Item 1 (target 1) among other items, at another position: same result as in the reference batch.
    mixed = _invert(problem, targets=targets[jnp.array([3, 2, 1, 0])], item_ids=[7, 5, 1, 6])
    np.testing.assert_allclose(mixed.images[2], reference.images[1], atol=1e-4)
    assert np.abs(mixed.images[0] - reference.images[3]).mean() > 1e-3  # id 7 is not id 3
    # The reference batch reversed: every item keeps its own result.
    reordered = _invert(problem, targets=targets[::-1], item_ids=[3, 2, 1, 0])
    np.testing.assert_allclose(reordered.images[::-1], reference.images, atol=1e-4)


def test_seeds_reproduce_and_differ(problem, reference):
    again = _invert(problem)
    other = _invert(problem, key=jax.random.key(8))
    np.testing.assert_array_equal(again.images, reference.images)
    np.testing.assert_array_equal(again.objective, reference.objective)
    assert np.abs(reference.images - other.images).mean() > 1e-3
    # Items of one batch start from different noise, so they differ too.
    assert np.abs(reference.images[0] - reference.images[1]).mean() > 1e-3


@pytest.mark.slow
def test_loop_forms_agree(problem, reference):
    for loop in ("python", "scan"):
        result = _invert(problem, loop=loop)
        np.testing.assert_allclose(result.images, reference.images, atol=2e-5, err_msg=loop)
        np.testing.assert_allclose(result.objective, reference.objective, rtol=1e-4, err_msg=loop)
        assert [h["step"] for h in result.history] == [3, 6]
        np.testing.assert_allclose(
            result.history[-1]["objective"], reference.history[-1]["objective"], rtol=1e-4
        )
    # The test backend is the CPU with 8 devices: XLA's convolution, so unrolled chunks.
    assert render.resolve_loop("auto") == "unrolled"
    if onednn.unavailable_reason() is None:
        with onednn.forced("onednn"):  # one-device runs on oneDNN take the scan
            assert render.resolve_loop("auto") == "scan"
            assert render.resolve_loop("auto", jax.make_mesh((8,), ("data",))) == "unrolled"
    with onednn.forced("xla"):
        assert render.resolve_loop("auto") == "unrolled"


@pytest.mark.slow
def test_sharded_over_eight_devices_equals_one_device(problem, reference):
    assert jax.device_count() == 8, "tests/conftest.py should give 8 simulated CPU devices"
    mesh8 = jax.make_mesh((8,), ("data",))
    seen = []
    # 4 items on 8 devices: padded to 8, the pads dropped.
    sharded = _invert(problem, mesh=mesh8, progress=lambda s, m: seen.append((s, m)))
    assert sharded.images.shape == (4, SIZE, SIZE, 3)
    np.testing.assert_allclose(sharded.images, reference.images, atol=1e-4)
    np.testing.assert_allclose(sharded.feature_error, reference.feature_error, rtol=1e-3)
    assert [s for s, _ in seen] == [3, 6] and seen[-1][1]["objective"].shape == (4,)


@pytest.mark.slow
def test_blur_every_k_reduces_high_frequency_energy(problem, reference):
    no_blur = _invert(problem, blur_every=0)
    assert np.all(_high_frequency_energy(reference.images) < 0.5 * _high_frequency_energy(no_blur.images))
    noise = jax.random.uniform(jax.random.key(0), (2, SIZE, SIZE, 3))
    once = jax.jit(transforms.gaussian_blur, static_argnums=1)(noise, 1.0)
    assert np.all(_high_frequency_energy(once) < 0.2 * _high_frequency_energy(noise))
    np.testing.assert_allclose(np.asarray(once).mean(), np.asarray(noise).mean(), atol=1e-3)


@pytest.mark.parametrize("kind,mode", [("fft", "sigmoid"), ("pixels", "sigmoid"), ("pixels", "clip")])
def test_parameterisation_round_trips_an_init_image(kind, mode):
    image = np.asarray(_smooth_images(1, 5)[0]) * 0.9 + 0.05
    params, image_param = param.make_param(
        kind, 2, SIZE, jax.random.key(0), init_image=image, noise_std=0.0, pixel_mode=mode
    )
    images = jax.jit(image_param.to_image)(params)
    np.testing.assert_allclose(np.asarray(images), np.broadcast_to(image, (2,) + image.shape), atol=1e-4)
    assert params.shape == image_param.param_shape(2)


def test_fft_parameterisation_scales_low_frequencies_up():
    params, image_param = param.make_param("fft", 1, SIZE, jax.random.key(0))
    scale = param.spectrum_scale(SIZE, SIZE, 1.0)
    assert scale[0, 1] > 10 * scale[SIZE // 2, SIZE // 2]
    np.testing.assert_allclose(np.sqrt(np.mean(scale**2)), 1.0, rtol=1e-5)
    # A unit step in one low-frequency parameter moves the image more than one in a high frequency.
    to_image = jax.jit(image_param.to_image)
    base = to_image(params)
    low = params.at[0, 0, 0, 1, 0].add(1.0)
    high = params.at[0, 0, SIZE // 2, SIZE // 2, 0].add(1.0)
    assert np.abs(to_image(low) - base).sum() > 5 * np.abs(to_image(high) - base).sum()


@pytest.fixture(scope="module")
def prior():
    """PCA prior of 40 smooth 32 px images, 12 components."""
    images = np.concatenate([np.asarray(_smooth_images(4, seed)) for seed in range(10, 20)])
    return image_prior.fit_image_prior(images, 12)


def test_image_prior_is_the_pca_of_its_images(prior):
    images = np.concatenate([np.asarray(_smooth_images(4, seed)) for seed in range(10, 20)])
    prior, report = prior
    flat = images.reshape(len(images), -1).astype(np.float64)
    # Reference: SVD of the centred data matrix.
    _, singular, vt = np.linalg.svd(flat - flat.mean(0), full_matrices=False)
    np.testing.assert_allclose(prior.mean, flat.mean(0), atol=1e-6)
    np.testing.assert_allclose(prior.std, singular[:12] / np.sqrt(len(flat)), rtol=1e-4)
    overlap = np.abs(np.asarray(prior.basis, np.float64) @ vt[:12].T)  # same directions up to sign
    np.testing.assert_allclose(overlap, np.eye(12), atol=1e-3)
    assert report == dict(num_images=40, components=12,
                          explained_variance=pytest.approx(np.sum(singular[:12] ** 2) / np.sum(singular**2)))
    # Coefficients of the training images are whitened: unit variance along every component.
    coeffs = param.make_image_param("pca", SIZE, prior=prior).from_image(images, prior)
    np.testing.assert_allclose(np.var(np.asarray(coeffs), axis=0), 1.0, rtol=1e-3)


def test_pca_parameterisation_round_trips_and_starts_from_the_prior(prior):
    prior, _ = prior
    image_param = param.make_image_param("pca", SIZE, prior=prior)
    coeffs = 0.5 * jax.random.normal(jax.random.key(1), (3, 12))
    images = image_param.to_image(coeffs, prior)
    assert images.shape == (3, SIZE, SIZE, 3) and image_param.param_shape(3) == (3, 12)
    inner = (images > 0) & (images < 1)  # away from the clip, the map is linear and invertible
    assert inner.mean() > 0.95
    np.testing.assert_allclose(image_param.from_image(images, prior), coeffs, atol=0.05)
    # Starts: the mean image without noise; per-item coefficient noise of the asked size otherwise.
    start, _ = param.make_param("pca", 2, SIZE, jax.random.key(0), noise_std=0.0, prior=prior)
    np.testing.assert_allclose(start, 0.0, atol=1e-5)
    noisy, _ = param.make_param("pca", 512, SIZE, jax.random.key(0), noise_std=0.5, prior=prior)
    assert abs(float(np.std(noisy)) - 0.5) < 0.02
    one, _ = param.make_param("pca", 1, SIZE, jax.random.key(0), noise_std=0.5, prior=prior, item_ids=[7])
    np.testing.assert_allclose(one[0], noisy[7], atol=1e-6)


@pytest.mark.slow
def test_pca_inversion_with_its_prior_matches_features_and_shards(problem, prior):
    prior, _ = prior
    weights, images, targets = problem
    kw = dict(param="pca", image_prior=prior, prior_weight=0.01, noise_std=0.5, blur_every=0, tv_weight=0.0)
    start = _invert(problem, steps=1, **kw)
    result = _invert(problem, steps=30, **kw)
    assert np.all(result.feature_error < 0.7 * start.feature_error)
    assert set(result.terms) == {"feature_match", "coefficient_prior"}
    # Every image lies in the prior's subspace (up to clipping).
    image_param = param.make_image_param("pca", SIZE, prior=prior)
    projected = image_param.to_image(image_param.from_image(result.images, prior), prior)
    np.testing.assert_allclose(projected, result.images, atol=2e-3)
    sharded = _invert(problem, steps=30, mesh=jax.make_mesh((8,), ("data",)), **kw)
    np.testing.assert_allclose(sharded.images, result.images, atol=1e-4)
    # A larger prior weight pulls the coefficients towards the prior's mean face.
    strong = _invert(problem, steps=30, **{**kw, "prior_weight": 10.0})
    assert np.all(strong.terms["coefficient_prior"] < 0.5 * result.terms["coefficient_prior"])


class _TinyClassifier(nnx.Module):
    def __init__(self, head_sizes, rngs):
        self.conv = nnx.Conv(3, 8, (3, 3), strides=(2, 2), rngs=rngs)
        self.heads = nnx.List([nnx.Linear(8, n, rngs=rngs) for n in head_sizes])

    def __call__(self, x, *, train: bool = False):
        h = jnp.mean(jax.nn.relu(self.conv(x)), axis=(1, 2))
        return [head(h) for head in self.heads]


def _head_logits(module, images):
    return module(images)


@pytest.mark.slow
def test_class_visualisation_pushes_chosen_heads():
    model = _TinyClassifier((3, 2), nnx.Rngs(0))
    mean_image = np.full((SIZE, SIZE, 3), 0.45, np.float32)
    head_targets = np.array([[2, -1], [0, 1]], np.int32)
    result = render.class_visualize(
        render.nnx_model_fn(model, _head_logits), head_targets, key=jax.random.key(0), steps=30,
        size=SIZE, init_image=mean_image, noise_std=0.02, lr=0.05, loop="scan", chunk=15,
    )
    logits = model(jnp.asarray(result.images))
    start = model(jnp.asarray(np.broadcast_to(mean_image, (2, SIZE, SIZE, 3))))
    for b, targets in enumerate(head_targets):
        for h, t in enumerate(targets):
            if t >= 0:
                before = jax.nn.log_softmax(start[h][b])[t]
                after = jax.nn.log_softmax(logits[h][b])[t]
                assert after > before + 0.05, (b, h, before, after)
    assert result.feature_error is None and "heads" in result.terms
    assert result.history[-1]["heads"].shape == (2,)


def test_objective_algebra_and_head_scores():
    obj = objectives.feature_match() + 0.5 * objectives.total_variation() - objectives.l2_decay()
    assert obj.names == ("feature_match", "total_variation", "l2_decay")
    assert [t.weight for t in obj.terms] == [1.0, 0.5, -1.0]
    # Equal construction gives equal (hashable) objectives, so compiled steps are reused.
    assert obj == objectives.feature_match() + 0.5 * objectives.total_variation() - objectives.l2_decay()
    logits = [jnp.log(jnp.array([[0.2, 0.8]])), jnp.log(jnp.array([[0.5, 0.25, 0.25]]))]
    scores = objectives.head_scores(logits, jnp.array([[1, -1]]), "log_prob")
    np.testing.assert_allclose(scores, np.log([0.8]), rtol=1e-5)
    images = jnp.zeros((2, 4, 4, 3)).at[1].set(1.5)
    inputs = objectives.ObjectiveInputs(images, None, {})
    np.testing.assert_allclose(objectives.pixel_range().terms[0].fn(inputs), [0.0, 0.25], rtol=1e-6)
    np.testing.assert_allclose(objectives.l2_decay().terms[0].fn(inputs), [0.25, 1.0], rtol=1e-6)


def test_bad_options_raise_clear_errors(problem):
    weights, _, targets = problem
    model = (_features, weights)
    base = dict(key=jax.random.key(0), steps=2, size=SIZE)
    with pytest.raises(ValueError, match="unknown parameterisation 'wavelet'; valid: pixels, fft, pca"):
        render.invert(model, targets, param="wavelet", **base)
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'; valid: adam, sgd"):
        render.invert(model, targets, optimizer="lbfgs", **base)
    with pytest.raises(ValueError, match="unknown loop form 'while'; valid: auto, python, unrolled, scan"):
        render.invert(model, targets, loop="while", **base)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        render.invert(model, targets, **{**base, "steps": 0})
    with pytest.raises(ValueError, match="feature shape .* does not match target shape"):
        render.invert(model, targets[:, :4], **base)
    with pytest.raises(ValueError, match="leading"):
        render.invert(model, {"a": targets, "b": targets[:2]}, **base)
    with pytest.raises(ValueError, match="init_image must have shape"):
        render.invert(model, targets, init_image=np.zeros((16, 16, 3)), **base)
    with pytest.raises(ValueError, match="unknown pixel_mode"):
        param.make_param("pixels", 1, SIZE, jax.random.key(0), pixel_mode="tanh")
    with pytest.raises(ValueError, match="param='pca' needs an image prior"):
        render.invert(model, targets, param="pca", **base)
    small_prior, _ = image_prior.fit_image_prior(np.asarray(_smooth_images(4, 3))[:, :16, :16], 2)
    with pytest.raises(ValueError, match="models 768 values per image; 32x32x3 images need 3072"):
        render.invert(model, targets, param="pca", image_prior=small_prior, **base)
    with pytest.raises(ValueError, match="prior_weight is the Gaussian prior of param='pca'"):
        render.invert(model, targets, prior_weight=0.1, **base)
    with pytest.raises(ValueError, match="the images are all identical"):
        image_prior.fit_image_prior(np.zeros((3, 4, 4, 3)), 2)
    with pytest.raises(ValueError, match="unknown pad mode"):
        transforms.make_transform_config(pad=2, pad_mode="mirror")
    with pytest.raises(ValueError, match="mesh needs an axis named 'data'"):
        render.invert(model, targets, mesh=jax.make_mesh((8,), ("model",)), **base)
    with pytest.raises(ValueError, match="head targets must have shape"):
        render.class_visualize(
            lambda x: [x.mean(axis=(1, 2))], np.zeros((4, 2), np.int32), key=jax.random.key(0), steps=1,
            size=SIZE,
        )


def test_coefficient_prior_centred_per_item():
    params = jnp.asarray([[1.0, 2.0], [0.0, -2.0]])
    targets = {"m": jnp.asarray([[1.0, 0.0], [0.0, 0.0]]), "s": jnp.asarray([[1.0, 2.0], [1.0, 0.5]])}
    inputs = objectives.ObjectiveInputs(None, None, targets, params)
    total, _ = objectives.coefficient_prior().evaluate(inputs)
    np.testing.assert_allclose(total, [2.5, 2.0])
    total, _ = objectives.coefficient_prior(mean_key="m", std_key="s").evaluate(inputs)
    np.testing.assert_allclose(total, [0.5, 8.0])  # ((0, 1)^2 / 2, (0, 4)^2 / 2)
    with pytest.raises(objectives.ObjectiveError, match="both mean_key and std_key"):
        objectives.coefficient_prior(mean_key="m")
    with pytest.raises(objectives.ObjectiveError, match="needs targets\\['m'\\]"):
        objectives.coefficient_prior(mean_key="m", std_key="s").evaluate(objectives.ObjectiveInputs(None, None, {}, params))
