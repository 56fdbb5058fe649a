"""The oneDNN convolution (jaxface.kernels.onednn): same values and gradients as XLA's, the policy
that picks it, and its use in VGG-Face and the inversion loop. Needs the built extension (`make`
builds it); the policy and build-error tests run without it."""
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxface.invert import render
from jaxface.kernels import onednn
from jaxface.models import layers
from jaxface.models.vggface import VGGFace

pytestmark = pytest.mark.onednn
needs_onednn = pytest.mark.skipif(onednn.unavailable_reason() is not None,
                                  reason=f"oneDNN convolution unavailable: {onednn.unavailable_reason()}")


def _xla_conv(x, kernel, strides, padding):
    return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _relative(a, b):
    return float(jnp.abs(a - b).max() / jnp.abs(b).max())


# (batch, size, in, out, stride, padding): VGG's first layer (3 channels, padded blocks), a deep
# 512-channel layer, odd channels with stride 2 and asymmetric pads, a 'VALID' 1x1 output, and 16
# channels, which oneDNN's AVX2 kernels take in a blocked layout (its AVX-512 kernels block the others).
CASES = [
    (4, 16, 3, 64, 1, ((1, 1), (1, 1))),
    (1, 8, 16, 16, 1, ((1, 1), (1, 1))),
    (2, 4, 512, 512, 1, ((1, 1), (1, 1))),
    (3, 11, 40, 24, 2, ((1, 0), (0, 2))),
    (2, 3, 5, 7, 1, ((0, 0), (0, 0))),
]


@needs_onednn
def test_values_and_both_gradients_equal_xla_convolution():
    blocks = set()
    for n, size, cin, cout, stride, padding in CASES:
        x = jax.random.normal(jax.random.key(0), (n, size, size, cin))
        kernel = jax.random.normal(jax.random.key(1), (3, 3, cin, cout))
        strides = (stride, stride)

        def ours(x, k):
            return onednn.conv2d(x, k, strides=strides, padding=padding)

        def xla(x, k):
            return _xla_conv(x, k, strides, padding)

        expected = xla(x, kernel)
        got = jax.jit(ours)(x, kernel)
        assert got.shape == expected.shape
        assert _relative(got, expected) < 1e-5
        cotangent = jax.random.normal(jax.random.key(2), expected.shape)
        dx, dk = jax.jit(lambda x, k, g: jax.vjp(ours, x, k)[1](g))(x, kernel, cotangent)
        dx_ref, dk_ref = jax.vjp(xla, x, kernel)[1](cotangent)
        assert _relative(dx, dx_ref) < 1e-5 and _relative(dk, dk_ref) < 1e-5
        for kind in (0, 1):
            blocks.add(onednn._weights_block(onednn._key(kind, x.shape, kernel.shape, strides, padding)) > 0)
    # Both weight paths ran: packed by JAX (blocked layout) and plain HWIO reordered by the handler.
    assert blocks == {True, False}


@needs_onednn
def test_fused_bias_relu_equals_xla_with_all_three_gradients():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 16))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 16, 32)) * 0.1
    bias = jax.random.normal(jax.random.key(2), (32,))
    padding = ((1, 1), (1, 1))

    def loss(fn):
        return lambda x, k, b: jnp.sum(fn(x, k, b) * jnp.arange(32.0))

    ours = loss(lambda x, k, b: onednn.conv2d_bias_relu(x, k, b, padding=padding))
    xla = loss(lambda x, k, b: jax.nn.relu(_xla_conv(x, k, (1, 1), padding) + b))
    assert abs(float(jax.jit(ours)(x, kernel, bias)) / float(xla(x, kernel, bias)) - 1) < 1e-5
    got = jax.jit(jax.grad(ours, argnums=(0, 1, 2)))(x, kernel, bias)
    for a, b in zip(got, jax.grad(xla, argnums=(0, 1, 2))(x, kernel, bias)):
        assert _relative(a, b) < 1e-5
    with pytest.raises(ValueError, match=r"bias must have shape \(32,\)"):
        onednn.conv2d_bias_relu(x, kernel, bias[:5], padding=padding)


