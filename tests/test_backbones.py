"""Detector backbones, the registry and the frequency (spectrum) baseline."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxface.models import layers, mobilenetv3, resnet, spectrum
from jaxface.models.registry import (
    DETECTORS,
    UnknownDetectorError,
    abstract_detector,
    build_detector,
    detector_options,
)

# Tiny builds (name -> options) that keep every architecture's structure.
TINY = {
    "mobilenetv3_small": dict(width=0.25, depth=0.5),
    "mobilenetv3_large": dict(width=0.25, depth=0.34),
    "resnet18": dict(width=0.125, depth=0.5),
    "resnet50": dict(width=0.0625, depth=0.34),
    "convnext_tiny": dict(width=0.125, depth=0.34),
    "efficientnet_b0": dict(width=0.25, depth=0.34),
    "efficientnet_b7": dict(width=0.1, depth=0.1),
    "vgg16": dict(width=0.0625),
    "spectrum": dict(n_bins=16),
}
# Trainable parameter counts of torchvision's ImageNet models (1000 classes).
PUBLISHED_PARAMS = {
    ("mobilenetv3_small", ()): 2_542_856,
    ("mobilenetv3_large", ()): 5_483_032,
    ("resnet18", ()): 11_689_512,
    ("resnet50", ()): 25_557_032,
    ("convnext_tiny", ()): 28_589_128,
    ("efficientnet_b0", ()): 5_288_548,
    ("vgg16", ()): 138_357_544,
    ("vgg16", (("batch_norm", True),)): 138_365_992,
}


@functools.partial(jax.jit, static_argnums=(0, 3),
                   compiler_options={"xla_backend_optimization_level": 0})  # compiles ~2x faster
def _forward(graphdef, state, x, train):
    model = nnx.merge(graphdef, state)
    logits = model(x, train=train)
    # In train mode a second pass would update the BN statistics twice; features are for eval checks.
    feats = None if train else model.features(x)
    return logits, feats, nnx.state(model)


def forward(model, x, train=False):
    """(logits, features or None in train mode), with the model's state (BN stats, RNG counts) written back."""
    graphdef, state = nnx.split(model)
    logits, feats, new_state = _forward(graphdef, state, jnp.asarray(x), train)
    nnx.update(model, new_state)
    return logits, feats


def images(batch=2, size=32, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (batch, size, size, 3)).astype(np.float32)


def test_registry_has_the_required_detectors():
    required = {"mobilenetv3_small", "mobilenetv3_large", "resnet50", "resnet18", "convnext_tiny", "vgg16",
                "spectrum", *(f"efficientnet_b{i}" for i in range(8))}
    assert required <= set(DETECTORS)


@pytest.mark.parametrize("name", list(TINY))
def test_tiny_forward_pass(name):
    model = build_detector(name, input_size=32, rngs=nnx.Rngs(0), **TINY[name])
    x = images(batch=3, size=40 if name == "vgg16" else 32)
    logits, feats = forward(model, x)
    assert logits.shape == (3, 1) and logits.dtype == jnp.float32
    assert feats.shape == (3, model.feature_dim)
    assert np.all(np.isfinite(np.asarray(logits))) and np.all(np.isfinite(np.asarray(feats)))
    assert model.name == name and model.input_size == 32


def test_every_efficientnet_level_builds_with_its_coefficients():
    widths = []
    for level in range(8):
        model = build_detector(f"efficientnet_b{level}", input_size=32, width=0.1, depth=0.1, rngs=nnx.Rngs(0))
        widths.append(model.feature_dim)
        eps = model.stem.bn.epsilon
        assert eps == (1e-3 if level >= 5 else 1e-5)
    assert widths == sorted(widths) and widths[0] < widths[-1]  # compound width grows with the level


@pytest.mark.parametrize("key", list(PUBLISHED_PARAMS), ids=lambda k: k[0] + ("_bn" if k[1] else ""))
def test_full_size_parameter_counts_match_published(key):
    name, options = key
    model = abstract_detector(name, num_outputs=1000, **dict(options))  # shapes only, nothing allocated
    assert layers.count_params(model) == PUBLISHED_PARAMS[key]


