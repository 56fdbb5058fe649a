"""VGG-Face (Parkhi et al., 2015) in Flax NNX, with named activation taps and grouped attribute heads.

Topology (the original VGG-16 face network): conv1_1 conv1_2 pool1 | conv2_1 conv2_2 pool2 |
conv3_1..3 pool3 | conv4_1..3 pool4 | conv5_1..3 pool5 | fc6 fc7 (dropout after each) | heads (fc8).
3x3 convolutions with padding 1 and ReLU, 2x2 max pools with stride 2, NHWC throughout.

Size knobs, so that CPU configs stay small:
  * `width` scales every channel count (64/128/256/512 -> round(c * width), at least 1) and the fc width
    (4096 -> round(4096 * width), at least 1). width=1 is the published network.
  * `input_size` (at least 32; pools floor odd sizes, as the original's do, so 112 gives a 3x3
    pool5) fixes the spatial size, so fc6 reads a flattened
    (input_size // 32)^2 * C5 vector. fc6's kernel rows are in our NHWC flatten order (row, column,
    channel); the converter (`convert_vggface.py`) reorders the original's (C, H, W) / MatConvNet rows.

Training from scratch (both off for the published weights, which the converter loads unchanged):
  * `norm='batch'` or `'group'` normalises every convolution's output before its ReLU (`norm{B}_{i}`,
    which belongs to layer conv{B}_{i} for freezing and learning-rate multipliers); the convolutions
    then have no bias of their own (the normalisation's offset takes its place).
  * `fc6_input='average'` feeds fc6 the global average of pool5 instead of the flattened map.

Preprocessing (`preprocess='vggface'`, the default): inputs are the library's float [0, 1] RGB images;
the model computes x * 255 - mean_rgb with the original training mean pixel (R, G, B) =
(129.1863, 104.7624, 93.5940). Kernels are always in RGB input-channel order: the MatConvNet release
and Albanie's `vgg_face_dag.pth` are already RGB; only a direct Caffe export is BGR, and the converter
flips its first-layer kernel. `preprocess='centered'` maps [0, 1] to [-1, 1] (for training from
scratch, where zero-centred inputs train fastest); `preprocess='none'` feeds the input to conv1_1 unchanged.

Taps (`activations`): every name in LAYER_NAMES. Convolution and fc taps are the post-ReLU outputs
(before dropout for fc6/fc7); pool taps are the pooled maps; 'heads' is the list of head logits.
Only the layers up to the deepest requested one are computed, so an inversion objective on conv5_3
never touches fc6.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxface.models import layers as layers_lib
from jaxface.models.heads import GroupedHeads

# The VGG-Face training mean pixel in RGB order (the MatConvNet release's averageImage and the value
# stored in vgg_face_dag.pth's meta; a Caffe deploy lists the same numbers in BGR order).
VGGFACE_MEAN_RGB = (129.186279296875, 104.76238250732422, 93.59396362304688)

# (block, number of convolutions, base channels)
_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))
BASE_FC_DIM = 4096
PREPROCESS_MODES = ("vggface", "centered", "none")
# Normalisation after every convolution (before its ReLU). "none" is the published network; "batch" and
# "group" are for training from scratch, where they are what lets a narrow VGG learn fast.
NORMS = ("none", "batch", "group")
# What fc6 reads: the flattened pool5 map (the published network) or its global average, which keeps
# fc6 small and position-invariant when pool5 is only 2x2 (64 px inputs).
FC6_INPUTS = ("flatten", "average")
BN_MOMENTUM = 0.9  # flax convention: the running average keeps 90% of its value per step
NORM_EPS = 1e-5
GROUPS = 8  # group-norm groups (fewer when a layer has fewer channels)


def _layer_names() -> tuple[str, ...]:
    names = []
    for block, n_conv, _ in _BLOCKS:
        names += [f"conv{block}_{i}" for i in range(1, n_conv + 1)]
        names.append(f"pool{block}")
    return tuple(names) + ("fc6", "fc7", "heads")


LAYER_NAMES: tuple[str, ...] = _layer_names()
CONV_LAYER_NAMES: tuple[str, ...] = tuple(n for n in LAYER_NAMES if n.startswith("conv"))
# State attributes that are not layers in LAYER_NAMES but belong to one (the dropout RNG streams and the
# normalisation after each convolution, norm{B}_{i} -> conv{B}_{i}).
_ATTRIBUTE_TO_LAYER = {"dropout6": "fc6", "dropout7": "fc7"}
_ATTRIBUTE_TO_LAYER.update({"norm" + n[4:]: n for n in CONV_LAYER_NAMES})


class UnknownLayerError(ValueError):
    """A layer name that is not one of VGGFace's LAYER_NAMES."""


class InputShapeError(ValueError):
    """An input whose shape does not match the model's input_size."""