@needs_onednn
@pytest.mark.parametrize("shape", [(2, 8, 8, 16, 24), (1, 7, 5, 8, 12), (3, 1, 1, 4, 4)])
def test_winograd_values_and_all_gradients_equal_xla(shape):
    # Even and odd sizes (the last tile row/column cropped), and a 1x1 image (padding only).
    n, h, w, cin, cout = shape
    x = jax.random.normal(jax.random.key(0), (n, h, w, cin))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, cin, cout)) * 0.3
    bias = jax.random.normal(jax.random.key(2), (cout,))
    padding = ((1, 1), (1, 1))
    weights = jnp.arange(cout, dtype=jnp.float32) - cout / 3

    def plain(x, k, b):
        return jnp.sum(onednn.conv2d(x, k, padding=padding) * weights)

    def fused(x, k, b):
        return jnp.sum(onednn.conv2d_bias_relu(x, k, b, padding=padding) * weights)

    def xla_plain(x, k, b):
        return jnp.sum(_xla_conv(x, k, (1, 1), padding) * weights)

    def xla_fused(x, k, b):
        return jnp.sum(jax.nn.relu(_xla_conv(x, k, (1, 1), padding) + b) * weights)

    for ours, xla in ((plain, xla_plain), (fused, xla_fused)):
        with onednn.forced(winograd="always"):
            step = jax.jit(jax.value_and_grad(ours, argnums=(0, 1, 2)))
            assert "JaxfaceConvWinograd" in step.lower(x, kernel, bias).as_text()
            value, grads = step(x, kernel, bias)
        want, want_grads = jax.value_and_grad(xla, argnums=(0, 1, 2))(x, kernel, bias)
        assert abs(float(value) - float(want)) <= 1e-5 * max(1.0, abs(float(want)))
        for got, ref in zip(grads[:2], want_grads[:2]):
            assert _relative(got, ref) < 1e-5
        np.testing.assert_allclose(grads[2], want_grads[2], rtol=1e-5, atol=1e-4)
    with onednn.forced(winograd="off"):
        assert "JaxfaceConvWinograd" not in jax.jit(fused).lower(x, kernel, bias).as_text()


@needs_onednn
def test_winograd_of_many_tiles_runs_in_slabs_with_the_same_result():
    # 1024 -> 1024 channels: slabs of 512 tiles (64 MiB of scratch); 2 x 32 x 33 pixels are 544 tiles.
    x = jax.random.normal(jax.random.key(0), (2, 32, 33, 1024))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 1024, 1024)) * 0.01
    cotangent = jax.random.normal(jax.random.key(2), (2, 32, 33, 1024))
    padding = ((1, 1), (1, 1))
    with onednn.forced(winograd="auto"):
        assert onednn.uses_winograd(x.shape, kernel.shape, (1, 1), padding)
        y, dx = jax.jit(lambda x, k, g: (lambda out: (out[0], out[1](g)[0]))(
            jax.vjp(lambda x: onednn.conv2d(x, k, padding=padding), x)))(x, kernel, cotangent)
    y_ref, vjp = jax.vjp(lambda x: _xla_conv(x, kernel, (1, 1), padding), x)
    assert _relative(y, y_ref) < 1e-5 and _relative(dx, vjp(cotangent)[0]) < 1e-5


