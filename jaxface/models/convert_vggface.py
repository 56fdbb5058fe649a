"""Convert the published VGG-Face weights into a jaxface weight directory (no torch, no MATLAB).

Supported sources
-----------------
``mat``: the MatConvNet releases, read with scipy.io.loadmat (or h5py for MATLAB v7.3 files).
  * ``vgg-face.mat`` (MatConvNet model zoo, SimpleNN): top-level ``layers`` (cell array of structs with
    ``name``, ``type`` and, for ``type == 'conv'``, ``weights = {filters, biases}``) and
    ``meta.normalization.averageImage``.
  * ``vgg_face.mat`` (the 2015 ``vgg_face_matconvnet`` release): the same layers inside a top-level
    struct ``net`` (``net.layers``, ``net.normalization.averageImage``); very old files keep
    ``filters``/``biases`` as separate fields, which is accepted too.
  Filters are (H, W, Cin, Cout), i.e. already our HWIO. fc6/fc7/fc8 are stored as convolutions: fc6 as a
  7x7x512x4096 filter applied "valid" to pool5, fc7 as 1x1x4096x4096. MatConvNet's Caffe importer
  re-indexes the Caffe fc6 blob into this (row, column, channel) filter, so a C-order reshape of the
  filter to (7*7*512, 4096) is exactly our NHWC flatten order.
  Channel order: RGB. MatConvNet's Caffe importer reverses conv1_1's input channels from Caffe's BGR
  (utils/import-caffe.py, "to RGB"), MatConvNet feeds imread() RGB images, and averageImage is the RGB
  mean (129.1863, 104.7624, 93.5940).
``pth``: Albanie's Caffe->MatConvNet->PyTorch ``vgg_face_dag.pth`` state dict (keys ``conv1_1.weight``
  OIHW, ``conv1_1.bias``, ..., ``fc6.weight`` (4096, 25088), ``fc7.weight``, ``fc8.weight``). Read by
  `torch_pickle` (torch is not needed; both the zip and the pre-1.6 legacy layouts). fc6's 25088 inputs
  are pool5 flattened in PyTorch's (C, H, W) order and are reordered to (H, W, C). Channel order: RGB
  with mean (129.186, 104.762, 93.594) in RGB order (the model's ``meta`` in Albanie's definition file),
  since it was converted from the MatConvNet model. A state dict exported directly from the original
  Caffe model takes BGR input: pass ``channel_order='bgr'`` and conv1_1's input channels are reversed.

The result always has RGB kernels and expects VGGFace(preprocess='vggface'): x * 255 - mean_rgb.
fc8 (the 2622 training identities) is dropped; attribute heads are trained fresh.
Width and input size are inferred from the file (width = fc_dim / 4096, input_size = 32 * fc6's
spatial support), so width-reduced files in the same layouts convert as well.
"""
from __future__ import annotations

import os
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np

from jaxface.models.vggface import (
    BASE_FC_DIM,
    CONV_LAYER_NAMES,
    VGGFACE_MEAN_RGB,
    _BLOCKS,
    count_params,
    scaled_channels,
)

SOURCE_FORMATS = ("mat", "pth", "auto")
_SOURCE_LAYERS = CONV_LAYER_NAMES + ("fc6", "fc7")
_CHANNEL_ORDERS = ("rgb", "bgr")


class ConversionError(ValueError):
    """The source file cannot be converted into VGGFace weights."""


# ------------------------------------------------------------------------------------------ helpers
def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _as_list(obj: Any) -> list:
    if obj is None:
        return []
    if isinstance(obj, (list, tuple)):
        return list(obj)
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            return list(obj.ravel(order="F"))
        return [obj]
    return [obj]  # scipy squeezes a 1-element cell array to its element


def _as_str(obj: Any) -> str:
    if isinstance(obj, bytes):
        return obj.decode()
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "US":
            return "".join(str(s) for s in obj.ravel())
        if obj.size == 0:
            return ""
    return str(obj)


