"""torchvision/timm -> jaxface backbone conversion, checked against outputs of the real PyTorch models.

fixtures/torch_golden.npz was recorded by fixtures/make_torch_golden.py with torch 2.14.1,
torchvision 0.29.1 and timm 1.0.31: for each case, the reference model's state-dict key names, shapes
and dtypes at a reduced size, and its logits and pooled features on a fixed input, with the synthetic
weights of fixtures/torch_golden_recipe.py (rebuilt here; nothing large is stored). It also records the
key names and shapes of the full-size ImageNet models and torchvision's EfficientNet B0-B7 plans.
"""
import functools
import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from jaxface.models import convert_torch, efficientnet, torch_pickle, weights
from jaxface.models.convert_torch import ConversionError
from jaxface.models.registry import build_detector

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"


def _load_recipe():
    spec = importlib.util.spec_from_file_location("torch_golden_recipe", FIXTURES / "torch_golden_recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


recipe = _load_recipe()
GOLDEN = np.load(FIXTURES / "torch_golden.npz")
MANIFEST = json.loads(bytes(GOLDEN["manifest"]).decode())
FULL_SIZE = json.loads(bytes(GOLDEN["full_size"]).decode())
EFFICIENTNET_PLANS = json.loads(bytes(GOLDEN["efficientnet_plans"]).decode())


def _state_dict(case):
    spec = MANIFEST[case]
    return recipe.synthetic_state_dict(spec["keys"], spec["seed"])


def _model_kwargs(case):
    return dict(MANIFEST[case]["model_kwargs"])


def _convert(path, case, **overrides):
    spec = MANIFEST[case]
    kwargs = {**_model_kwargs(case), "num_outputs": spec["num_classes"], **overrides}
    return convert_torch.convert_torch_backbone(path, spec["arch"], layout=spec["layout"], **kwargs)


def _build(case, num_outputs=None):
    spec = MANIFEST[case]
    kwargs = _model_kwargs(case)
    width, depth = kwargs.pop("width", 1.0), kwargs.pop("depth", 1.0)
    return build_detector(spec["arch"], input_size=32, num_outputs=num_outputs or spec["num_classes"],
                          width=width, depth=depth, rngs=nnx.Rngs(0), **kwargs)


@functools.partial(jax.jit, static_argnums=0,
                   compiler_options={"xla_backend_optimization_level": 0})  # compiles ~2x faster
def _run_features_and_logits(graphdef, state, x):
    model = nnx.merge(graphdef, state)
    feats = model.features(x)
    return feats, model.head(feats)  # eval mode: the head's dropout is the identity


def _features_and_logits(model, x):
    graphdef, state = nnx.split(model)
    return _run_features_and_logits(graphdef, state, x)


@pytest.fixture
def mobilenet_file(tmp_path):
    path = tmp_path / "mobilenet_v3_small.safetensors"
    save_file(_state_dict("mobilenetv3_small_tv"), str(path))
    return path


@pytest.mark.parametrize("case", list(MANIFEST))
def test_converted_model_reproduces_reference_outputs(case, tmp_path):
    path = tmp_path / f"{case}.safetensors"
    save_file(_state_dict(case), str(path))
    state, metadata = _convert(path, case)
    assert metadata["head"] == "converted"  # num_outputs equals the reference's class count
    model = _build(case)
    loaded = convert_torch.load_state(model, state)
    has_batch_norm = any(name.endswith("running_mean") for name, _, _ in MANIFEST[case]["keys"])
    assert any(name.endswith("/mean") for name in loaded) == has_batch_norm  # running statistics converted

    x = recipe.synthetic_images(case, *MANIFEST[case]["input_shape"][:3])
    feats, logits = _features_and_logits(model, jnp.asarray(x))
    ref_feats, ref_logits = GOLDEN[f"{case}/features"], GOLDEN[f"{case}/logits"]
    assert feats.shape == ref_feats.shape and logits.shape == ref_logits.shape
    scale = max(1.0, float(np.abs(ref_feats).max()))
    np.testing.assert_allclose(np.asarray(feats), ref_feats, atol=1e-4 * scale, rtol=0)
    np.testing.assert_allclose(np.asarray(logits), ref_logits, atol=1e-4 * scale, rtol=0)


def test_pth_file_converts_like_safetensors(tmp_path, mobilenet_file):
    pth = tmp_path / "mobilenet_v3_small.pth"
    torch_pickle.save_torch_state_dict(pth, _state_dict("mobilenetv3_small_tv"))
    from_pth, meta_pth = _convert(pth, "mobilenetv3_small_tv")
    from_st, _ = _convert(mobilenet_file, "mobilenetv3_small_tv")
    flat_pth, flat_st = weights.flatten_state(from_pth), weights.flatten_state(from_st)
    assert sorted(flat_pth) == sorted(flat_st)
    for name in flat_st:
        np.testing.assert_array_equal(flat_pth[name], flat_st[name])
    assert meta_pth["source_sha256"] and meta_pth["arch"] == "mobilenetv3_small"


def test_imagenet_head_is_dropped_for_a_real_fake_head(mobilenet_file):
    source = _state_dict("mobilenetv3_small_tv")
    state, metadata = _convert(mobilenet_file, "mobilenetv3_small_tv", num_outputs=1)
    assert "head" not in state and metadata["skip_prefixes"] == ["head"]
    assert metadata["head"].startswith("dropped")
    model = _build("mobilenetv3_small_tv", num_outputs=1)
    fresh_head = np.asarray(model.head.kernel[...]).copy()
    with pytest.raises(ConversionError, match="missing: head/"):
        convert_torch.load_state(model, state)
    convert_torch.load_state(model, state, skip_prefixes=metadata["skip_prefixes"])
    np.testing.assert_array_equal(np.asarray(model.head.kernel[...]), fresh_head)
    # Layout conversions: OIHW -> HWIO (depthwise (C,1,k,k) -> (k,k,1,C)), (out,in) -> (in,out), BN stats.
    np.testing.assert_array_equal(np.asarray(model.stem.conv.kernel[...]),
                                  source["features.0.0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(np.asarray(model.blocks[0].depthwise.conv.kernel[...]),
                                  source["features.1.block.0.0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(np.asarray(model.blocks[0].se.fc1.kernel[...]),
                                  source["features.1.block.1.fc1.weight"][:, :, 0, 0].T)
    np.testing.assert_array_equal(np.asarray(model.pre_logits.kernel[...]), source["classifier.0.weight"].T)
    np.testing.assert_array_equal(np.asarray(model.last_conv.bn.var[...]), source["features.12.1.running_var"])


def test_convert_and_save_round_trip(tmp_path, mobilenet_file):
    out = tmp_path / "weights"
    metadata = convert_torch.convert_and_save(mobilenet_file, out, "mobilenetv3_small", width=0.25)
    state, saved_meta = weights.load_weights(out)
    assert saved_meta["arch"] == "mobilenetv3_small" and saved_meta["width"] == 0.25
    assert saved_meta["source_sha256"] == metadata["source_sha256"]
    model = _build("mobilenetv3_small_tv", num_outputs=1)
    loaded = convert_torch.load_state(model, state, skip_prefixes=["head"])  # string list indices work too
    assert "blocks/10/project/bn/mean" in loaded


@pytest.mark.parametrize("name", list(FULL_SIZE))
def test_name_tables_match_full_size_imagenet_checkpoints(name):
    record = FULL_SIZE[name]
    expected = convert_torch.expected_state_dict_shapes(record["arch"], layout=record["layout"],
                                                        num_outputs=1000, **record["model_kwargs"])
    recorded = {k: tuple(v) for k, v in record["shapes"].items()}
    assert sorted(set(expected) ^ set(recorded)) == []
    assert {k: v for k, v in expected.items() if recorded[k] != v} == {}


@pytest.mark.parametrize("level", range(8))
def test_efficientnet_compound_scaling_matches_torchvision(level):
    variant = f"efficientnet_b{level}"
    reference = EFFICIENTNET_PLANS[variant]
    stem, stages, stage_channels, head = efficientnet.stage_plan(variant)
    assert stem == reference["stem"] and head == reference["head"]
    assert [[s.num_blocks, c] for s, c in zip(stages, stage_channels)] == reference["stages"]
    coefficients = efficientnet.COMPOUND_COEFFICIENTS[variant]
    assert coefficients.bn_eps == pytest.approx(reference["bn_eps"])
    assert coefficients.dropout == pytest.approx(reference["dropout"])


def test_wrapped_keys_are_unwrapped(tmp_path):
    path = tmp_path / "ddp.safetensors"
    save_file({"module." + k: v for k, v in _state_dict("mobilenetv3_small_tv").items()}, str(path))
    state, _ = _convert(path, "mobilenetv3_small_tv")
    assert "stem" in state and "blocks" in state


def test_missing_and_unexpected_keys_are_named(tmp_path):
    source = _state_dict("mobilenetv3_small_tv")
    broken = {k: v for k, v in source.items() if k != "features.3.block.1.1.running_var"}
    broken["features.99.0.weight"] = np.zeros((1,), np.float32)
    path = tmp_path / "broken.safetensors"
    save_file(broken, str(path))
    with pytest.raises(ConversionError) as info:
        _convert(path, "mobilenetv3_small_tv")
    message = str(info.value)
    assert "features.3.block.1.1.running_var" in message and "features.99.0.weight" in message


def test_wrong_width_is_reported_as_shape_mismatch(mobilenet_file):
    with pytest.raises(ConversionError, match="shape mismatch.*width"):
        _convert(mobilenet_file, "mobilenetv3_small_tv", width=0.5)


def test_timm_layout_does_not_fit_torchvision_file(mobilenet_file, tmp_path):
    path = tmp_path / "effnet.safetensors"
    save_file(_state_dict("efficientnet_b0_tv"), str(path))
    with pytest.raises(ConversionError) as info:
        convert_torch.convert_torch_backbone(path, "efficientnet_b0", layout="timm", width=0.25, depth=0.34)
    message = str(info.value)
    assert "key(s) missing from the file: " in message
    assert "unexpected key(s) in the file: features.0.0.weight" in message
    assert "looks like a torchvision state dict" in message


def test_user_errors(tmp_path, mobilenet_file):
    with pytest.raises(ConversionError, match="convertible architectures are: .*mobilenetv3_small"):
        convert_torch.convert_torch_backbone(mobilenet_file, "alexnet")
    with pytest.raises(ConversionError, match="layout"):
        convert_torch.convert_torch_backbone(mobilenet_file, "mobilenetv3_small", layout="timm")
    with pytest.raises(ConversionError, match="does not exist"):
        convert_torch.convert_torch_backbone(tmp_path / "nope.pth", "resnet50")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ConversionError, match="not a readable torch state dict"):
        convert_torch.convert_torch_backbone(garbage, "resnet50")
    bad_st = tmp_path / "garbage.safetensors"
    bad_st.write_bytes(b"\x00" * 16)
    with pytest.raises(ConversionError, match="not a readable .safetensors"):
        convert_torch.convert_torch_backbone(bad_st, "resnet50")