def test_winograd_runs_where_it_measured_faster(monkeypatch):
    monkeypatch.delenv(onednn.WINOGRAD_ENV, raising=False)
    same = ((1, 1), ((1, 1), (1, 1)))
    # VGG-16 at 64 px, batch 8: conv1_2 (64 -> 64) and the 4x4 layers of the 0.25-width model stay
    # direct; conv2_1 onwards at full width, and 8x8 at 128 channels, take Winograd.
    assert not onednn.uses_winograd((8, 64, 64, 64), (3, 3, 64, 64), *same)
    assert onednn.uses_winograd((8, 32, 32, 64), (3, 3, 64, 128), *same)
    assert onednn.uses_winograd((8, 4, 4, 512), (3, 3, 512, 512), *same)
    assert onednn.uses_winograd((8, 8, 8, 128), (3, 3, 128, 128), *same)
    assert not onednn.uses_winograd((8, 4, 4, 128), (3, 3, 128, 128), *same)
    assert not onednn.uses_winograd((8, 8, 8, 512), (3, 3, 512, 512), (2, 2), ((1, 1), (1, 1)))
    assert not onednn.uses_winograd((8, 8, 8, 512), (1, 1, 512, 512), (1, 1), ((0, 0), (0, 0)))
    with onednn.forced(winograd="always"):
        assert onednn.uses_winograd((1, 3, 3, 1), (3, 3, 1, 1), *same)
        assert not onednn.uses_winograd((1, 3, 3, 1), (3, 3, 1, 1), (1, 1), ((0, 0), (0, 0)))
    with onednn.forced(winograd="off"):
        assert not onednn.uses_winograd((8, 4, 4, 512), (3, 3, 512, 512), *same)
    monkeypatch.setenv(onednn.WINOGRAD_ENV, "fast")
    with pytest.raises(onednn.ConvBackendError, match="JAXFACE_WINOGRAD='fast'.*valid: auto, always, off"):
        onednn.winograd_mode()
    with pytest.raises(onednn.ConvBackendError, match="JAXFACE_WINOGRAD='maybe'"):
        with onednn.forced(winograd="maybe"):
            pass


@needs_onednn
def test_vggface_activations_and_input_gradient_match_xla():
    model = VGGFace(head_sizes=(2, 3), width=0.125, input_size=32, rngs=nnx.Rngs(0))
    images = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3)) * 255

    def run():
        def loss(m, x):
            acts = m.activations(x, ["conv5_3", "fc7"])
            return jnp.sum(acts["conv5_3"] ** 2) + jnp.sum(acts["fc7"]), acts

        fn = nnx.jit(lambda m, x: jax.grad(lambda x: loss(m, x), has_aux=True)(x))
        text = jax.jit(lambda x: loss(model, x)[0]).lower(images).as_text()
        return fn(model, images), onednn.CALL_MARKER in text

    with onednn.forced("onednn"):
        (grad_ours, acts_ours), called_ours = run()
    with onednn.forced("xla"):
        (grad_xla, acts_xla), called_xla = run()
    assert called_ours and not called_xla
    for name in ("conv5_3", "fc7"):
        assert _relative(acts_ours[name], acts_xla[name]) < 1e-4
    assert _relative(grad_ours, grad_xla) < 1e-3


_TRAIN_STEPS_AT_32_PX = """
import jax
from jaxface.bench import common, train_bench
assert jax.device_count() == 1
common.compiled_flops = lambda *args: None  # the step itself, not the XLA recompile that counts flops
record = train_bench.bench_case(train_bench.Case("tiny32", 0.0625, 32, 16), steps=2)
print("train steps ran:", record["images_per_s"] > 0)
"""


