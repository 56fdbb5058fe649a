"""VGG-Face weight import, params-only weight files and the torch state-dict reader/writer.

Each source format is written by the test in its exact layout from a width-reduced network (width 1/16,
64 px so that fc6 reads a 2x2 pool5 map and the flatten order matters), converted, loaded into VGGFace
and compared with a plain numpy forward pass of the same weights in the source's own layout.

tests/fixtures/torch_state_dict_{zip,legacy}.pth were written once by real torch 2.13 (scratch venv):
    a = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 4 - 1
    sd = OrderedDict(float32=a, float32_transposed=a.t(), float32_slice=a[1:, 1:3],
                     float16=(torch.arange(6.) / 8 - 0.25).half(),
                     bfloat16=(torch.arange(4.) * 0.5 - 1).bfloat16(), int64=torch.arange(5) - 2,
                     scalar=torch.tensor(3.5))
    sd["conv.weight"] = (torch.arange(54.).reshape(2, 3, 3, 3) - 20) / 16
    torch.save(sd, "torch_state_dict_zip.pth")
    torch.save(sd, "torch_state_dict_legacy.pth", _use_new_zipfile_serialization=False)
"""
import collections
import pathlib
import pickle
import sys
import zipfile

import jax
import ml_dtypes
import numpy as np
import pytest
import scipy.io
from flax import nnx

from jaxface.models import torch_pickle
from jaxface.models.convert_vggface import (
    ConversionError,
    convert_vggface,
    convert_weights_command,
    detect_format,
)
from jaxface.models.vggface import CONV_LAYER_NAMES, VGGFACE_MEAN_RGB, VGGFace, count_params
from jaxface.models.weights import (
    WeightsError,
    WeightsKeyError,
    WeightsNotFoundError,
    WeightsShapeError,
    load_weights,
    restore_into,
    save_weights,
)

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
WIDTH, INPUT, SIDE = 1 / 16, 64, 2
CHANNELS = {1: 4, 2: 8, 3: 16, 4: 32, 5: 32}
FC, IDENTITIES = 256, 10
RBG_KEY = jax.random.key(0, impl="rbg")  # cheap-to-compile initialisers on XLA:CPU


def conv_plan():
    plan, cin = [], 3
    for name in CONV_LAYER_NAMES:
        cout = CHANNELS[int(name[4])]
        plan.append((name, cin, cout))
        cin = cout
    return plan


# ------------------------------------------------------------------------------ numpy references
def relu(x):
    return np.maximum(x, 0.0)


def preprocess_rgb(images):
    return images.astype(np.float64) * 255.0 - np.asarray(VGGFACE_MEAN_RGB)