def _as_hwio(filters: Any, name: str) -> np.ndarray:
    f = np.asarray(filters, dtype=np.float32)
    if f.ndim == 2:  # scipy's squeeze_me drops the leading 1x1 of fc7/fc8 (and fc6 at 32 px)
        f = f[None, None]
    elif f.ndim == 3:  # a single output channel lost its trailing dimension
        f = f[..., None]
    if f.ndim != 4:
        raise ConversionError(f"{name}: expected a 4-D (H, W, Cin, Cout) filter, got shape {np.shape(filters)}")
    return f


def _mean_rgb(average_image: Any) -> list[float] | None:
    if average_image is None:
        return None
    a = np.asarray(average_image, dtype=np.float64)
    if a.size == 3:
        return [float(v) for v in a.ravel()]
    if a.ndim == 3 and a.shape[-1] == 3:
        return [float(v) for v in a.reshape(-1, 3).mean(axis=0)]
    return None


# ------------------------------------------------------------------------------------------ .mat
def _load_mat_v73(path: str) -> dict[str, Any]:
    try:
        import h5py
    except ImportError:
        raise ConversionError(
            f"{path} is a MATLAB v7.3 (HDF5) file; reading it needs h5py (`pip install h5py`), or "
            f"re-save it in MATLAB with save(..., '-v7')"
        ) from None

    def convert(f, obj):
        if isinstance(obj, h5py.Group):
            return {k: convert(f, obj[k]) for k in obj.keys() if not k.startswith("#")}
        cls = obj.attrs.get("MATLAB_class", b"")
        cls = cls.decode() if isinstance(cls, bytes) else str(cls)
        if obj.attrs.get("MATLAB_empty", 0):
            return np.zeros(0)
        data = obj[()]
        if h5py.check_dtype(ref=obj.dtype) is not None:
            # MATLAB writes column-major; HDF5 shows the reversed shape, so .T restores MATLAB order.
            return [convert(f, f[ref]) for ref in np.asarray(data).T.ravel(order="F")]
        if cls == "char":
            return "".join(chr(int(c)) for c in np.asarray(data).T.ravel(order="F"))
        return np.asarray(data).T

    with h5py.File(path, "r") as f:
        return {k: convert(f, f[k]) for k in f.keys() if not k.startswith("#")}


def _load_mat(path: str) -> dict[str, Any]:
    import scipy.io

    try:
        return scipy.io.loadmat(path, struct_as_record=False, squeeze_me=True)
    except NotImplementedError:  # scipy: "Please use HDF reader for matlab v7.3 files"
        return _load_mat_v73(path)
    except Exception as e:  # noqa: BLE001 - scipy raises ValueError/TypeError/... for non-MAT input
        raise ConversionError(f"{path} is not a readable MATLAB .mat file ({type(e).__name__}: {e})") from None


def _mat_layers(path: str) -> tuple[list[tuple[str, np.ndarray, np.ndarray]], list[float] | None, str]:
    """[(name, filters HWIO, biases)] of the conv-type layers, the mean pixel, the layout name."""
    mat = _load_mat(path)
    if "net" in mat:
        net, layout = mat["net"], "matconvnet-vgg_face (net.layers)"
        layers = _get(net, "layers")
        normalization = _get(net, "normalization")
        if normalization is None:
            normalization = _get(_get(net, "meta"), "normalization")
    elif "layers" in mat:
        layers, layout = mat["layers"], "matconvnet-simplenn (layers + meta)"
        normalization = _get(_get(mat, "meta"), "normalization")
        if normalization is None:
            normalization = _get(mat, "normalization")
    else:
        keys = [k for k in mat if not k.startswith("__")]
        hint = " (a DagNN model: convert it to SimpleNN or use the vgg-face.mat release)" if "params" in mat else ""
        raise ConversionError(
            f"{path}: no 'layers' or 'net' variable, found {keys}; not a MatConvNet SimpleNN model{hint}"
        )
    mean = _mean_rgb(_get(normalization, "averageImage"))

    convs = []
    for layer in _as_list(layers):
        if _as_str(_get(layer, "type", "")) != "conv":
            continue
        name = _as_str(_get(layer, "name", f"conv#{len(convs)}"))
        weights = _get(layer, "weights")
        if weights is not None and len(_as_list(weights)) >= 2:
            filters, biases = _as_list(weights)[:2]
        else:
            filters, biases = _get(layer, "filters"), _get(layer, "biases")
        if filters is None or biases is None:
            raise ConversionError(f"{path}: conv layer {name!r} has no weights")
        convs.append((name, _as_hwio(filters, name), np.asarray(biases, dtype=np.float32).ravel()))
    return convs, mean, layout