@needs_onednn
def test_training_steps_at_32_px_run_on_one_device():
    # A layer's data and weight gradients run on two XLA threads at once. While they shared oneDNN's
    # global scratchpad, this training step (VGG-Face width 1/16, 32 px: 2x2 conv5 maps, batch 16)
    # crashed the interpreter every time, as did `jaxface train` at 32 px. It runs in a process of its
    # own, on one CPU device (where oneDNN is used), so a crash fails this test, not the session.
    import os
    import subprocess

    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if flags:  # an empty XLA_FLAGS would be read as a file name
        env["XLA_FLAGS"] = " ".join(flags)
    out = subprocess.run([sys.executable, "-c", _TRAIN_STEPS_AT_32_PX], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert "train steps ran: True" in out.stdout


@needs_onednn
def test_gradients_under_a_one_device_explicit_mesh_keep_their_sharding_types():
    # How `jaxface train` and `generate` run on one CPU: custom_vjp checks the cotangents' types.
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,),
                         devices=jax.devices()[:1])
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 3, 5))

    def loss(conv):
        return lambda x, k: jnp.sum(conv(x, k).mean(axis=(1, 2)) ** 2)

    ours = loss(lambda x, k: onednn.conv2d(x, k, padding=((1, 1), (1, 1))))
    with jax.set_mesh(mesh):
        xs = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
        dx, dk = jax.jit(jax.grad(ours, argnums=(0, 1)))(xs, kernel)
    dx_ref, dk_ref = jax.grad(loss(lambda x, k: _xla_conv(x, k, (1, 1), ((1, 1), (1, 1)))), argnums=(0, 1))(x, kernel)
    assert _relative(dx, dx_ref) < 1e-5 and _relative(dk, dk_ref) < 1e-5


@needs_onednn
@pytest.mark.parametrize("winograd", ["off", "always"])
def test_inversion_loop_on_onednn_follows_the_xla_run(winograd):
    weights = [jax.random.normal(k, (3, 3, cin, cout)) * np.sqrt(2.0 / (9 * cin))
               for k, (cin, cout) in zip(jax.random.split(jax.random.key(0), 2), [(3, 8), (8, 16)])]

    def features(conv):
        def apply(ws, images):
            x = images - 0.5
            for w in ws:
                x = jax.nn.relu(conv(x, w))
            return x
        return apply

    def ours(x, w):
        return onednn.conv2d(x, w, padding=((1, 1), (1, 1)))

    def xla(x, w):
        return _xla_conv(x, w, (1, 1), ((1, 1), (1, 1)))

    images = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
    targets = jax.jit(features(xla))(weights, images)
    settings = dict(key=jax.random.key(7), steps=6, size=16, lr=0.05, jitter=2, tv_weight=0.05, chunk=3,
                    loop="unrolled")
    with onednn.forced(winograd=winograd):
        a = render.invert((features(ours), weights), targets, **settings)
    b = render.invert((features(xla), weights), targets, **settings)
    np.testing.assert_allclose(a.images, b.images, atol=1e-4)
    np.testing.assert_allclose(a.feature_error, b.feature_error, rtol=1e-3)


@needs_onednn
def test_conv2d_rejects_mismatched_channels_and_bad_geometry():
    x, kernel = jnp.ones((1, 5, 5, 4)), jnp.ones((3, 3, 3, 2))
    with pytest.raises(ValueError, match="4 channels but the kernel expects 3"):
        onednn.conv2d(x, kernel)
    with pytest.raises(ValueError, match="strides"):
        onednn.conv2d(x, jnp.ones((3, 3, 4, 2)), strides=(0, 1))
    assert onednn.supports((1, 5, 5, 4), (3, 3, 4, 2), (1, 1), ((1, 1), (1, 1)))
    assert not onednn.supports((1, 2, 2, 4), (5, 5, 4, 2), (1, 1), ((0, 0), (0, 0)))  # no output pixels


def test_auto_keeps_xla_with_several_devices_or_under_a_mesh(monkeypatch):
    monkeypatch.delenv(onednn.ENV, raising=False)
    x, kernel = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
    assert jax.device_count() == 8 and onednn.mode() == "auto"
    assert not onednn.applies(x, kernel)
    if onednn.unavailable_reason() is None:
        with onednn.forced("onednn"):
            assert onednn.applies(x, kernel)
            assert not onednn.applies(x.astype(jnp.bfloat16), kernel)
            assert not onednn.applies(x, kernel, feature_group_count=2)
            with jax.set_mesh(jax.make_mesh((8,), ("data",))):
                assert not onednn.applies(x, kernel)


