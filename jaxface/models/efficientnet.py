"""EfficientNet B0-B7 (Tan & Le 2019) in Flax NNX, NHWC, with torchvision's numerics.

stem 3x3/2 conv-BN-SiLU; seven stages of MBConv blocks (1x1 expand -> kxk depthwise -> squeeze-excite
(SiLU, sigmoid gate; squeeze width = block input width / 4) -> 1x1 project, residual with stochastic
depth when the shape allows); 1x1 conv to 4x the last stage width (1280 for B0); global mean
(`features`) -> dropout -> Linear to `num_outputs`. Padding is symmetric ((k-1)//2) as in torchvision
and timm's `efficientnet_b*` (not the TF-"SAME" `tf_efficientnet_*` ports), so both convert exactly.

Compound scaling: B0..B7 multiply the B0 widths and block counts by the coefficients in
COMPOUND_COEFFICIENTS (channels rounded to multiples of 8, blocks per stage ceil(n * depth)); each level
also has the paper's input resolution and dropout rate, and B5-B7 use batch-norm epsilon 1e-3 (the
epsilon of the checkpoints ported from TF). Our `width`/`depth` options multiply on top of the level's
coefficients, which keeps tests and CPU runs small.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from flax import nnx

from jaxface.models import layers as L


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One stage of the B0 table: expansion ratio, kernel, stride of its first block, out width, blocks."""

    expand_ratio: int
    kernel: int
    stride: int
    out: int
    num_blocks: int


STEM_CHANNELS = 32
B0_STAGES = (
    StageSpec(1, 3, 1, 16, 1),
    StageSpec(6, 3, 2, 24, 2),
    StageSpec(6, 5, 2, 40, 2),
    StageSpec(6, 3, 2, 80, 3),
    StageSpec(6, 5, 1, 112, 3),
    StageSpec(6, 5, 2, 192, 4),
    StageSpec(6, 3, 1, 320, 1),
)


@dataclasses.dataclass(frozen=True)
class Coefficients:
    width: float
    depth: float
    resolution: int
    dropout: float
    bn_eps: float


# Width and depth coefficients and resolution from the paper (as in torchvision and timm).
COMPOUND_COEFFICIENTS = {
    "efficientnet_b0": Coefficients(1.0, 1.0, 224, 0.2, 1e-5),
    "efficientnet_b1": Coefficients(1.0, 1.1, 240, 0.2, 1e-5),
    "efficientnet_b2": Coefficients(1.1, 1.2, 260, 0.3, 1e-5),
    "efficientnet_b3": Coefficients(1.2, 1.4, 300, 0.3, 1e-5),
    "efficientnet_b4": Coefficients(1.4, 1.8, 380, 0.4, 1e-5),
    "efficientnet_b5": Coefficients(1.6, 2.2, 456, 0.4, 1e-3),
    "efficientnet_b6": Coefficients(1.8, 2.6, 528, 0.5, 1e-3),
    "efficientnet_b7": Coefficients(2.0, 3.1, 600, 0.5, 1e-3),
}


def stage_plan(variant: str, *, width: float = 1.0, depth: float = 1.0, stages: Sequence[StageSpec] | None = None):
    """(stem width, stage specs with scaled block counts, stage output widths, head width) of a level.

    Widths are the B0 widths times the level's width coefficient times `width`, rounded to multiples of 8
    (never below 90%); block counts are ceil(n * depth coefficient * depth); the head is 4x the last
    stage's width (1280 for B0), all as in torchvision.
    """
    coeff = COMPOUND_COEFFICIENTS[variant]
    width_mult, depth_mult = coeff.width * width, coeff.depth * depth
    if stages is None:
        stages = tuple(dataclasses.replace(s, num_blocks=L.scale_depth(s.num_blocks, depth_mult)) for s in B0_STAGES)
    stage_channels = tuple(L.make_divisible(s.out * width_mult, 8) for s in stages)
    return L.make_divisible(STEM_CHANNELS * width_mult, 8), tuple(stages), stage_channels, 4 * stage_channels[-1]