def test_eval_is_deterministic_and_train_differs_only_through_dropout_and_batch_norm():
    x = images(batch=4)
    # (Reduced further than TINY: each model here compiles twice.)
    # No batch norm and no dropout: train and eval are the same function.
    convnext = build_detector("convnext_tiny", input_size=32, dropout=0.0, stochastic_depth=0.0, rngs=nnx.Rngs(0),
                              dims=(8, 8, 8, 8), depths=(1, 1, 1, 1))
    np.testing.assert_allclose(forward(convnext, x, train=True)[0], forward(convnext, x)[0], atol=1e-6)

    # Dropout only (VGG without BN): eval is repeatable, train draws new masks each call.
    vgg = build_detector("vgg16", input_size=32, dropout=0.5, rngs=nnx.Rngs(0), width=0.0625, config=(8, "M", 8, "M"))
    np.testing.assert_array_equal(forward(vgg, x)[0], forward(vgg, x)[0])
    first, second = forward(vgg, x, train=True)[0], forward(vgg, x, train=True)[0]
    assert not np.allclose(first, second)

    # Batch norm only: train normalises with batch statistics and updates the running averages.
    mobilenet = build_detector("mobilenetv3_small", input_size=32, dropout=0.0, rngs=nnx.Rngs(0), width=0.25,
                               block_specs=[mobilenetv3.BlockSpec(3, 16, 16, True, "hard_swish", 2)])
    before = np.asarray(mobilenet.stem.bn.mean[...]).copy()
    eval_logits = forward(mobilenet, x)[0]
    np.testing.assert_array_equal(np.asarray(mobilenet.stem.bn.mean[...]), before)
    train_logits = forward(mobilenet, x, train=True)[0]
    assert not np.allclose(train_logits, eval_logits)
    assert not np.allclose(np.asarray(mobilenet.stem.bn.mean[...]), before)
    # BN momentum 0.9 (torch's 0.1): new mean = 0.9 * old + 0.1 * batch mean, old = 0.
    stem_out = mobilenet.stem.conv(mobilenet.input_norm(jnp.asarray(x)))
    np.testing.assert_allclose(np.asarray(mobilenet.stem.bn.mean[...]),
                               0.1 * np.asarray(stem_out.mean(axis=(0, 1, 2))), rtol=1e-4, atol=1e-6)


def test_width_and_depth_shrink_the_published_architecture():
    small = mobilenetv3.MobileNetV3("large", width=0.5, depth=0.5, rngs=nnx.Rngs(0))
    assert len(small.blocks) == 9  # runs 1,2,3,4,2,3 -> 1,1,2,2,1,2 blocks
    assert small.stem.conv.out_features == 8 and small.feature_dim == 640
    net = resnet.ResNet("resnet50", width=0.25, depth=0.5, rngs=nnx.Rngs(0))
    assert [len(stage) for stage in net.stages] == [2, 2, 3, 2] and net.feature_dim == 512
    explicit = resnet.ResNet("resnet50", width=0.25, layers=(1, 1, 1, 1), rngs=nnx.Rngs(0))
    assert [len(stage) for stage in explicit.stages] == [1, 1, 1, 1]


def test_input_normalisation_is_inside_and_optional():
    x = images()
    normalised = (x - np.array(layers.IMAGENET_MEAN, np.float32)) / np.array(layers.IMAGENET_STD, np.float32)
    tiny = dict(width=0.0625, layers=(1, 1, 1, 1))
    with_norm = build_detector("resnet18", input_size=32, rngs=nnx.Rngs(0), **tiny)
    without = build_detector("resnet18", input_size=32, input_mean=None, input_std=None, rngs=nnx.Rngs(0), **tiny)
    np.testing.assert_allclose(forward(with_norm, x)[0], forward(without, normalised)[0], atol=1e-5)


def test_user_errors_are_clear():
    with pytest.raises(UnknownDetectorError, match="did you mean mobilenetv3_small.*valid detectors are:.*vgg16"):
        build_detector("mobilenetv3_smal", input_size=64, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="no option.*batchnorm.*options are:.*batch_norm"):
        build_detector("vgg16", input_size=64, batchnorm=True, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="input_size must be an integer >= 32"):
        build_detector("resnet50", input_size=16, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="width must be a positive number"):
        build_detector("resnet50", input_size=64, width=0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="dropout must be a probability"):
        build_detector("resnet50", input_size=64, dropout=1.5, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="no width/depth"):
        build_detector("spectrum", input_size=64, width=0.5, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="no depth multiplier"):
        build_detector("vgg16", input_size=64, depth=0.5, rngs=nnx.Rngs(0))
    assert "stochastic_depth" in detector_options("convnext_tiny")
    model = build_detector("vgg16", input_size=32, classifier="gap", batch_norm=True, rngs=nnx.Rngs(0),
                           **TINY["vgg16"])
    with pytest.raises(ValueError, match=r"NHWC RGB batch \(B, H, W, 3\)"):
        model(jnp.zeros((1, 3, 32, 32)))