def _assign_names(found: Sequence[str], path: str) -> list[str]:
    """Our names for the source's conv-type layers: by name when they match, else by position."""
    if all(n in found for n in _SOURCE_LAYERS):
        return list(found)
    if len(found) in (len(_SOURCE_LAYERS), len(_SOURCE_LAYERS) + 1):
        return list(_SOURCE_LAYERS + ("fc8",))[: len(found)]
    raise ConversionError(
        f"{path}: expected the 16 conv-type layers of VGG-Face (conv1_1 ... conv5_3, fc6, fc7, fc8), found "
        f"{len(found)}: {', '.join(found)}"
    )


def _convert_mat(path: str) -> tuple[dict, dict]:
    convs, mean, layout = _mat_layers(path)
    names = _assign_names([c[0] for c in convs], path)
    by_name = {our: (f, b) for our, (_, f, b) in zip(names, convs)}
    layers: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in CONV_LAYER_NAMES:
        layers[name] = by_name[name]
    fc6_f, fc6_b = by_name["fc6"]
    side, side2, c5, fc_dim = fc6_f.shape
    if side != side2:
        raise ConversionError(f"{path}: fc6 filter must be square, got {fc6_f.shape}")
    # (H, W, C, D) -> rows in (H, W, C) order == our NHWC flatten of pool5.
    layers["fc6"] = (fc6_f.reshape(side * side * c5, fc_dim), fc6_b)
    fc7_f, fc7_b = by_name["fc7"]
    if fc7_f.shape[:2] != (1, 1):
        raise ConversionError(f"{path}: fc7 should be a 1x1 filter, got {fc7_f.shape}")
    layers["fc7"] = (fc7_f.reshape(fc7_f.shape[2], fc7_f.shape[3]), fc7_b)
    dropped = {n: list(by_name[n][0].shape) for n in by_name if n not in layers}
    source = {"source_format": "mat", "source_layout": layout, "source_channel_order": "rgb",
              "source_mean_rgb": mean, "dropped": dropped}
    return layers, source