def layer_index(name: str) -> int:
    """Position of `name` in LAYER_NAMES (input side first); raises UnknownLayerError."""
    try:
        return LAYER_NAMES.index(name)
    except ValueError:
        raise UnknownLayerError(
            f"unknown VGGFace layer {name!r}; valid layers are: {', '.join(LAYER_NAMES)}"
        ) from None


def param_layer_name(path: Sequence[Any] | str) -> str:
    """Layer name ('conv1_1' ... 'fc7', 'heads') that an nnx state path belongs to.

    `path` is a state path tuple such as ('conv1_1', 'kernel') or ('heads', 'heads', 0, 'bias'), or the
    same joined with '/' or '.'.
    """
    if isinstance(path, str):
        first = path.replace(".", "/").split("/")[0]
    else:
        if len(path) == 0:
            raise UnknownLayerError("empty parameter path")
        first = path[0]
        first = getattr(first, "key", first)  # jax tree-path entries (DictKey/GetAttrKey)
        first = getattr(first, "name", first)
        first = str(first)
    first = _ATTRIBUTE_TO_LAYER.get(first, first)
    if first not in LAYER_NAMES:
        raise UnknownLayerError(
            f"parameter path {path!r} does not belong to a VGGFace layer; valid layers are: "
            f"{', '.join(LAYER_NAMES)}"
        )
    return first


def scaled_channels(base: int, width: float) -> int:
    return max(1, int(round(base * width)))


def _he_normal():
    # He initialisation keeps the activation scale through 15 ReLU layers without normalisation.
    return nnx.initializers.variance_scaling(2.0, "fan_in", "normal")


