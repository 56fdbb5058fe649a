"""VGGFace model, named taps and grouped heads."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxface.models.heads import GroupedHeads, grouped_softmax_loss, head_accuracy
from jaxface.models.vggface import (
    LAYER_NAMES,
    VGGFACE_MEAN_RGB,
    InputShapeError,
    UnknownLayerError,
    VGGFace,
    layer_index,
    param_layer_name,
)

HEADS = (2, 3, 5)
RBG_KEY = jax.random.key(0, impl="rbg")


@pytest.fixture(scope="module")
def model():
    # Built under nnx.jit (one compilation for all initialisers instead of one per parameter shape)
    # from an RBG key: XLA:CPU compiles threefry initialisers several times slower.
    return nnx.jit(lambda: VGGFace(head_sizes=HEADS, width=0.125, input_size=32, rngs=nnx.Rngs(RBG_KEY)))()


@pytest.fixture(scope="module")
def images():
    return jnp.asarray(np.random.default_rng(1).uniform(size=(2, 32, 32, 3)), jnp.float32)


def _abstract(**kwargs):
    """Shapes of a model built with `kwargs` without running any initialiser."""
    return nnx.eval_shape(lambda: VGGFace(rngs=nnx.Rngs(0), **kwargs))


def test_layer_names_follow_vgg16():
    assert LAYER_NAMES[:3] == ("conv1_1", "conv1_2", "pool1")
    assert LAYER_NAMES[-4:] == ("pool5", "fc6", "fc7", "heads")
    assert sum(n.startswith("conv") for n in LAYER_NAMES) == 13
    assert sum(n.startswith("pool") for n in LAYER_NAMES) == 5
    assert layer_index("conv5_1") < layer_index("fc6") < layer_index("heads")
    with pytest.raises(UnknownLayerError, match="conv5_3"):
        VGGFace.layer_index("conv6_1")


def test_forward_shapes_width_quarter_at_64():
    def forward(x):
        return VGGFace(head_sizes=HEADS, width=0.25, input_size=64, rngs=nnx.Rngs(0))(x)

    logits = jax.eval_shape(forward, jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32))
    assert [l.shape for l in logits] == [(2, n) for n in HEADS]
    m = _abstract(head_sizes=HEADS, width=0.25, input_size=64)
    # width 0.25: 16/32/64/128/128 channels, fc 1024; fc6 reads 2*2*128 inputs.
    assert m.conv1_1.kernel.value.shape == (3, 3, 3, 16)
    assert m.conv5_3.kernel.value.shape == (3, 3, 128, 128)
    assert m.fc6.kernel.value.shape == (2 * 2 * 128, 1024)
    assert m.fc7.kernel.value.shape == (1024, 1024)
    assert m.layer_output_shape("pool5") == (2, 2, 128)
    full = _abstract(head_sizes=None)  # the published network: 224 px, fc6 of 7*7*512 inputs
    assert full.fc6.kernel.value.shape == (25088, 4096)


def test_real_forward_is_finite(model, images):
    logits = model(images)
    assert [l.shape for l in logits] == [(2, n) for n in HEADS]
    assert all(bool(jnp.all(jnp.isfinite(l))) for l in logits)


def test_without_heads_returns_fc7():
    def forward(x):
        return VGGFace(head_sizes=None, width=0.125, input_size=32, rngs=nnx.Rngs(0))(x)

    out = jax.eval_shape(forward, jax.ShapeDtypeStruct((3, 32, 32, 3), jnp.float32))
    assert out.shape == (3, 512)
    with pytest.raises(UnknownLayerError, match="head_sizes=None"):
        _abstract(head_sizes=None, width=0.125, input_size=32).activations(jnp.zeros((1, 32, 32, 3)), ["heads"])


def test_activations_returns_every_requested_tap(model, images):
    acts = model.activations(images, ["conv1_1", "pool2", "conv5_3", "fc6", "fc7", "heads"])
    for name in ("conv1_1", "pool2", "conv5_3", "fc6", "fc7"):
        assert acts[name].shape == (2,) + model.layer_output_shape(name)
        assert float(jnp.min(acts[name])) >= 0.0  # post-ReLU (pools of ReLU maps too)
    assert acts["conv1_1"].shape == (2, 32, 32, 8)
    assert acts["pool2"].shape == (2, 8, 8, 16)
    np.testing.assert_allclose(acts["heads"][1], model(images)[1], rtol=1e-5, atol=1e-5)
    with pytest.raises(UnknownLayerError, match="valid layers are: conv1_1"):
        model.activations(images, ["conv5_4"])


def test_activations_stop_at_the_deepest_requested_layer(model, images):
    def jaxpr_text(layers):
        return str(jax.make_jaxpr(lambda x: model.activations(x, layers))(images))

    # fc6/fc7/heads are the only matrix products in the network.
    assert "dot_general" not in jaxpr_text(["conv3_1"])
    assert "dot_general" not in jaxpr_text(["conv5_3", "conv1_1"])
    assert jaxpr_text(["conv3_1"]).count("conv_general_dilated") == 5  # conv1_1 .. conv3_1
    assert jaxpr_text(["fc6"]).count("dot_general") == 1
    assert jaxpr_text(["fc7"]).count("dot_general") == 2


def test_dropout_only_in_train_mode(model, images):
    m = model  # dropout 0.5 (the default)
    eval_a, eval_b = m(images)[0], m(images, train=False)[0]
    np.testing.assert_array_equal(eval_a, eval_b)
    train_a, train_b = m(images, train=True)[0], m(images, train=True)[0]
    assert not np.allclose(train_a, eval_a)
    assert not np.allclose(train_a, train_b)  # fresh dropout masks per call
    # taps are pre-dropout: fc6 is identical in train and eval mode, fc7 is not.
    t = m.activations(images, ["fc6", "fc7"], train=True)
    e = m.activations(images, ["fc6", "fc7"])
    np.testing.assert_allclose(t["fc6"], e["fc6"], rtol=1e-6)
    assert not np.allclose(t["fc7"], e["fc7"])

    m.dropout6.rate = m.dropout7.rate = 0.0
    try:
        np.testing.assert_allclose(m(images, train=True)[0], m(images)[0], rtol=1e-6)
    finally:
        m.dropout6.rate = m.dropout7.rate = 0.5


def test_input_size_errors():
    with pytest.raises(ValueError, match="at least 32"):
        VGGFace(head_sizes=None, input_size=24, rngs=nnx.Rngs(0))
    odd = _abstract(head_sizes=None, width=0.125, input_size=112)  # floor pooling: 112 -> 3x3 at pool5
    assert odd.final_spatial == 3 and odd.fc6.in_features == 9 * 64
    with pytest.raises(ValueError, match="width"):
        VGGFace(head_sizes=None, width=0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="preprocess"):
        VGGFace(head_sizes=None, preprocess="caffe", rngs=nnx.Rngs(0))
    m = _abstract(head_sizes=None, width=0.125, input_size=32)
    with pytest.raises(InputShapeError, match=r"\(batch, 32, 32, 3\)"):
        m(jnp.zeros((1, 64, 64, 3)))
    with pytest.raises(InputShapeError, match="got"):
        m(jnp.zeros((32, 32, 3)))


def test_vggface_preprocessing_is_scale_and_rgb_mean(model, images):
    pre = images * 255.0 - jnp.asarray(VGGFACE_MEAN_RGB)
    np.testing.assert_allclose(
        model.activations(images, ["conv1_1"])["conv1_1"], jax.nn.relu(model.conv1_1(pre)),
        rtol=1e-5, atol=1e-3,
    )
    model.preprocess = "none"
    try:
        np.testing.assert_allclose(
            model.activations(pre, ["conv1_1"])["conv1_1"], jax.nn.relu(model.conv1_1(pre)),
            rtol=1e-5, atol=1e-3,
        )
        model.preprocess = "centered"
        np.testing.assert_allclose(
            model.activations(images, ["conv1_1"])["conv1_1"], jax.nn.relu(model.conv1_1(images * 2.0 - 1.0)),
            rtol=1e-5, atol=1e-5,
        )
    finally:
        model.preprocess = "vggface"
    assert VGGFACE_MEAN_RGB[0] > VGGFACE_MEAN_RGB[2]  # red mean first (RGB order)


def test_param_layer_names_cover_every_parameter(model):
    params = nnx.state(model, nnx.Param)
    names = {param_layer_name(path) for path, _ in nnx.to_flat_state(params)}
    assert names == set(LAYER_NAMES) - {f"pool{i}" for i in range(1, 6)}
    assert param_layer_name(("heads", "heads", 2, "kernel")) == "heads"
    assert param_layer_name("fc6/kernel") == "fc6"
    assert param_layer_name(("dropout7", "rngs", "key")) == "fc7"
    with pytest.raises(UnknownLayerError):
        param_layer_name(("optimizer", "mu"))
    # Freezing below conv5_1 (the report's second setting) freezes conv1_1 .. conv4_3.
    frozen = sorted({param_layer_name(p) for p, _ in nnx.to_flat_state(params)
                     if layer_index(param_layer_name(p)) < layer_index("conv5_1")})
    assert frozen[0] == "conv1_1" and frozen[-1] == "conv4_3" and len(frozen) == 10
    assert model.heads.heads[1].kernel.value.shape == (512, 3)


def test_grouped_loss_masks_missing_labels():
    rng = np.random.default_rng(0)
    logits = [jnp.asarray(rng.normal(size=(4, n)), jnp.float32) for n in HEADS]
    targets = jnp.array([[0, -1, 4], [1, -1, -1], [1, -1, 2], [0, -1, 0]], dtype=jnp.int32)
    loss, per_head = jax.jit(grouped_softmax_loss)(logits, targets)
    assert per_head.shape == (3,)
    assert float(per_head[1]) == 0.0
    assert np.isfinite(float(loss))
    # head 2: mean CE over its 3 labelled examples only
    lp = jax.nn.log_softmax(logits[2])
    expected = -(lp[0, 4] + lp[2, 2] + lp[3, 0]) / 3
    np.testing.assert_allclose(per_head[2], expected, rtol=1e-5)
    np.testing.assert_allclose(loss, per_head.sum(), rtol=1e-6)

    grads = jax.jit(jax.grad(lambda ls: grouped_softmax_loss(ls, targets)[0]))(logits)
    assert float(jnp.abs(grads[1]).max()) == 0.0  # fully unlabelled head: no gradient, no NaN
    assert float(jnp.abs(grads[2][1]).max()) == 0.0  # unlabelled example of head 2
    assert float(jnp.abs(grads[2][0]).max()) > 0.0


def test_masked_head_gets_zero_parameter_gradient(model, images):
    targets = jnp.array([[1, -1, 4], [0, -1, -1]], dtype=jnp.int32)

    def loss_fn(m):
        return grouped_softmax_loss(m(images), targets)[0]

    grads = nnx.jit(nnx.grad(loss_fn))(model)
    assert float(jnp.abs(grads["heads"]["heads"][1]["kernel"].value).max()) == 0.0
    assert float(jnp.abs(grads["heads"]["heads"][0]["kernel"].value).max()) > 0.0
    assert float(jnp.abs(grads["conv1_1"]["kernel"].value).max()) > 0.0


def test_head_accuracy_and_heads_validation():
    logits = [jnp.array([[2.0, 0.0], [0.0, 1.0]]), jnp.array([[0.0, 0.0, 3.0], [1.0, 0.0, 0.0]])]
    targets = jnp.array([[0, -1], [0, 0]], dtype=jnp.int32)
    mean, per_head, counts = head_accuracy(logits, targets)
    np.testing.assert_allclose(per_head, [0.5, 1.0])
    np.testing.assert_allclose(counts, [2, 1])
    np.testing.assert_allclose(mean, 0.75)
    with pytest.raises(ValueError, match="at least 2 classes"):
        GroupedHeads(8, (2, 1), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="shape"):
        grouped_softmax_loss(logits, jnp.zeros((2, 3), jnp.int32))


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 7, 9, 2)])
def test_max_pool_2x2_equals_reduce_window_and_its_gradient(shape):
    from jaxface.models.layers import max_pool_2x2

    def reference(x):
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")

    x = jax.random.normal(jax.random.key(0), shape)  # no ties
    np.testing.assert_array_equal(max_pool_2x2(x), reference(x))
    weights = jax.random.normal(jax.random.key(1), reference(x).shape)
    grads = [jax.grad(lambda v: jnp.sum(weights * pool(v)))(x) for pool in (max_pool_2x2, reference)]
    np.testing.assert_array_equal(grads[0], grads[1])


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_normalisation_and_averaged_fc6_input(images, norm):
    m = nnx.jit(lambda: VGGFace(head_sizes=HEADS, width=0.125, input_size=32, norm=norm, fc6_input="average",
                                dropout=0.0, rngs=nnx.Rngs(RBG_KEY)))()
    assert m.fc6.in_features == m.channels[5]  # pool5's global average, not its flattened map
    params = nnx.state(m, nnx.Param).flat_state()
    norm_paths = [p for p, _ in params if str(p[0]).startswith("norm")]
    assert {param_layer_name(p) for p in norm_paths} == {n for n in LAYER_NAMES if n.startswith("conv")}
    assert m.conv1_1.bias is None  # the normalisation's offset replaces it
    eval_out = m(images)[0]
    train_out = m(images, train=True)[0]
    assert bool(jnp.all(jnp.isfinite(eval_out)))
    # Batch norm: train mode normalises with the batch's statistics, eval mode with the running ones
    # (still the initial 0/1 here); group norm is the same in both modes.
    assert np.allclose(train_out, eval_out, rtol=1e-5, atol=1e-5) == (norm == "group")
    stats = nnx.state(m, nnx.BatchStat).flat_state()
    assert bool(stats) == (norm == "batch")


def test_published_network_has_no_normalisation_and_a_flattened_fc6_input():
    m = _abstract(head_sizes=None, width=0.125, input_size=64)
    assert m.norm == "none" and m.fc6_input == "flatten" and m.conv1_1 is not None
    assert not nnx.state(m, nnx.BatchStat).flat_state()
    assert all(not str(p[0]).startswith("norm") for p, _ in nnx.state(m, nnx.Param).flat_state())
    with pytest.raises(ValueError, match="norm must be one of"):
        VGGFace(head_sizes=None, norm="layer", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="fc6_input must be one of"):
        VGGFace(head_sizes=None, fc6_input="max", rngs=nnx.Rngs(0))