def test_adaptive_pool_and_max_pool_follow_pytorch():
    x = jnp.arange(2 * 3, dtype=jnp.float32).reshape(1, 2, 3, 1)  # [[0, 1, 2], [3, 4, 5]]
    pooled = np.asarray(layers.adaptive_avg_pool(x, 7))[0, :, :, 0]
    # PyTorch bins [floor(i*n/7), ceil((i+1)*n/7)) overlap when upsampling: 3 -> 7 columns average
    # {0},{0},{0,1},{1},{1,2},{2},{2}; 2 -> 7 rows {0},{0},{0},{0,1},{1},{1},{1}.
    top, bottom = [0, 0, 0.5, 1, 1.5, 2, 2], [3, 3, 3.5, 4, 4.5, 5, 5]
    middle = [1.5, 1.5, 2, 2.5, 3, 3.5, 3.5]
    np.testing.assert_allclose(pooled, [top, top, top, middle, bottom, bottom, bottom])
    x = jnp.array(np.arange(16, dtype=np.float32).reshape(4, 4), jnp.float32)
    negative = -(x + 1.0)[None, :, :, None]
    pooled = np.asarray(layers.max_pool(negative, 3, 2, padding=1))[0, :, :, 0]
    # padding must never win the max, even when every value is negative
    np.testing.assert_array_equal(pooled, [[-1.0, -2.0], [-5.0, -6.0]])
    assert [layers.make_divisible(v) for v in (4, 16 * 0.25, 72 * 0.25, 240 * 0.75, 13)] == [8, 8, 24, 184, 16]


def test_stochastic_depth_drops_whole_samples():
    drop = layers.stochastic_depth(0.5, nnx.Rngs(3))
    x = jnp.ones((64, 2, 2, 3))
    y = np.asarray(layers.apply_drop(drop, x, train=True))
    per_sample = y.reshape(64, -1)
    assert set(np.unique(per_sample)) <= {0.0, 2.0}
    assert np.all(per_sample.min(axis=1) == per_sample.max(axis=1))  # one decision per sample
    assert 10 < int((per_sample[:, 0] == 0).sum()) < 54
    np.testing.assert_array_equal(layers.apply_drop(drop, x, train=False), x)


# ------------------------------------------------------------------------------------------ spectrum
profile = jax.jit(spectrum.radial_profile, static_argnums=(1, 2))