def test_bad_backend_name_and_missing_extension_are_one_clear_error(monkeypatch):
    monkeypatch.setenv(onednn.ENV, "mkl")
    with pytest.raises(onednn.ConvBackendError, match="JAXFACE_CONV='mkl'.*valid: auto, xla, onednn"):
        onednn.mode()
    monkeypatch.setenv(onednn.ENV, "onednn")
    monkeypatch.setattr(onednn, "_load", lambda: (None, "the oneDNN convolution is not built"))
    with pytest.raises(onednn.ConvBackendError, match="JAXFACE_CONV=onednn but the oneDNN convolution is not"):
        onednn.applies(jnp.ones((1, 4, 4, 3)), jnp.ones((3, 3, 3, 2)))
    monkeypatch.setenv(onednn.ENV, "auto")
    assert not onednn.applies(jnp.ones((1, 4, 4, 3)), jnp.ones((3, 3, 3, 2)))
    assert onednn.describe().startswith("xla (the oneDNN convolution is not built")


def test_conv_layer_equals_nnx_conv_on_either_backend():
    # (padding, strides): every form nnx.Conv takes; strided 'SAME' is left to XLA.
    forms = [(((1, 1), (1, 1)), 1), ("SAME", 1), ("SAME", 2), (1, 2), ("VALID", 1)]
    pairs = [(layers.Conv(3, 5, (3, 3), strides=s, padding=p, rngs=nnx.Rngs(0)),
              nnx.Conv(3, 5, (3, 3), strides=s, padding=p, rngs=nnx.Rngs(0))) for p, s in forms]
    x = jax.random.normal(jax.random.key(0), (2, 7, 7, 3))
    with onednn.forced("xla"):
        for conv, plain in pairs:
            np.testing.assert_array_equal(conv(x), plain(x))
    if onednn.unavailable_reason() is None:
        with onednn.forced("onednn"):
            for (conv, plain), form in zip(pairs, forms):
                ours = jax.jit(lambda x: conv(x))
                assert (onednn.CALL_MARKER in ours.lower(x).as_text()) == (form != ("SAME", 2))
                np.testing.assert_allclose(ours(x), plain(x), rtol=1e-5, atol=1e-5)


def test_build_without_onednn_says_what_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    problems = onednn.build_problems()
    assert any("pip install -e '.[onednn]'" in p for p in problems)
    with pytest.raises(onednn.ConvBackendError, match="cannot build the oneDNN convolution: oneDNN is not installed"):
        onednn.build()
    assert onednn.main(["build"]) == 0  # optional: make goes on, on XLA's convolution
    assert "XLA's convolution will run" in capsys.readouterr().out
    assert onednn.main(["frobnicate"]) == 2


_FIRST_USE = """
import jax.numpy as jnp
from jaxface.kernels import onednn
assert onednn.applies(jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 4, 4)))  # loads, building if it must
print(onednn.describe())
"""


@pytest.mark.skipif(bool(onednn.build_problems()), reason="no compiler or oneDNN here to build with")
def test_the_extension_is_built_at_first_use_once(tmp_path):
    # `pip install` does not run `make`: the first convolution that would use oneDNN builds it, says so
    # on stderr, and later processes load that build.
    import os
    import subprocess

    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", onednn.ENV)}
    if flags:
        env["XLA_FLAGS"] = " ".join(flags)
    env[onednn.KERNELS_DIR_ENV] = str(tmp_path / "kernels")
    runs = [subprocess.run([sys.executable, "-c", _FIRST_USE], env=env, capture_output=True, text=True,
                           timeout=300) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr
        assert run.stdout.startswith("onednn "), run.stdout
    assert "building the oneDNN convolution once for this environment" in runs[0].stderr
    assert "building" not in runs[1].stderr
    assert [p.name for p in (tmp_path / "kernels").iterdir()] == [onednn.library_path().name]
