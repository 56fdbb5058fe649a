"""Import ImageNet checkpoints of the detector backbones from torchvision / timm state dicts.

    state, metadata = convert_torch_backbone('resnet50-0676ba61.pth', 'resnet50', layout='torchvision')
    weights.save_weights('weights/resnet50', state, metadata)      # what `jaxface convert-weights` does

The user supplies the file (`.pth`/`.pt`/`.bin` torch zip or legacy pickle, read without torch by
torch_pickle; or `.safetensors`); nothing is downloaded. The result is a nested dict shaped like
`nnx.to_pure_dict(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))` of our model: batch-norm running
statistics are part of a pretrained backbone and are converted too.

Per architecture, a table maps our module paths to the reference's module prefixes; array layouts are
converted by kind:
    conv kernel       OIHW -> HWIO (depthwise: (C, 1, kh, kw) -> (kh, kw, 1, C), flax's grouped layout)
    linear kernel     (out, in) -> (in, out); a 1x1 conv used as a dense layer (SE blocks) is squeezed
    VGG fc6           (out, C*7*7) rows in (C, H, W) order -> (7*7*C, out) in our NHWC flatten order
    BatchNorm         weight/bias/running_mean/running_var -> scale/bias/mean/var (num_batches_tracked dropped)
    LayerNorm         weight/bias -> scale/bias; ConvNeXt layer scale (C, 1, 1) or timm `gamma` (C,) -> (C,)
The classifier (ImageNet's 1000 classes) is dropped, leaving our freshly initialised real/fake head,
unless its converted shape equals the model's head (num_outputs=1000), in which case it is kept.
Any missing, unexpected or misshapen key raises one ConversionError naming a few of them.

Supported (arch: layouts): mobilenetv3_small/large: torchvision; resnet18/34/50/101: torchvision, timm
(same key names); convnext_tiny: torchvision, timm; efficientnet_b0..b7: torchvision, timm (the
`efficientnet_b*` models, not the TF-padded `tf_efficientnet_*`); vgg16: torchvision (vgg16 and,
with batch_norm=True, vgg16_bn).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
from typing import Any, Callable, Iterable, Mapping

import jax
import numpy as np
from flax import nnx

from jaxface.models import registry

LAYOUTS = ("torchvision", "timm")


class ConversionError(ValueError):
    """The checkpoint cannot be converted to the requested backbone."""


@dataclasses.dataclass(frozen=True)
class _Target:
    """Where one of our modules lives in the reference state dict."""

    prefix: str
    head: bool = False  # the classifier: dropped unless its shape matches ours
    chw_rows: int = 0  # >0: a dense kernel whose input rows are a flattened (C, chw_rows, chw_rows) map
    conv1x1: bool = False  # our dense kernel is a 1x1 convolution in the reference (SE blocks)


_LEAF_NAMES = {"kernel": "weight", "bias": "bias", "scale": "weight", "mean": "running_mean",
               "var": "running_var", "layer_scale": "layer_scale"}


def _conv_bn(table: dict, ours: tuple, conv: str, bn: str) -> None:
    table[ours + ("conv",)] = _Target(conv)
    table[ours + ("bn",)] = _Target(bn)


# ------------------------------------------------------------------------------------------ tables
def _mobilenetv3_table(model, layout: str) -> dict:
    table: dict = {}
    _conv_bn(table, ("stem",), "features.0.0", "features.0.1")
    for i, block in enumerate(model.blocks):
        base, j = f"features.{i + 1}.block", 0
        if block.expand is not None:
            _conv_bn(table, ("blocks", i, "expand"), f"{base}.{j}.0", f"{base}.{j}.1")
            j += 1
        _conv_bn(table, ("blocks", i, "depthwise"), f"{base}.{j}.0", f"{base}.{j}.1")
        j += 1
        if block.se is not None:
            table[("blocks", i, "se", "fc1")] = _Target(f"{base}.{j}.fc1", conv1x1=True)
            table[("blocks", i, "se", "fc2")] = _Target(f"{base}.{j}.fc2", conv1x1=True)
            j += 1
        _conv_bn(table, ("blocks", i, "project"), f"{base}.{j}.0", f"{base}.{j}.1")
    last = len(model.blocks) + 1
    _conv_bn(table, ("last_conv",), f"features.{last}.0", f"features.{last}.1")
    table[("pre_logits",)] = _Target("classifier.0")
    table[("head",)] = _Target("classifier.3", head=True)
    return table


def _resnet_table(model, layout: str) -> dict:
    # timm's ResNets use torchvision's key names.
    table: dict = {}
    _conv_bn(table, ("stem",), "conv1", "bn1")
    for s, stage in enumerate(model.stages):
        for b, block in enumerate(stage):
            base = f"layer{s + 1}.{b}"
            for k in (1, 2, 3):
                if hasattr(block, f"conv{k}"):
                    _conv_bn(table, ("stages", s, b, f"conv{k}"), f"{base}.conv{k}", f"{base}.bn{k}")
            if block.downsample is not None:
                _conv_bn(table, ("stages", s, b, "downsample"), f"{base}.downsample.0", f"{base}.downsample.1")
    table[("head",)] = _Target("fc", head=True)
    return table


def _convnext_table(model, layout: str) -> dict:
    table: dict = {}
    tv = layout == "torchvision"
    table[("stem_conv",)] = _Target("features.0.0" if tv else "stem.0")
    table[("stem_norm",)] = _Target("features.0.1" if tv else "stem.1")
    for s, stage in enumerate(model.stages):
        if stage.downsample is not None:
            down = f"features.{2 * s}" if tv else f"stages.{s}.downsample"
            table[("stages", s, "downsample", "norm")] = _Target(f"{down}.0")
            table[("stages", s, "downsample", "conv")] = _Target(f"{down}.1")
        for b in range(len(stage.blocks)):
            ours = ("stages", s, "blocks", b)
            if tv:
                base = f"features.{2 * s + 1}.{b}"
                names = {"dwconv": "block.0", "norm": "block.2", "fc1": "block.3", "fc2": "block.5"}
            else:
                base = f"stages.{s}.blocks.{b}"
                names = {"dwconv": "conv_dw", "norm": "norm", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
            for ours_name, theirs in names.items():
                table[ours + (ours_name,)] = _Target(f"{base}.{theirs}")
            table[ours] = _Target(base)  # the block's own layer-scale parameter
    table[("head_norm",)] = _Target("classifier.0" if tv else "head.norm")
    table[("head",)] = _Target("classifier.2" if tv else "head.fc", head=True)
    return table


def _efficientnet_table(model, layout: str) -> dict:
    table: dict = {}
    tv = layout == "torchvision"
    if tv:
        _conv_bn(table, ("stem",), "features.0.0", "features.0.1")
    else:
        _conv_bn(table, ("stem",), "conv_stem", "bn1")
    for s, stage in enumerate(model.stages):
        for b, block in enumerate(stage):
            ours = ("stages", s, b)
            if tv:
                base, j = f"features.{s + 1}.{b}.block", 0
                if block.expand is not None:
                    _conv_bn(table, ours + ("expand",), f"{base}.{j}.0", f"{base}.{j}.1")
                    j += 1
                _conv_bn(table, ours + ("depthwise",), f"{base}.{j}.0", f"{base}.{j}.1")
                table[ours + ("se", "fc1")] = _Target(f"{base}.{j + 1}.fc1", conv1x1=True)
                table[ours + ("se", "fc2")] = _Target(f"{base}.{j + 1}.fc2", conv1x1=True)
                _conv_bn(table, ours + ("project",), f"{base}.{j + 2}.0", f"{base}.{j + 2}.1")
            else:
                base = f"blocks.{s}.{b}"
                if block.expand is None:  # timm's DepthwiseSeparableConv
                    _conv_bn(table, ours + ("depthwise",), f"{base}.conv_dw", f"{base}.bn1")
                    _conv_bn(table, ours + ("project",), f"{base}.conv_pw", f"{base}.bn2")
                else:  # timm's InvertedResidual
                    _conv_bn(table, ours + ("expand",), f"{base}.conv_pw", f"{base}.bn1")
                    _conv_bn(table, ours + ("depthwise",), f"{base}.conv_dw", f"{base}.bn2")
                    _conv_bn(table, ours + ("project",), f"{base}.conv_pwl", f"{base}.bn3")
                table[ours + ("se", "fc1")] = _Target(f"{base}.se.conv_reduce", conv1x1=True)
                table[ours + ("se", "fc2")] = _Target(f"{base}.se.conv_expand", conv1x1=True)
    last = len(model.stages) + 1
    if tv:
        _conv_bn(table, ("head_conv",), f"features.{last}.0", f"features.{last}.1")
        table[("head",)] = _Target("classifier.1", head=True)
    else:
        _conv_bn(table, ("head_conv",), "conv_head", "bn2")
        table[("head",)] = _Target("classifier", head=True)
    return table


def _vgg_table(model, layout: str) -> dict:
    from jaxface.models.vgg import POOL, POOLED_SIZE

    table: dict = {}
    index, conv = 0, 0
    for value in model.config:
        if value == POOL:
            index += 1
            continue
        table[("convs", conv, "conv")] = _Target(f"features.{index}")
        if model.batch_norm:
            table[("convs", conv, "bn")] = _Target(f"features.{index + 1}")
        index += 3 if model.batch_norm else 2  # conv, (bn), relu
        conv += 1
    if model.classifier == "fc":
        table[("fc6",)] = _Target("classifier.0", chw_rows=POOLED_SIZE)
        table[("fc7",)] = _Target("classifier.3")
        table[("head",)] = _Target("classifier.6", head=True)
    else:
        table[("head",)] = _Target("classifier.6", head=True)
    return table


_ARCHS: dict[str, tuple[Callable[[Any, str], dict], tuple[str, ...]]] = {
    "mobilenetv3_small": (_mobilenetv3_table, ("torchvision",)),
    "mobilenetv3_large": (_mobilenetv3_table, ("torchvision",)),
    "resnet18": (_resnet_table, LAYOUTS),
    "resnet34": (_resnet_table, LAYOUTS),
    "resnet50": (_resnet_table, LAYOUTS),
    "resnet101": (_resnet_table, LAYOUTS),
    "convnext_tiny": (_convnext_table, LAYOUTS),
    **{f"efficientnet_b{i}": (_efficientnet_table, LAYOUTS) for i in range(8)},
    "vgg16": (_vgg_table, ("torchvision",)),
}
SUPPORTED = {arch: layouts for arch, (_, layouts) in _ARCHS.items()}


# ------------------------------------------------------------------------------------------ reading
def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """{key: float32 numpy array} from a .safetensors file or a torch-saved (.pth/.pt/.bin) state dict."""
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise ConversionError(f"checkpoint file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            raw = load_file(str(path))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise ConversionError(f"{path}: not a readable .safetensors file ({type(e).__name__}: {e})") from None
    else:
        from jaxface.models.torch_pickle import load_torch_state_dict

        try:
            raw = load_torch_state_dict(path)
        except (ValueError, OSError, KeyError, EOFError) as e:
            raise ConversionError(f"{path}: not a readable torch state dict ({type(e).__name__}: {e})") from None
    keys = list(raw)
    for wrapper in ("module.", "model."):  # DataParallel / some training scripts prefix every key
        if keys and all(k.startswith(wrapper) for k in keys):
            raw = {k[len(wrapper):]: v for k, v in raw.items()}
            keys = list(raw)
    return {k: np.asarray(v) for k, v in raw.items()}


def _convert_leaf(leaf: str, value: np.ndarray, target: _Target, our_shape: tuple) -> np.ndarray:
    value = np.asarray(value, np.float32)
    if leaf == "kernel":
        if len(our_shape) == 4 and value.ndim == 4:
            return value.transpose(2, 3, 1, 0)
        if len(our_shape) == 2 and value.ndim == 4 and value.shape[2:] == (1, 1):
            value = value[:, :, 0, 0]
        if len(our_shape) == 2 and value.ndim == 2:
            if target.chw_rows:
                out_features, in_features = value.shape
                rows = target.chw_rows
                channels = in_features // (rows * rows)
                if channels * rows * rows == in_features:
                    return (value.reshape(out_features, channels, rows, rows)
                            .transpose(2, 3, 1, 0).reshape(in_features, out_features))
            return value.T
        return value
    if leaf == "layer_scale":
        return value.reshape(-1)
    return value


def _abstract_model(arch: str, **kwargs):
    return registry.abstract_detector(arch, **kwargs)


def _check_arch(arch: str, layout: str):
    if arch not in _ARCHS:
        raise ConversionError(
            f"no converter for {arch!r}; convertible architectures are: {', '.join(_ARCHS)}"
        )
    table_fn, layouts = _ARCHS[arch]
    if layout not in layouts:
        raise ConversionError(f"{arch} converts from layout(s) {', '.join(layouts)}, not {layout!r}")
    return table_fn


def _leaf_names(layout: str) -> dict[str, str]:
    return dict(_LEAF_NAMES, layer_scale="gamma" if layout == "timm" else "layer_scale")


def _reference_shape(leaf: str, our_shape: tuple, target: _Target, layout: str) -> tuple:
    if leaf == "kernel" and len(our_shape) == 4:
        kh, kw, cin, cout = our_shape
        return (cout, cin, kh, kw)
    if leaf == "kernel" and len(our_shape) == 2:
        cin, cout = our_shape
        return (cout, cin, 1, 1) if target.conv1x1 else (cout, cin)
    if leaf == "layer_scale" and layout == "torchvision":
        return (our_shape[0], 1, 1)
    return tuple(our_shape)


def expected_state_dict_shapes(arch: str, *, layout: str = "torchvision", width: float = 1.0,
                               depth: float = 1.0, num_outputs: int = 1000, **model_kwargs) -> dict[str, tuple]:
    """{reference key: shape} that a `layout` state dict for this model holds (num_batches_tracked aside).

    With num_outputs=1000 this is the key set of the ImageNet checkpoint; useful to check a file before
    converting it and to test the name tables against the real libraries.
    """
    table_fn = _check_arch(arch, layout)
    model = _abstract_model(arch, num_outputs=num_outputs, width=width, depth=depth, **model_kwargs)
    table, names = table_fn(model, layout), _leaf_names(layout)
    shapes = {}
    for path, abstract in _our_leaves(model).items():
        target = table[path[:-1]]
        shapes[f"{target.prefix}.{names[path[-1]]}"] = _reference_shape(path[-1], tuple(abstract.shape), target,
                                                                        layout)
    return shapes


def _layout_hint(source: Mapping[str, np.ndarray], arch: str, layout: str, **model_kwargs) -> str:
    """'it looks like a timm state dict' when the file's keys are the other layout's (heads aside)."""
    for other in _ARCHS[arch][1]:
        if other == layout:
            continue
        expected = expected_state_dict_shapes(arch, layout=other, **model_kwargs)
        head = next(t.prefix for t in _ARCHS[arch][0](_abstract_model(arch, **model_kwargs), other).values()
                    if t.head)
        body = {k for k in expected if not k.startswith(head + ".")}
        present = {k for k in source if not k.endswith("num_batches_tracked") and not k.startswith(head + ".")}
        if body == present:
            return f"it looks like a {other} state dict: pass layout='{other}'"
    return ""


def _our_leaves(model) -> dict[tuple, Any]:
    state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
    leaves = {}
    for path, variable in nnx.to_flat_state(state):
        value = variable.get_value() if isinstance(variable, nnx.Variable) else variable
        leaves[tuple(getattr(k, "key", k) for k in path)] = value
    return leaves


def _few(items: Iterable[str], n: int = 6) -> str:
    items = list(items)
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def _nest(flat: Mapping[tuple, np.ndarray]) -> dict:
    nested: dict = {}
    for path, value in flat.items():
        node = nested
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return nested


def convert_torch_backbone(
    src_path: str | os.PathLike,
    arch: str,
    *,
    layout: str = "torchvision",
    width: float = 1.0,
    depth: float = 1.0,
    num_outputs: int = 1,
    **model_kwargs,
) -> tuple[dict, dict]:
    """Convert a torchvision/timm state dict for `arch` into our model's state (nested dict) + metadata.

    `width`, `depth`, `num_outputs` and `model_kwargs` (e.g. batch_norm=True for vgg16_bn) describe the
    model the state is for, as in registry.build_detector; ImageNet checkpoints are width=depth=1.
    """
    table_fn = _check_arch(arch, layout)
    model = _abstract_model(arch, num_outputs=num_outputs, width=width, depth=depth, **model_kwargs)
    table = table_fn(model, layout)
    source = read_state_dict(src_path)
    leaf_names = _leaf_names(layout)

    converted: dict[tuple, np.ndarray] = {}
    consumed: set[str] = set()
    missing, mismatched, unmapped = [], [], []
    head_keys, head_shapes_ok = [], True
    for path, abstract in _our_leaves(model).items():
        module_path, leaf = path[:-1], path[-1]
        target = table.get(module_path)
        if target is None or leaf not in leaf_names:
            unmapped.append("/".join(map(str, path)))
            continue
        key = f"{target.prefix}.{leaf_names[leaf]}"
        if key not in source:
            missing.append(key)
            continue
        value = _convert_leaf(leaf, source[key], target, tuple(abstract.shape))
        consumed.add(key)
        if target.head:
            head_keys.append(key)
            head_shapes_ok &= value.shape == tuple(abstract.shape)
            converted[path] = value
            continue
        if value.shape != tuple(abstract.shape):
            mismatched.append(f"{key} {tuple(source[key].shape)} -> {value.shape} vs ours "
                              f"{'/'.join(map(str, path))} {tuple(abstract.shape)}")
            continue
        converted[path] = value
    if unmapped:  # a bug in a table, not a user mistake; still say exactly what is missing
        raise ConversionError(f"internal: no {layout} name for our parameter(s) {_few(unmapped)}")
    # Keys of the reference's classifier are expected even when we drop them.
    head_prefix = next(t.prefix for t in table.values() if t.head)
    extra = sorted(k for k in source if k not in consumed and not k.endswith("num_batches_tracked")
                   and not k.startswith(head_prefix + "."))
    problems = []
    if missing:
        problems.append(f"{len(missing)} key(s) missing from the file: {_few(missing)}")
    if extra:
        problems.append(f"{len(extra)} unexpected key(s) in the file: {_few(extra)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_few(mismatched, 3)}")
    if problems:
        problems.append(_layout_hint(source, arch, layout, width=width, depth=depth, num_outputs=num_outputs,
                                     **model_kwargs))
        raise ConversionError(
            f"{src_path} is not a {layout} {arch} state dict for this model (width={width}, depth={depth}"
            f"{', ' + ', '.join(f'{k}={v}' for k, v in model_kwargs.items()) if model_kwargs else ''}): "
            + "; ".join(p for p in problems if p)
            + ". Check the architecture name, the layout (torchvision or timm) and the width/depth the "
              "checkpoint was built with."
        )
    head_loaded = bool(head_keys) and head_shapes_ok
    if not head_loaded:
        converted = {p: v for p, v in converted.items() if p[0] != "head"}

    digest = hashlib.sha256()
    with open(src_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    metadata = {
        "source": os.fspath(src_path),
        "source_sha256": digest.hexdigest(),
        "converter": "jaxface.models.convert_torch",
        "arch": arch,
        "layout": layout,
        "width": float(width),
        "depth": float(depth),
        "num_outputs": int(num_outputs),
        "model_kwargs": dict(model_kwargs),
        "head": "converted" if head_loaded else "dropped (fresh real/fake head)",
        "skip_prefixes": [] if head_loaded else ["head"],
        "num_arrays": len(converted),
    }
    return _nest(converted), metadata


def load_state(model: nnx.Module, state: Mapping, *, skip_prefixes: Iterable[str] = ()) -> list[str]:
    """Copy a converted state (nested dict of Param and BatchStat arrays) into `model`.

    Every parameter and batch statistic of the model outside `skip_prefixes` (e.g. 'head') must be
    present with the same shape; returns the loaded '/'-joined paths.
    """
    prefixes = tuple(p.replace(".", "/").strip("/") for p in skip_prefixes)

    def skipped(name):
        return any(name == p or name.startswith(p + "/") for p in prefixes)

    flat_in = {}

    def walk(node, path):
        for key, value in node.items():
            if isinstance(value, Mapping):
                walk(value, path + (str(key),))
            else:
                flat_in["/".join(path + (str(key),))] = value

    walk(state, ())
    target = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
    pure = nnx.to_pure_dict(target)
    loaded, missing, mismatched, model_names = [], [], [], set()
    for path, variable in nnx.to_flat_state(target):
        keys = tuple(getattr(k, "key", k) for k in path)
        name = "/".join(map(str, keys))
        model_names.add(name)
        if skipped(name):
            continue
        if name not in flat_in:
            missing.append(name)
            continue
        old = variable.get_value() if isinstance(variable, nnx.Variable) else variable
        new = np.asarray(flat_in[name])
        if new.shape != tuple(old.shape):
            mismatched.append(f"{name}: {new.shape} vs model {tuple(old.shape)}")
            continue
        node = pure
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = jax.device_put(np.asarray(new, dtype=old.dtype))  # no per-shape compile
        loaded.append(name)
    extra = sorted(n for n in flat_in if n not in model_names and not skipped(n))
    if missing or mismatched or extra:
        parts = []
        if missing:
            parts.append(f"missing: {_few(missing)}")
        if mismatched:
            parts.append(f"shape mismatch: {_few(mismatched, 3)}")
        if extra:
            parts.append(f"not in the model: {_few(extra)}")
        raise ConversionError("the state does not fit the model (" + "; ".join(parts) + ")")
    nnx.replace_by_pure_dict(target, pure)
    nnx.update(model, target)
    return loaded


def convert_and_save(src_path, out_dir, arch: str, *, layout: str = "torchvision", overwrite: bool = False,
                     **kwargs) -> dict:
    """convert_torch_backbone + weights.save_weights; returns the metadata written."""
    from jaxface.models import weights

    state, metadata = convert_torch_backbone(src_path, arch, layout=layout, **kwargs)
    weights.save_weights(out_dir, state, metadata, overwrite=overwrite)
    return metadata