def _smooth_images(rng, n, size):
    """Natural-ish images: white noise low-passed with a 1/f-like filter, in [0, 1]."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[None, :]
    falloff = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / size)
    spectra = np.fft.fft2(rng.standard_normal((n, size, size, 3)), axes=(1, 2)) * falloff[None, :, :, None]
    out = np.real(np.fft.ifft2(spectra, axes=(1, 2)))
    out -= out.min(axis=(1, 2, 3), keepdims=True)
    return (out / out.max(axis=(1, 2, 3), keepdims=True)).astype(np.float32)


def _checkerboard_upsampled(rng, n, size):
    """Images rendered at half size then upsampled by a stride-2 transposed conv (zero insertion + 3x3)."""
    low = _smooth_images(rng, n, size // 2)
    up = np.zeros((n, size, size, 3), np.float32)
    up[:, ::2, ::2] = low
    kernel = np.array([[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]], np.float32) * 0.9
    padded = np.pad(up, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    out = sum(kernel[i, j] * padded[:, i:i + size, j:j + size] for i in range(3) for j in range(3))
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def test_radial_profile_reads_frequency_content():
    rng = np.random.default_rng(0)
    noise = rng.uniform(0, 1, (4, 32, 32, 3)).astype(np.float32)
    smooth = _smooth_images(rng, 4, 32)
    p_noise = np.asarray(profile(noise, 16, "none"))
    p_smooth = np.asarray(profile(smooth, 16, "none"))
    assert p_noise.shape == (4, 16)
    # White noise: flat spectrum beyond DC; smooth images: power falls with frequency. (The last bins,
    # rings in the corners of the spectrum with a handful of pixels each, are noisy and left out.)
    assert np.ptp(p_noise[:, 1:-3], axis=1).max() < 2.0
    assert np.all(p_smooth[:, 1] - p_smooth[:, -4] > 3.0)
    minmax = np.asarray(profile(smooth, 16, "minmax"))
    np.testing.assert_allclose(minmax.min(axis=1), 0.0, atol=1e-6)
    np.testing.assert_allclose(minmax.max(axis=1), 1.0, atol=1e-6)


def test_spectrum_baseline_separates_upsampling_artifacts():
    rng = np.random.default_rng(1)
    real = _smooth_images(rng, 80, 32)
    fake = _checkerboard_upsampled(rng, 80, 32)
    x = np.concatenate([real, fake])
    y = np.concatenate([np.zeros(80), np.ones(80)])
    order = rng.permutation(160)
    x, y = x[order], y[order]
    train, test = slice(0, 100), slice(100, 160)

    model = build_detector("spectrum", input_size=32, dropout=0.0, rngs=nnx.Rngs(0), n_bins=32)
    fit = model.fit(x[train], y[train], l2=1e-2)
    assert float(fit.gradient_norm) < 1e-4  # Newton converged
    logits = np.asarray(nnx.jit(lambda m, v: m(v))(model, jnp.asarray(x[test])))
    assert logits.shape == (60, 1)
    accuracy = np.mean((logits[:, 0] > 0) == (y[test] == 1))
    assert accuracy >= 0.95

    # The module computes exactly the fitted logistic regression, and the fit is deterministic.
    profiles = np.asarray(profile(x[test], 32, "minmax"))
    manual = ((profiles - np.asarray(fit.mean)) / np.asarray(fit.std)) @ np.asarray(fit.weight) + float(fit.bias)
    np.testing.assert_allclose(logits[:, 0], manual, rtol=1e-4, atol=1e-4)
    train_profiles = np.asarray(profile(x[train], 32, "minmax"))
    first = spectrum.fit_spectrum_classifier(train_profiles, y[train], l2=1e-2)
    again = spectrum.fit_spectrum_classifier(train_profiles, y[train], l2=1e-2)
    np.testing.assert_array_equal(np.asarray(again.weight), np.asarray(first.weight))
    np.testing.assert_allclose(np.asarray(first.weight), np.asarray(fit.weight), rtol=1e-3, atol=1e-5)


def test_spectrum_fit_rejects_bad_labels():
    feats = np.random.default_rng(0).normal(size=(10, 4))
    with pytest.raises(spectrum.SpectrumFitError, match="both real"):
        spectrum.fit_spectrum_classifier(feats, np.ones(10))
    with pytest.raises(spectrum.SpectrumFitError, match="0 \\(real\\) or 1 \\(fake\\)"):
        spectrum.fit_spectrum_classifier(feats, np.arange(10) % 3)
    with pytest.raises(spectrum.SpectrumFitError, match="match features"):
        spectrum.fit_spectrum_classifier(feats, np.ones(9))


@pytest.mark.parametrize("channels,kernel,stride,bias", [(16, 3, 1, False), (8, 5, 2, True)])
def test_depthwise_conv_equals_the_native_grouped_convolution(channels, kernel, stride, bias):
    conv = layers.conv2d(channels, channels, kernel, stride=stride, groups=channels, use_bias=bias, rngs=nnx.Rngs(0))
    assert isinstance(conv, layers.DepthwiseConv)
    if bias:
        conv.bias[...] = jax.random.normal(jax.random.key(3), conv.bias.shape)
    x = jax.random.normal(jax.random.key(1), (2, 15, 15, channels))
    native = lambda m, x: nnx.Conv.__call__(m, x)  # noqa: E731

    def loss(call, m, x):
        return (call(m, x) ** 2).sum()

    np.testing.assert_allclose(conv(x), native(conv, x), rtol=1e-5, atol=1e-5)
    grads = nnx.grad(lambda m: loss(lambda m, x: m(x), m, x))(conv)
    native_grads = nnx.grad(lambda m: loss(native, m, x))(conv)
    np.testing.assert_allclose(grads["kernel"][...], native_grads["kernel"][...], rtol=1e-4, atol=1e-3)


def test_batch_norm_relu_matches_flax_batch_norm_then_relu():
    """The hand-written gradient of batch_norm_relu equals autodiff through nnx.BatchNorm and ReLU."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(0.5, 2.0, (6, 5, 4, 3)).astype(np.float32))
    weight = jnp.asarray(rng.normal(size=x.shape).astype(np.float32))  # a loss that weighs every output

    def make():
        bn = nnx.BatchNorm(3, momentum=0.9, epsilon=1e-5, rngs=nnx.Rngs(0))
        bn.scale[...] = jnp.asarray([1.5, -0.7, 0.2])
        bn.bias[...] = jnp.asarray([0.1, 0.3, -0.4])
        return bn

    def loss_reference(bn, x):
        return jnp.sum(jax.nn.relu(bn(x, use_running_average=False)) * weight)

    def loss_fused(bn, x):
        return jnp.sum(layers.batch_norm_relu(bn, x, train=True) * weight)

    results = []
    for loss in (loss_reference, loss_fused):
        bn = make()
        value, (grad_bn, grad_x) = nnx.value_and_grad(loss, argnums=(0, 1))(bn, x)
        results.append((value, grad_x, grad_bn.scale[...], grad_bn.bias[...], bn.mean[...], bn.var[...]))
    for reference, fused in zip(*results):
        np.testing.assert_allclose(fused, reference, rtol=2e-5, atol=2e-5)
    assert float(jnp.abs(results[0][1]).max()) > 0.1  # the gradient is not trivially zero
    bn = make()
    np.testing.assert_allclose(layers.batch_norm_relu(bn, x, train=False),
                               jax.nn.relu(bn(x, use_running_average=True)), rtol=1e-6)