# ------------------------------------------------------------------------------------------ .pth
def _convert_pth(path: str, channel_order: str) -> tuple[dict, dict]:
    from jaxface.models.torch_pickle import TorchPickleError, load_torch_state_dict

    try:
        state_dict = load_torch_state_dict(path)
    except TorchPickleError as e:
        raise ConversionError(str(e)) from None
    state_dict = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    missing = [f"{n}.{p}" for n in _SOURCE_LAYERS for p in ("weight", "bias") if f"{n}.{p}" not in state_dict]
    if missing:
        raise ConversionError(
            f"{path}: not a vgg_face_dag state dict; missing {', '.join(missing[:6])}"
            f"{' ...' if len(missing) > 6 else ''} (found keys: {', '.join(list(state_dict)[:6])} ...)"
        )
    layers: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in CONV_LAYER_NAMES:
        w = np.asarray(state_dict[f"{name}.weight"], dtype=np.float32)
        if w.ndim != 4:
            raise ConversionError(f"{path}: {name}.weight should be OIHW, got shape {w.shape}")
        layers[name] = (w.transpose(2, 3, 1, 0), np.asarray(state_dict[f"{name}.bias"], np.float32).ravel())
    c5 = layers["conv5_3"][0].shape[3]
    w6 = np.asarray(state_dict["fc6.weight"], dtype=np.float32)
    fc_dim = w6.shape[0]
    if w6.ndim == 2:
        in_features = w6.shape[1]
        side = int(round(np.sqrt(in_features / c5)))
        if side * side * c5 != in_features:
            raise ConversionError(
                f"{path}: fc6.weight has {in_features} inputs, not (side^2 x {c5}) for conv5_3's {c5} channels"
            )
        w6 = w6.reshape(fc_dim, c5, side, side)
    if w6.ndim != 4 or w6.shape[1] != c5 or w6.shape[2] != w6.shape[3]:
        raise ConversionError(f"{path}: fc6.weight of shape {w6.shape} does not follow conv5_3 ({c5} channels)")
    side = w6.shape[2]
    # (D, C, H, W) flattened in PyTorch's (C, H, W) order -> rows in our (H, W, C) order.
    layers["fc6"] = (w6.transpose(2, 3, 1, 0).reshape(side * side * c5, fc_dim),
                     np.asarray(state_dict["fc6.bias"], np.float32).ravel())
    w7 = np.asarray(state_dict["fc7.weight"], dtype=np.float32)
    w7 = w7.reshape(w7.shape[0], -1)
    layers["fc7"] = (w7.T, np.asarray(state_dict["fc7.bias"], np.float32).ravel())
    if channel_order == "bgr":
        kernel, bias = layers["conv1_1"]
        layers["conv1_1"] = (kernel[:, :, ::-1, :], bias)
    known = {f"{n}.{p}" for n in _SOURCE_LAYERS for p in ("weight", "bias")}
    dropped = {k: list(np.shape(v)) for k, v in state_dict.items() if k not in known}
    source = {"source_format": "pth", "source_layout": "pytorch state dict (vgg_face_dag)",
              "source_channel_order": channel_order, "source_mean_rgb": list(VGGFACE_MEAN_RGB),
              "dropped": dropped}
    return layers, source