def reference_matconvnet(images, weights):
    """MatConvNet SimpleNN semantics: HWC maps, filters (H, W, Cin, Cout), fc layers as convolutions."""
    h = preprocess_rgb(images)
    taps = {}
    for name, _, _ in conv_plan():
        f, b = weights[name]
        n, height, width, _ = h.shape
        padded = np.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
        out = np.zeros((n, height, width, f.shape[3]))
        for i in range(3):
            for j in range(3):
                out += np.einsum("nhwc,co->nhwo", padded[:, i:i + height, j:j + width], f[i, j])
        h = relu(out + b)
        taps[name] = h
        if name in ("conv1_2", "conv2_2") or name.endswith("_3"):
            n, height, width, c = h.shape
            h = h.reshape(n, height // 2, 2, width // 2, 2, c).max(axis=(2, 4))
    f6, b6 = weights["fc6"]  # "valid" SIDE x SIDE convolution over pool5
    h = relu(np.einsum("nijc,ijcd->nd", h, f6) + b6)
    f7, b7 = weights["fc7"]
    taps["fc7"] = relu(h @ f7[0, 0] + b7)
    return taps


def reference_torch(images, state, bgr=False):
    """PyTorch Vgg_face_dag semantics: NCHW maps, OIHW kernels, fc6 on the (C, H, W) flatten."""
    x = preprocess_rgb(images)
    if bgr:
        x = x[..., ::-1]
    h = x.transpose(0, 3, 1, 2)
    taps = {}
    for name, _, _ in conv_plan():
        w, b = state[f"{name}.weight"], state[f"{name}.bias"]
        n, _, height, width = h.shape
        padded = np.pad(h, ((0, 0), (0, 0), (1, 1), (1, 1)))
        out = np.zeros((n, w.shape[0], height, width))
        for i in range(3):
            for j in range(3):
                out += np.einsum("nchw,oc->nohw", padded[:, :, i:i + height, j:j + width], w[:, :, i, j])
        h = relu(out + b[None, :, None, None])
        taps[name] = h.transpose(0, 2, 3, 1)  # NHWC for comparison
        if name in ("conv1_2", "conv2_2") or name.endswith("_3"):
            n, c, height, width = h.shape
            h = h.reshape(n, c, height // 2, 2, width // 2, 2).max(axis=(3, 5))
    h = relu(h.reshape(h.shape[0], -1) @ state["fc6.weight"].T + state["fc6.bias"])
    taps["fc7"] = relu(h @ state["fc7.weight"].T + state["fc7.bias"])
    return taps


# ------------------------------------------------------------------------------ source writers
def random_matconvnet_weights(rng):
    weights = {}
    for name, cin, cout in conv_plan():
        weights[name] = (rng.normal(0, np.sqrt(2 / (9 * cin)), (3, 3, cin, cout)).astype(np.float32),
                         rng.normal(0, 0.1, cout).astype(np.float32))
    c5 = CHANNELS[5]
    weights["fc6"] = (rng.normal(0, np.sqrt(2 / (SIDE * SIDE * c5)), (SIDE, SIDE, c5, FC)).astype(np.float32),
                      rng.normal(0, 0.1, FC).astype(np.float32))
    weights["fc7"] = (rng.normal(0, np.sqrt(2 / FC), (1, 1, FC, FC)).astype(np.float32),
                      rng.normal(0, 0.1, FC).astype(np.float32))
    weights["fc8"] = (rng.normal(0, np.sqrt(1 / FC), (1, 1, FC, IDENTITIES)).astype(np.float32),
                      np.zeros(IDENTITIES, np.float32))
    return weights


def matconvnet_layers(weights):
    """The SimpleNN cell array of layer structs, as MatConvNet's import-caffe.py writes it."""
    layers = []

    def conv(name, pad):
        cell = np.empty((1, 2), dtype=object)
        cell[0, 0], cell[0, 1] = weights[name][0], weights[name][1].reshape(1, -1)
        layers.append({"name": name, "type": "conv", "weights": cell, "size": np.array(weights[name][0].shape,
                       dtype=float).reshape(1, -1), "pad": np.full((1, 4), pad, float),
                       "stride": np.ones((1, 2)), "precious": 0, "dilate": 1, "opts": np.empty((0, 0), object)})

    for name, _, _ in conv_plan():
        conv(name, 1.0)
        layers.append({"name": "relu" + name[4:], "type": "relu"})
        if name in ("conv1_2", "conv2_2") or name.endswith("_3"):
            layers.append({"name": f"pool{name[4]}", "type": "pool", "method": "max", "pool": np.full((1, 2), 2.0),
                           "stride": np.full((1, 2), 2.0), "pad": np.zeros((1, 4))})
    for name in ("fc6", "fc7"):
        conv(name, 0.0)
        layers.append({"name": "relu" + name[2:], "type": "relu"})
    conv("fc8", 0.0)
    layers.append({"name": "prob", "type": "softmax"})
    return np.array(layers, dtype=object).reshape(1, -1)


def write_simplenn_mat(path, weights):  # the model zoo's vgg-face.mat
    normalization = {"averageImage": np.array(VGGFACE_MEAN_RGB, np.float32).reshape(1, 1, 3),
                     "imageSize": np.array([INPUT, INPUT, 3.0]).reshape(1, -1), "keepAspect": 1,
                     "interpolation": "bilinear", "border": np.zeros((1, 2))}
    classes = {"name": np.array([f"id{i}" for i in range(IDENTITIES)], dtype=object).reshape(1, -1)}
    scipy.io.savemat(path, {"layers": matconvnet_layers(weights),
                            "meta": {"normalization": normalization, "classes": classes}}, oned_as="row")


def write_beta_mat(path, weights):  # the 2015 vgg_face_matconvnet release's vgg_face.mat (struct `net`)
    average = np.broadcast_to(np.array(VGGFACE_MEAN_RGB, np.float32), (INPUT, INPUT, 3)).copy()
    net = {"layers": matconvnet_layers(weights),
           "normalization": {"averageImage": average, "imageSize": np.array([INPUT, INPUT, 3.0])},
           "classes": {"description": np.array(["a", "b"], dtype=object)}}
    scipy.io.savemat(path, {"net": net}, oned_as="row")


def random_torch_state(rng):
    state = collections.OrderedDict()
    for name, cin, cout in conv_plan():
        state[f"{name}.weight"] = rng.normal(0, np.sqrt(2 / (9 * cin)), (cout, cin, 3, 3)).astype(np.float32)
        state[f"{name}.bias"] = rng.normal(0, 0.1, cout).astype(np.float32)
    fan6 = CHANNELS[5] * SIDE * SIDE
    state["fc6.weight"] = rng.normal(0, np.sqrt(2 / fan6), (FC, fan6)).astype(np.float32)
    state["fc6.bias"] = rng.normal(0, 0.1, FC).astype(np.float32)
    state["fc7.weight"] = rng.normal(0, np.sqrt(2 / FC), (FC, FC)).astype(np.float32)
    state["fc7.bias"] = rng.normal(0, 0.1, FC).astype(np.float32)
    state["fc8.weight"] = rng.normal(0, np.sqrt(1 / FC), (IDENTITIES, FC)).astype(np.float32)
    state["fc8.bias"] = np.zeros(IDENTITIES, np.float32)
    return state


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def model():
    return nnx.jit(lambda: VGGFace(head_sizes=None, width=WIDTH, input_size=INPUT, rngs=nnx.Rngs(RBG_KEY)))()


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(7).uniform(size=(2, INPUT, INPUT, 3)).astype(np.float32)


@nnx.jit
def _taps(m, x):
    return m.activations(x, ("conv5_3", "fc7"))


def assert_matches(model, images, reference):
    got = _taps(model, images)
    for name in ("conv5_3", "fc7"):
        ref = reference[name]
        assert float(np.abs(ref).max()) > 0, f"{name} reference is all zeros; the check would be vacuous"
        np.testing.assert_allclose(np.asarray(got[name]), ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()),
                                   err_msg=name)


def convert_and_load(model, src, tmp_path, fmt="auto", **kwargs):
    state, metadata = convert_vggface(src, fmt, **kwargs)
    save_weights(tmp_path / "weights", state, metadata)
    loaded = restore_into(model, tmp_path / "weights")
    assert len(loaded) == 2 * 15  # kernel + bias of 13 convs, fc6, fc7
    return state, metadata


# ------------------------------------------------------------------------------ MatConvNet
def test_matconvnet_simplenn_file_matches_numpy_forward(model, images, tmp_path):
    weights = random_matconvnet_weights(np.random.default_rng(0))
    src = tmp_path / "vgg-face.mat"
    write_simplenn_mat(src, weights)
    state, metadata = convert_and_load(model, src, tmp_path)
    assert metadata["width"] == WIDTH and metadata["input_size"] == INPUT
    assert metadata["source_format"] == "mat" and metadata["source_channel_order"] == "rgb"
    np.testing.assert_allclose(metadata["source_mean_rgb"], VGGFACE_MEAN_RGB, rtol=1e-6)
    assert "fc8" in metadata["dropped"] and "heads" not in state
    assert state["fc6"]["kernel"].shape == (SIDE * SIDE * CHANNELS[5], FC)
    assert_matches(model, images, reference_matconvnet(images, weights))


def test_matconvnet_beta_net_struct_matches_numpy_forward(model, images, tmp_path):
    weights = random_matconvnet_weights(np.random.default_rng(1))
    src = tmp_path / "vgg_face.mat"
    write_beta_mat(src, weights)
    _, metadata = convert_and_load(model, src, tmp_path, fmt="mat")
    assert "net" in metadata["source_layout"]
    np.testing.assert_allclose(metadata["source_mean_rgb"], VGGFACE_MEAN_RGB, rtol=1e-5)
    assert_matches(model, images, reference_matconvnet(images, weights))


def _write_v73_mat(path, weights, h5py):
    """A MATLAB v7.3 file as MATLAB lays it out: HDF5 with a 512-byte user block, column-major arrays
    (HDF5 shape reversed), char arrays as uint16, cell arrays as object-reference datasets."""
    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        counter = iter(range(10**6))

        def put(value):
            name = f"r{next(counter)}"
            if isinstance(value, str):
                ds = refs.create_dataset(name, data=np.array([ord(c) for c in value], np.uint16).reshape(-1, 1))
                ds.attrs["MATLAB_class"] = np.bytes_("char")
            else:
                ds = refs.create_dataset(name, data=np.asarray(value).T)
                ds.attrs["MATLAB_class"] = np.bytes_("single")
            return ds.ref

        layer_refs = []
        for layer in matconvnet_layers(weights).ravel():
            group = refs.create_group(f"layer{next(counter)}")
            group.attrs["MATLAB_class"] = np.bytes_("struct")
            for field in ("name", "type"):
                ds = group.create_dataset(field, data=np.array([ord(c) for c in layer[field]], np.uint16).reshape(-1, 1))
                ds.attrs["MATLAB_class"] = np.bytes_("char")
            if layer["type"] == "conv":
                cell = [put(layer["weights"][0, 0]), put(layer["weights"][0, 1])]
                ds = group.create_dataset("weights", data=np.array(cell, dtype=h5py.ref_dtype).reshape(2, 1))
                ds.attrs["MATLAB_class"] = np.bytes_("cell")
            layer_refs.append(group.ref)
        ds = f.create_dataset("layers", data=np.array(layer_refs, dtype=h5py.ref_dtype).reshape(-1, 1))
        ds.attrs["MATLAB_class"] = np.bytes_("cell")
        meta = f.create_group("meta")
        norm = meta.create_group("normalization")
        norm.create_dataset("averageImage", data=np.array(VGGFACE_MEAN_RGB, np.float32).reshape(3, 1, 1))
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    with open(path, "r+b") as f:
        f.write(header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02IM")


def test_matlab_v73_file_is_read_through_h5py(model, images, tmp_path):
    h5py = pytest.importorskip("h5py")
    weights = random_matconvnet_weights(np.random.default_rng(2))
    src = tmp_path / "vgg_face_v73.mat"
    _write_v73_mat(src, weights, h5py)
    convert_and_load(model, src, tmp_path)
    assert_matches(model, images, reference_matconvnet(images, weights))


def test_matlab_v73_without_h5py_is_a_clear_error(tmp_path, monkeypatch):
    src = tmp_path / "vgg_face.mat"
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64 HDF5 schema 1.00 ."
    src.write_bytes(header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02IM" + b"\x00" * 512)
    monkeypatch.setitem(sys.modules, "h5py", None)  # makes `import h5py` fail
    with pytest.raises(ConversionError, match="v7.3.*h5py"):
        convert_vggface(src, "mat")


# ------------------------------------------------------------------------------ vgg_face_dag.pth
def test_torch_state_dict_matches_numpy_forward(model, images, tmp_path):
    state = random_torch_state(np.random.default_rng(3))
    src = tmp_path / "vgg_face_dag.pth"
    torch_pickle.save_torch_state_dict(src, state)
    assert detect_format(src) == "pth"
    _, metadata = convert_and_load(model, src, tmp_path)
    assert metadata["source_format"] == "pth" and metadata["source_channel_order"] == "rgb"
    assert metadata["width"] == WIDTH and metadata["input_size"] == INPUT
    assert set(metadata["dropped"]) == {"fc8.weight", "fc8.bias"}
    assert_matches(model, images, reference_torch(images, state))


def test_bgr_torch_state_dict_gets_its_first_layer_flipped(model, images, tmp_path):
    state = random_torch_state(np.random.default_rng(4))
    src = tmp_path / "caffe_export.pth"
    torch_pickle.save_torch_state_dict(src, state)
    converted, metadata = convert_and_load(model, src, tmp_path, fmt="pth", channel_order="bgr")
    assert metadata["source_channel_order"] == "bgr" and metadata["channel_order"] == "rgb"
    # our RGB input channel 0 (red) is the source's BGR channel 2
    np.testing.assert_array_equal(converted["conv1_1"]["kernel"][:, :, 0], state["conv1_1.weight"][:, 2].transpose(1, 2, 0))
    assert_matches(model, images, reference_torch(images, state, bgr=True))
    with pytest.raises(ConversionError, match="RGB"):
        convert_vggface(_tiny_mat(tmp_path), "mat", channel_order="bgr")


def _tiny_mat(tmp_path):
    path = tmp_path / "tiny.mat"
    write_simplenn_mat(path, random_matconvnet_weights(np.random.default_rng(5)))
    return path


def test_source_errors_are_clear(tmp_path):
    with pytest.raises(ConversionError, match="does not exist"):
        convert_vggface(tmp_path / "missing.pth", "pth")
    with pytest.raises(ConversionError, match="unknown weight format"):
        convert_vggface(_tiny_mat(tmp_path), "caffe")
    partial = tmp_path / "partial.pth"
    torch_pickle.save_torch_state_dict(partial, {"conv1_1.weight": np.zeros((4, 3, 3, 3), np.float32)})
    with pytest.raises(ConversionError, match="missing conv1_1.bias"):
        convert_vggface(partial, "pth")
    not_mat = tmp_path / "garbage.mat"
    not_mat.write_bytes(b"\x01\x02" * 200)
    with pytest.raises(ConversionError, match="not a readable MATLAB"):
        convert_vggface(not_mat, "auto")
    scipy.io.savemat(tmp_path / "other.mat", {"x": np.ones(3)})
    with pytest.raises(ConversionError, match="not a MatConvNet"):
        convert_vggface(tmp_path / "other.mat")


# ------------------------------------------------------------------------------ weight files
def test_convert_command_saves_and_refuses_to_overwrite(tmp_path):
    src = _tiny_mat(tmp_path)
    summary = convert_weights_command("mat", src, tmp_path / "out")
    abstract = nnx.eval_shape(lambda: VGGFace(head_sizes=None, width=WIDTH, input_size=INPUT, rngs=nnx.Rngs(0)))
    assert summary["num_params"] == count_params(nnx.state(abstract, nnx.Param))
    assert list(summary["layers"]) == list(CONV_LAYER_NAMES) + ["fc6", "fc7"]
    assert summary["metadata"]["input_size"] == INPUT
    state, metadata = load_weights(tmp_path / "out")
    assert metadata["width"] == WIDTH and state["conv1_1"]["kernel"].dtype == np.float32
    with pytest.raises(WeightsError, match="already exists"):
        convert_weights_command("mat", src, tmp_path / "out")
    convert_weights_command("auto", src, tmp_path / "out", overwrite=True)
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(WeightsError, match="not a jaxface weight directory"):
        convert_weights_command("mat", src, tmp_path / "precious", overwrite=True)
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"


def test_backbone_file_loads_into_a_model_with_fresh_heads(tmp_path):
    src = _tiny_mat(tmp_path)
    convert_weights_command("mat", src, tmp_path / "w")
    with_heads = nnx.eval_shape(
        lambda: VGGFace(head_sizes=(2, 3), width=WIDTH, input_size=INPUT, rngs=nnx.Rngs(0)))
    with pytest.raises(WeightsKeyError, match="heads/heads/0/kernel.*skip_prefixes"):
        restore_into(with_heads, tmp_path / "w")
    loaded = restore_into(with_heads, tmp_path / "w", skip_prefixes=("heads",))
    assert "fc7/kernel" in loaded and not any(p.startswith("heads") for p in loaded)
    state, _ = load_weights(tmp_path / "w")
    np.testing.assert_array_equal(np.asarray(with_heads.conv3_2.kernel.value), state["conv3_2"]["kernel"])
    partial = restore_into(with_heads, tmp_path / "w", skip_prefixes=("fc6", "fc7", "heads"))
    assert "fc6/kernel" not in partial and "conv5_3/bias" in partial


def test_other_shaped_model_gets_one_clear_error(tmp_path):
    convert_weights_command("mat", _tiny_mat(tmp_path), tmp_path / "w")
    wider = nnx.eval_shape(lambda: VGGFace(head_sizes=None, width=1 / 8, input_size=INPUT, rngs=nnx.Rngs(0)))
    with pytest.raises(WeightsShapeError) as info:
        restore_into(wider, tmp_path / "w")
    message = str(info.value)
    assert "conv1_1/kernel: file (3, 3, 3, 4) vs model (3, 3, 3, 8)" in message
    assert "width: file 0.0625, model 0.125" in message
    smaller = nnx.eval_shape(lambda: VGGFace(head_sizes=None, width=WIDTH, input_size=32, rngs=nnx.Rngs(0)))
    with pytest.raises(WeightsShapeError, match=r"1 parameter\(s\).*fc6/kernel: file \(128, 256\) vs model "
                                                r"\(32, 256\).*input_size: file 64, model 32"):
        restore_into(smaller, tmp_path / "w")


def test_weight_directory_errors(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        load_weights(tmp_path / "nowhere")
    save_weights(tmp_path / "w", {"layer": {"kernel": np.ones((2, 3), np.float32)}}, {"note": "x"})
    state, metadata = load_weights(tmp_path / "w")
    np.testing.assert_array_equal(state["layer"]["kernel"], np.ones((2, 3)))
    assert metadata == {"note": "x"}
    (tmp_path / "w" / "metadata.json").write_text("{not json")
    with pytest.raises(WeightsError, match="corrupt"):
        load_weights(tmp_path / "w")
    save_weights(tmp_path / "v", {"layer": {"kernel": np.ones((2, 3), np.float32)}}, {}, overwrite=True)
    for item in (tmp_path / "v" / "params").iterdir():
        if item.is_dir():
            for f in item.rglob("*"):
                if f.is_file():
                    f.write_bytes(b"garbage")
        else:
            item.write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="corrupt or unreadable"):
        load_weights(tmp_path / "v")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsNotFoundError, match="missing metadata.json, params"):
        load_weights(tmp_path / "empty")
    with pytest.raises(WeightsError, match="PRNG key"):
        save_weights(tmp_path / "k", {"key": jax.random.key(0)}, {})


# ------------------------------------------------------------------------------ torch pickle
def _expected_fixture():
    a = (np.arange(12, dtype=np.float32).reshape(3, 4) / 4 - 1).astype(np.float32)
    return {
        "float32": a, "float32_transposed": a.T, "float32_slice": a[1:, 1:3],
        "float16": (np.arange(6) / 8 - 0.25).astype(np.float16),
        "bfloat16": (np.arange(4) * 0.5 - 1).astype(ml_dtypes.bfloat16),
        "int64": np.arange(5, dtype=np.int64) - 2, "scalar": np.array(3.5, np.float32),
        "conv.weight": ((np.arange(54).reshape(2, 3, 3, 3) - 20) / 16).astype(np.float32),
    }


@pytest.mark.parametrize("name", ["torch_state_dict_zip.pth", "torch_state_dict_legacy.pth"])
def test_reader_matches_files_written_by_real_torch(name):
    state = torch_pickle.load_torch_state_dict(FIXTURES / name)
    expected = _expected_fixture()
    assert list(state) == list(expected)
    for key, value in expected.items():
        assert state[key].dtype == value.dtype, key
        assert state[key].shape == value.shape, key
        np.testing.assert_array_equal(state[key], value, err_msg=key)


def test_writer_round_trip_and_layout(tmp_path):
    original = collections.OrderedDict(
        w=np.random.default_rng(0).normal(size=(3, 2, 3, 3)).astype(np.float32),
        h=np.linspace(-1, 1, 5).astype(np.float16),
        b=np.array([1.5, -2.0], ml_dtypes.bfloat16),
        steps=np.arange(4, dtype=np.int64),
        scalar=np.array(2.0, np.float32),
    )
    path = tmp_path / "sd.pth"
    torch_pickle.save_torch_state_dict(path, original)
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
    assert {"sd/data.pkl", "sd/byteorder", "sd/version", "sd/data/0", "sd/data/4"} <= names
    loaded = torch_pickle.load_torch_state_dict(path)
    assert list(loaded) == list(original)
    for key in original:
        assert loaded[key].dtype == original[key].dtype
        np.testing.assert_array_equal(loaded[key], original[key])


def test_reader_refuses_arbitrary_globals(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps({"x": Evil()}, protocol=2))
    with pytest.raises(torch_pickle.TorchPickleError, match="print"):
        torch_pickle.load_torch_file(path)
    not_torch = tmp_path / "plain.pth"
    not_torch.write_bytes(b"hello world")
    with pytest.raises(torch_pickle.TorchPickleError, match="neither"):
        torch_pickle.load_torch_file(not_torch)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((FIXTURES / "torch_state_dict_legacy.pth").read_bytes()[:-20])
    with pytest.raises(torch_pickle.TorchPickleError, match="truncated"):
        torch_pickle.load_torch_file(truncated)