class VGGFace(nnx.Module):
    """VGG-16 face network with optional grouped softmax heads on fc7."""

    layer_names = LAYER_NAMES

    def __init__(
        self,
        *,
        head_sizes: Sequence[int] | None,
        width: float = 1.0,
        input_size: int = 224,
        dropout: float = 0.5,
        preprocess: str = "vggface",
        norm: str = "none",
        fc6_input: str = "flatten",
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if not (isinstance(width, (int, float)) and width > 0):
            raise ValueError(f"width must be a positive number (1.0 is the published VGG-Face), got {width!r}")
        if isinstance(input_size, bool) or not isinstance(input_size, (int, np.integer)) or input_size < 32:
            raise ValueError(
                f"input_size must be an integer of at least 32 (5 stride-2 pools), e.g. 32, 64, 112, 224; "
                f"got {input_size!r}"
            )
        if preprocess not in PREPROCESS_MODES:
            raise ValueError(f"preprocess must be one of {PREPROCESS_MODES}, got {preprocess!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS} ('none' is the published VGG-Face), got {norm!r}")
        if fc6_input not in FC6_INPUTS:
            raise ValueError(
                f"fc6_input must be one of {FC6_INPUTS} ('flatten' is the published VGG-Face), got {fc6_input!r}"
            )

        self.width = float(width)
        self.input_size = int(input_size)
        self.preprocess = preprocess
        self.norm = norm
        self.fc6_input = fc6_input
        self.dropout_rate = float(dropout)
        self.dtype = dtype
        self.head_sizes = None if head_sizes is None else tuple(int(n) for n in head_sizes)
        self.channels = {block: scaled_channels(c, width) for block, _, c in _BLOCKS}
        self.fc_dim = scaled_channels(BASE_FC_DIM, width)
        self.final_spatial = self.input_size // 32

        in_ch = 3
        for block, n_conv, _ in _BLOCKS:
            out_ch = self.channels[block]
            for i in range(1, n_conv + 1):
                conv = layers_lib.Conv(
                    in_ch,
                    out_ch,
                    kernel_size=(3, 3),
                    padding=((1, 1), (1, 1)),
                    kernel_init=_he_normal(),
                    # A bias before a normalisation is cancelled by it: its gradient is rounding noise,
                    # which Adam would turn into full-size steps.
                    use_bias=norm == "none",
                    dtype=dtype,
                    param_dtype=param_dtype,
                    rngs=rngs,
                )
                setattr(self, f"conv{block}_{i}", conv)
                setattr(self, f"norm{block}_{i}", _norm_layer(norm, out_ch, dtype, param_dtype, rngs))
                in_ch = out_ch
        fc6_in = in_ch if fc6_input == "average" else self.final_spatial**2 * in_ch
        self.fc6 = nnx.Linear(
            fc6_in,
            self.fc_dim,
            kernel_init=_he_normal(),
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.dropout6 = nnx.Dropout(self.dropout_rate, rngs=rngs)
        self.fc7 = nnx.Linear(
            self.fc_dim,
            self.fc_dim,
            kernel_init=_he_normal(),
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.dropout7 = nnx.Dropout(self.dropout_rate, rngs=rngs)
        if self.head_sizes is None:
            self.heads = None
        else:
            self.heads = GroupedHeads(
                self.fc_dim, self.head_sizes, dtype=dtype, param_dtype=param_dtype, rngs=rngs
            )

    # ------------------------------------------------------------------ naming helpers
    @staticmethod
    def layer_index(name: str) -> int:
        return layer_index(name)

    @staticmethod
    def param_layer_name(path) -> str:
        return param_layer_name(path)

    def layer_output_shape(self, name: str) -> Any:
        """Per-example output shape of a tap: (H, W, C) for conv/pool, (D,) for fc, head sizes for 'heads'."""
        layer_index(name)
        if name == "heads":
            if self.head_sizes is None:
                raise UnknownLayerError("this VGGFace has no heads (head_sizes=None)")
            return tuple((n,) for n in self.head_sizes)
        if name in ("fc6", "fc7"):
            return (self.fc_dim,)
        block = int(name[4])  # "convB_i" / "poolB"
        side = self.input_size // 2 ** (block - 1)
        if name.startswith("pool"):
            side //= 2
        return (side, side, self.channels[block])

    # ------------------------------------------------------------------ forward
    def _check_input(self, x: jax.Array) -> None:
        expected = (self.input_size, self.input_size, 3)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise InputShapeError(
                f"VGGFace(input_size={self.input_size}) expects NHWC images of shape "
                f"(batch, {self.input_size}, {self.input_size}, 3); got {tuple(x.shape)}. "
                f"Resize the images or build the model with the matching input_size."
            )

    def _preprocess(self, x: jax.Array) -> jax.Array:
        if self.preprocess == "vggface":
            # In float32 even for a bfloat16 model: x * 255 - mean needs more than 8 mantissa bits.
            x = x.astype(jnp.float32) * 255.0 - jnp.asarray(VGGFACE_MEAN_RGB, dtype=jnp.float32)
        elif self.preprocess == "centered":
            x = x.astype(jnp.float32) * 2.0 - 1.0  # [-1, 1]: zero-centred inputs for training from scratch
        return x.astype(self.dtype)

    def activations(
        self, x: jax.Array, layers: Sequence[str], *, train: bool = False
    ) -> dict[str, Any]:
        """Named activations in one pass, computing only up to the deepest requested layer."""
        if isinstance(layers, str):
            layers = (layers,)
        wanted = set(layers)
        if not wanted:
            raise ValueError(f"ask for at least one layer out of: {', '.join(LAYER_NAMES)}")
        deepest = max(layer_index(name) for name in wanted)
        if "heads" in wanted and self.heads is None:
            raise UnknownLayerError("layer 'heads' was requested but this VGGFace has head_sizes=None")
        self._check_input(x)

        out: dict[str, Any] = {}
        h = self._preprocess(x)
        deterministic = not train
        for name in LAYER_NAMES[: deepest + 1]:
            if name.startswith("conv"):
                norm = getattr(self, "norm" + name[4:])
                if norm is None:
                    h = getattr(self, name).relu_of(h)
                elif isinstance(norm, nnx.BatchNorm):
                    h = layers_lib.batch_norm_relu(norm, getattr(self, name)(h), train=train)
                else:
                    h = jax.nn.relu(norm(getattr(self, name)(h)))
            elif name.startswith("pool"):
                h = layers_lib.max_pool_2x2(h)
            elif name == "fc6":
                if self.fc6_input == "average":
                    h = jnp.mean(h, axis=(1, 2))
                else:  # flatten in NHWC order (row, column, channel); see the module docstring
                    h = h.reshape(h.shape[0], -1)
                h = jax.nn.relu(self.fc6(h))
            elif name == "fc7":
                h = jax.nn.relu(self.fc7(self.dropout6(h, deterministic=deterministic)))
            elif name == "heads":
                h = self.heads(self.dropout7(h, deterministic=deterministic))
            if name in wanted:
                out[name] = h
        return out

    def __call__(self, x: jax.Array, *, train: bool = False):
        """Head logits (list of (B, n_h)), or the fc7 features (B, fc_dim) when head_sizes is None."""
        if self.heads is None:
            return self.activations(x, ("fc7",), train=train)["fc7"]
        return self.activations(x, ("heads",), train=train)["heads"]


def _norm_layer(norm: str, channels: int, dtype, param_dtype, rngs: nnx.Rngs):
    if norm == "batch":
        return nnx.BatchNorm(channels, momentum=BN_MOMENTUM, epsilon=NORM_EPS, dtype=dtype,
                             param_dtype=param_dtype, rngs=rngs)
    if norm == "group":
        groups = max(g for g in range(1, min(GROUPS, channels) + 1) if channels % g == 0)
        return nnx.GroupNorm(channels, num_groups=groups, epsilon=NORM_EPS, dtype=dtype,
                             param_dtype=param_dtype, rngs=rngs)
    return None


def count_params(state) -> int:
    return int(sum(np.prod(np.shape(leaf)) for leaf in jax.tree_util.tree_leaves(state)))