class MBConv(nnx.Module):
    def __init__(self, in_channels: int, out_channels: int, expand_ratio: int, kernel: int, stride: int, *,
                 drop_rate: float, bn_eps: float, bn_momentum: float, rngs: nnx.Rngs):
        conv = dict(bn_eps=bn_eps, bn_momentum=bn_momentum, rngs=rngs)
        expanded = L.make_divisible(in_channels * expand_ratio, 8)
        self.expand = L.ConvBN(in_channels, expanded, 1, activation="silu", **conv) if expanded != in_channels else None
        self.depthwise = L.ConvBN(expanded, expanded, kernel, stride=stride, groups=expanded, activation="silu", **conv)
        self.se = L.SqueezeExcite(expanded, max(1, in_channels // 4), activation="silu", gate="sigmoid", rngs=rngs)
        self.project = L.ConvBN(expanded, out_channels, 1, activation="identity", **conv)
        self.use_residual = stride == 1 and in_channels == out_channels
        self.drop_path = L.stochastic_depth(drop_rate, rngs) if self.use_residual else None

    def __call__(self, x, *, train: bool = False):
        y = x if self.expand is None else self.expand(x, train=train)
        y = self.se(self.depthwise(y, train=train))
        y = self.project(y, train=train)
        if not self.use_residual:
            return y
        return x + L.apply_drop(self.drop_path, y, train)


class EfficientNet(L.Detector):
    def __init__(
        self,
        variant: str = "efficientnet_b0",
        *,
        num_outputs: int = 1,
        width: float = 1.0,
        depth: float = 1.0,
        dropout: float | None = None,
        stages: Sequence[StageSpec] | None = None,
        stochastic_depth: float = 0.2,
        input_mean: Sequence[float] | None = L.IMAGENET_MEAN,
        input_std: Sequence[float] | None = L.IMAGENET_STD,
        bn_momentum: float = 0.9,
        rngs: nnx.Rngs,
    ):
        if variant not in COMPOUND_COEFFICIENTS:
            raise L.BackboneConfigError(
                f"unknown EfficientNet variant {variant!r}; valid: {', '.join(COMPOUND_COEFFICIENTS)}"
            )
        self.variant = variant
        self.coefficients = coeff = COMPOUND_COEFFICIENTS[variant]
        self.width = L.check_multiplier("width", width)
        self.depth = L.check_multiplier("depth", depth)
        self.num_outputs = L.check_num_outputs(num_outputs)
        self.dropout_rate = L.check_rate("dropout", coeff.dropout if dropout is None else dropout)
        self.stochastic_depth = L.check_rate("stochastic_depth", stochastic_depth)
        self.input_norm = L.InputNormalization.create(input_mean, input_std)
        if stages is not None:
            stages = tuple(stages)
            if not stages or not all(isinstance(s, StageSpec) for s in stages):
                raise L.BackboneConfigError("stages must be a non-empty sequence of efficientnet.StageSpec")
        stem_channels, self.stage_specs, stage_channels, head_channels = stage_plan(
            variant, width=self.width, depth=self.depth, stages=stages
        )

        conv = dict(bn_eps=coeff.bn_eps, bn_momentum=bn_momentum, rngs=rngs)
        in_channels = stem_channels
        self.stem = L.ConvBN(3, in_channels, 3, stride=2, activation="silu", **conv)
        total = sum(s.num_blocks for s in self.stage_specs)
        block_id = 0
        stage_modules = []
        for spec, out_channels in zip(self.stage_specs, stage_channels):
            blocks = []
            for index in range(spec.num_blocks):
                blocks.append(MBConv(
                    in_channels, out_channels, spec.expand_ratio, spec.kernel, spec.stride if index == 0 else 1,
                    drop_rate=self.stochastic_depth * block_id / total, bn_eps=coeff.bn_eps,
                    bn_momentum=bn_momentum, rngs=rngs,
                ))
                in_channels = out_channels
                block_id += 1
            stage_modules.append(nnx.List(blocks))
        self.stages = nnx.List(stage_modules)
        self.feature_dim = head_channels
        self.head_conv = L.ConvBN(in_channels, self.feature_dim, 1, activation="silu", **conv)
        # torchvision: U(-1/sqrt(out), 1/sqrt(out)) for the classifier.
        self.head_dropout, self.head = L.make_head(self.feature_dim, self.num_outputs, self.dropout_rate,
                                                   L.uniform_init(self.num_outputs ** -0.5), rngs)

    def features(self, x, *, train: bool = False):
        x = self.stem(self._normalize_input(x), train=train)
        for stage in self.stages:
            for block in stage:
                x = block(x, train=train)
        return L.global_avg_pool(self.head_conv(x, train=train))


def efficientnet(level: int, **kwargs) -> EfficientNet:
    return EfficientNet(f"efficientnet_b{level}", **kwargs)