# ------------------------------------------------------------------------------------------ API
def detect_format(path: str | os.PathLike) -> str:
    """'mat' or 'pth' from the extension, else from the file's first bytes."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".mat":
        return "mat"
    if ext in (".pth", ".pt", ".pkl", ".bin"):
        return "pth"
    with open(path, "rb") as f:
        head = f.read(128)
    if head.startswith(b"MATLAB"):
        return "mat"
    if head.startswith(b"PK") or head[:1] == b"\x80":
        return "pth"
    raise ConversionError(f"cannot tell the format of {path}; pass --format=mat or --format=pth")


def _check_and_describe(layers: dict[str, tuple[np.ndarray, np.ndarray]], path: str) -> dict[str, Any]:
    """Validate the chain of shapes; infer width and input_size."""
    in_ch = 3
    for block, n_conv, _ in _BLOCKS:
        for i in range(1, n_conv + 1):
            name = f"conv{block}_{i}"
            kernel, bias = layers[name]
            if kernel.shape[:3] != (3, 3, in_ch) or bias.shape != (kernel.shape[3],):
                raise ConversionError(
                    f"{path}: {name} kernel {kernel.shape} / bias {bias.shape} do not continue a VGG-16 "
                    f"with {in_ch} input channels and 3x3 filters"
                )
            in_ch = kernel.shape[3]
    fc6, fc6_b = layers["fc6"]
    fc7, fc7_b = layers["fc7"]
    fc_dim = fc6.shape[1]
    if fc6_b.shape != (fc_dim,) or fc7.shape != (fc_dim, fc_dim) or fc7_b.shape != (fc_dim,):
        raise ConversionError(f"{path}: fc6 {fc6.shape} / fc7 {fc7.shape} shapes are inconsistent")
    side = int(round(np.sqrt(fc6.shape[0] / in_ch)))
    if side * side * in_ch != fc6.shape[0]:
        raise ConversionError(f"{path}: fc6 has {fc6.shape[0]} inputs, not side^2 x {in_ch}")
    width = fc_dim / BASE_FC_DIM
    expected = {f"conv{b}_1": scaled_channels(c, width) for b, _, c in _BLOCKS}
    actual = {name: layers[name][0].shape[3] for name in expected}
    if expected != actual or scaled_channels(BASE_FC_DIM, width) != fc_dim:
        raise ConversionError(
            f"{path}: channel counts {actual} with fc width {fc_dim} are not a uniformly scaled VGG-Face "
            f"(width {width:g} would give {expected})"
        )
    return {"width": width, "input_size": 32 * side}


def convert_vggface(
    src_path: str | os.PathLike, fmt: str = "auto", *, channel_order: str | None = None
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """Read a VGG-Face release and return (state, metadata).

    `state` matches `nnx.state(VGGFace(head_sizes=None, width=..., input_size=...), nnx.Param)
    .to_pure_dict()` (float32 numpy arrays, no heads). `channel_order` is the source's input channel
    order: 'rgb' for the MatConvNet files and Albanie's vgg_face_dag.pth (the defaults), 'bgr' for a
    PyTorch state dict exported straight from the Caffe model.
    """
    src = os.fspath(src_path)
    if fmt not in SOURCE_FORMATS:
        raise ConversionError(f"unknown weight format {fmt!r}; valid formats: {', '.join(SOURCE_FORMATS)}")
    if not os.path.isfile(src):
        raise ConversionError(f"source weight file {src} does not exist")
    if channel_order is not None and channel_order not in _CHANNEL_ORDERS:
        raise ConversionError(f"channel_order must be one of {_CHANNEL_ORDERS}, got {channel_order!r}")
    resolved = detect_format(src) if fmt == "auto" else fmt
    if resolved == "mat":
        if channel_order == "bgr":
            raise ConversionError("MatConvNet VGG-Face files are RGB (their importer already flipped "
                                  "Caffe's BGR conv1_1); channel_order='bgr' does not apply")
        layers, source = _convert_mat(src)
    else:
        layers, source = _convert_pth(src, channel_order or "rgb")
    shape_info = _check_and_describe(layers, src)

    state = {name: {"kernel": np.ascontiguousarray(k, dtype=np.float32),
                    "bias": np.ascontiguousarray(b, dtype=np.float32)}
             for name, (k, b) in layers.items()}
    mean = source.get("source_mean_rgb")
    notes = []
    if mean is not None and not np.allclose(mean, VGGFACE_MEAN_RGB, atol=1e-2):
        notes.append(f"the file's mean pixel {mean} differs from VGGFace's built-in {list(VGGFACE_MEAN_RGB)}; "
                     f"preprocess images yourself and build the model with preprocess='none'")
    metadata = {
        "model": "vggface",
        **shape_info,
        "preprocess": "vggface",
        "channel_order": "rgb",
        "mean_rgb": list(VGGFACE_MEAN_RGB),
        "preprocessing": "input float RGB in [0, 1]; the model computes x * 255 - mean_rgb (RGB order)",
        "source_file": os.path.basename(src),
        **source,
        "notes": notes,
        "num_params": count_params(state),
    }
    return state, metadata


def convert_weights_command(
    fmt: str, src: str | os.PathLike, dst: str | os.PathLike, overwrite: bool = False,
    *, channel_order: str | None = None,
) -> dict[str, Any]:
    """Convert `src` and save it as a jaxface weight directory `dst`; returns a printable summary."""
    from jaxface.models.weights import save_weights

    state, metadata = convert_vggface(src, fmt, channel_order=channel_order)
    save_weights(dst, state, metadata, overwrite=overwrite)
    return {
        "source": str(src),
        "destination": str(pathlib.Path(dst).expanduser().resolve()),
        "format": metadata["source_format"],
        "num_params": metadata["num_params"],
        "layers": {name: {k: list(v.shape) for k, v in p.items()} for name, p in state.items()},
        "metadata": metadata,
    }
