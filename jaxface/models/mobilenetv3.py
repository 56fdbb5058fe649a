"""MobileNetV3 small and large (Howard et al. 2019) as deepfake detectors, in Flax NNX (NHWC).

Same block tables, channel rounding, SE placement, activations and batch-norm epsilon as torchvision's
`mobilenet_v3_small/large`, so its ImageNet checkpoints convert exactly (convert_torch.py). The
classifier follows torchvision too: global mean -> Linear(C, 1024|1280) -> hard-swish (the "pre-logits",
returned by `features`) -> dropout -> a fresh Linear to `num_outputs` (1 = one real/fake logit).

Size knobs: `width` scales every channel count through the /8 rounding of torchvision's `width_mult`
(so width=0.25 builds exactly torchvision's `mobilenet_v3_small(width_mult=0.25)`); `depth` keeps
ceil(n * depth) blocks of every run of blocks with the same output width (the first block of a run,
which carries the stride and the width change, always stays); `block_specs` replaces the table.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from flax import nnx

from jaxface.models import layers as L

BN_EPS = 1e-3  # torchvision: BatchNorm2d(eps=0.001, momentum=0.01)


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One inverted-residual block of the MobileNetV3 tables (channels before width scaling)."""

    kernel: int
    expanded: int
    out: int
    se: bool
    activation: str  # 'relu' or 'hard_swish'
    stride: int


def _table(rows) -> tuple[BlockSpec, ...]:
    act = {"RE": "relu", "HS": "hard_swish"}
    return tuple(BlockSpec(k, e, o, se, act[a], s) for k, e, o, se, a, s in rows)


# (kernel, expanded, out, SE, activation, stride): Tables 1 and 2 of the paper, as in torchvision.
LARGE_BLOCKS = _table([
    (3, 16, 16, False, "RE", 1),
    (3, 64, 24, False, "RE", 2), (3, 72, 24, False, "RE", 1),
    (5, 72, 40, True, "RE", 2), (5, 120, 40, True, "RE", 1), (5, 120, 40, True, "RE", 1),
    (3, 240, 80, False, "HS", 2), (3, 200, 80, False, "HS", 1), (3, 184, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 480, 112, True, "HS", 1), (3, 672, 112, True, "HS", 1),
    (5, 672, 160, True, "HS", 2), (5, 960, 160, True, "HS", 1), (5, 960, 160, True, "HS", 1),
])
SMALL_BLOCKS = _table([
    (3, 16, 16, True, "RE", 2),
    (3, 72, 24, False, "RE", 2), (3, 88, 24, False, "RE", 1),
    (5, 96, 40, True, "HS", 2), (5, 240, 40, True, "HS", 1), (5, 240, 40, True, "HS", 1),
    (5, 120, 48, True, "HS", 1), (5, 144, 48, True, "HS", 1),
    (5, 288, 96, True, "HS", 2), (5, 576, 96, True, "HS", 1), (5, 576, 96, True, "HS", 1),
])
VARIANTS = {
    # variant: (block table, stem channels, pre-logits width)
    "small": (SMALL_BLOCKS, 16, 1024),
    "large": (LARGE_BLOCKS, 16, 1280),
}


def scale_blocks(blocks: Sequence[BlockSpec], depth: float) -> tuple[BlockSpec, ...]:
    """Keep ceil(n * depth) blocks of each run of consecutive blocks with the same output width."""
    runs: list[list[BlockSpec]] = []
    for spec in blocks:
        if runs and runs[-1][-1].out == spec.out and spec.stride == 1:
            runs[-1].append(spec)
        else:
            runs.append([spec])
    return tuple(spec for run in runs for spec in run[: L.scale_depth(len(run), depth)])


class InvertedResidual(nnx.Module):
    """expand 1x1 (omitted when it would not change the width) -> depthwise kxk -> SE -> project 1x1."""

    def __init__(self, in_channels: int, expanded: int, out_channels: int, spec: BlockSpec, *,
                 bn_momentum: float, rngs: nnx.Rngs):
        conv = dict(bn_eps=BN_EPS, bn_momentum=bn_momentum, rngs=rngs)
        self.expand = (
            L.ConvBN(in_channels, expanded, 1, activation=spec.activation, **conv)
            if expanded != in_channels else None
        )
        self.depthwise = L.ConvBN(
            expanded, expanded, spec.kernel, stride=spec.stride, groups=expanded, activation=spec.activation, **conv
        )
        self.se = (
            L.SqueezeExcite(expanded, L.make_divisible(expanded // 4, 8), activation="relu", gate="hard_sigmoid",
                            rngs=rngs)
            if spec.se else None
        )
        self.project = L.ConvBN(expanded, out_channels, 1, activation="identity", **conv)
        self.use_residual = spec.stride == 1 and in_channels == out_channels

    def __call__(self, x, *, train: bool = False):
        y = x if self.expand is None else self.expand(x, train=train)
        y = self.depthwise(y, train=train)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y, train=train)
        return x + y if self.use_residual else y


class MobileNetV3(L.Detector):
    """MobileNetV3 detector; `variant` is 'small' or 'large'."""

    def __init__(
        self,
        variant: str = "small",
        *,
        num_outputs: int = 1,
        width: float = 1.0,
        depth: float = 1.0,
        dropout: float = 0.2,
        block_specs: Sequence[BlockSpec] | None = None,
        input_mean: Sequence[float] | None = L.IMAGENET_MEAN,
        input_std: Sequence[float] | None = L.IMAGENET_STD,
        bn_momentum: float = 0.9,
        rngs: nnx.Rngs,
    ):
        if variant not in VARIANTS:
            raise L.BackboneConfigError(f"unknown MobileNetV3 variant {variant!r}; valid: {', '.join(VARIANTS)}")
        self.variant = variant
        self.width = L.check_multiplier("width", width)
        self.depth = L.check_multiplier("depth", depth)
        self.num_outputs = L.check_num_outputs(num_outputs)
        self.dropout_rate = L.check_rate("dropout", dropout)
        self.input_norm = L.InputNormalization.create(input_mean, input_std)
        table, stem_base, pre_logits_base = VARIANTS[variant]
        if block_specs is not None:
            block_specs = tuple(block_specs)
            if not block_specs or not all(isinstance(b, BlockSpec) for b in block_specs):
                raise L.BackboneConfigError("block_specs must be a non-empty sequence of mobilenetv3.BlockSpec")
        self.block_specs = block_specs if block_specs is not None else scale_blocks(table, self.depth)

        def channels(c):
            return L.make_divisible(c * self.width, 8)

        conv = dict(bn_eps=BN_EPS, bn_momentum=bn_momentum, rngs=rngs)
        in_channels = channels(stem_base)
        self.stem = L.ConvBN(3, in_channels, 3, stride=2, activation="hard_swish", **conv)
        blocks = []
        for spec in self.block_specs:
            out_channels = channels(spec.out)
            blocks.append(InvertedResidual(in_channels, channels(spec.expanded), out_channels, spec,
                                           bn_momentum=bn_momentum, rngs=rngs))
            in_channels = out_channels
        self.blocks = nnx.List(blocks)
        last_channels = 6 * in_channels
        self.last_conv = L.ConvBN(in_channels, last_channels, 1, activation="hard_swish", **conv)
        self.feature_dim = channels(pre_logits_base)
        linear_init = L.normal_init(0.01)  # torchvision: nn.init.normal_(w, 0, 0.01), zero bias
        self.pre_logits = L.linear(last_channels, self.feature_dim, kernel_init=linear_init, rngs=rngs)
        self.head_dropout, self.head = L.make_head(self.feature_dim, self.num_outputs, self.dropout_rate,
                                                   linear_init, rngs)

    def features(self, x, *, train: bool = False):
        x = self.stem(self._normalize_input(x), train=train)
        for block in self.blocks:
            x = block(x, train=train)
        x = self.last_conv(x, train=train)
        return L.hard_swish(self.pre_logits(L.global_avg_pool(x)))


def mobilenetv3_small(**kwargs) -> MobileNetV3:
    return MobileNetV3("small", **kwargs)


def mobilenetv3_large(**kwargs) -> MobileNetV3:
    return MobileNetV3("large", **kwargs)
