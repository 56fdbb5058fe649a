"""ResNet (He et al. 2016; the torchvision "v1.5" variant with the stride on the 3x3 conv) in Flax NNX.

Same structure, padding and batch-norm epsilon (1e-5) as torchvision's resnet18/34/50/101, so their
ImageNet checkpoints convert exactly (convert_torch.py; timm's ResNets use the same key names).
`features` returns the globally averaged last stage (512 or 2048 channels at width 1); the head is
dropout + a fresh Linear to `num_outputs`.

Size knobs: `width` scales the stage widths 64/128/256/512 (at least 1 channel), `depth` scales the
blocks per stage by ceil(n * depth), `layers` gives the blocks per stage explicitly.
"""
from __future__ import annotations

from typing import Sequence

from flax import nnx

from jaxface.models import layers as L

BN_EPS = 1e-5
STAGE_WIDTHS = (64, 128, 256, 512)
VARIANTS = {
    # name: (block kind, blocks per stage)
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
}
EXPANSION = {"basic": 1, "bottleneck": 4}


class BasicBlock(nnx.Module):
    """3x3 -> 3x3 with an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_channels: int, width: int, stride: int, *, bn_momentum: float, rngs: nnx.Rngs):
        conv = dict(bn_eps=BN_EPS, bn_momentum=bn_momentum, rngs=rngs)
        out_channels = width
        self.conv1 = L.ConvBN(in_channels, width, 3, stride=stride, activation="relu", **conv)
        self.conv2 = L.ConvBN(width, out_channels, 3, activation="identity", **conv)
        self.downsample = (
            L.ConvBN(in_channels, out_channels, 1, stride=stride, activation="identity", **conv)
            if stride != 1 or in_channels != out_channels else None
        )

    def __call__(self, x, *, train: bool = False):
        y = self.conv2(self.conv1(x, train=train), train=train)
        shortcut = x if self.downsample is None else self.downsample(x, train=train)
        return nnx.relu(y + shortcut)


class Bottleneck(nnx.Module):
    """1x1 reduce -> 3x3 (strided) -> 1x1 expand (x4), with an identity or projection shortcut."""

    def __init__(self, in_channels: int, width: int, stride: int, *, bn_momentum: float, rngs: nnx.Rngs):
        conv = dict(bn_eps=BN_EPS, bn_momentum=bn_momentum, rngs=rngs)
        out_channels = width * EXPANSION["bottleneck"]
        self.conv1 = L.ConvBN(in_channels, width, 1, activation="relu", **conv)
        self.conv2 = L.ConvBN(width, width, 3, stride=stride, activation="relu", **conv)
        self.conv3 = L.ConvBN(width, out_channels, 1, activation="identity", **conv)
        self.downsample = (
            L.ConvBN(in_channels, out_channels, 1, stride=stride, activation="identity", **conv)
            if stride != 1 or in_channels != out_channels else None
        )

    def __call__(self, x, *, train: bool = False):
        y = self.conv3(self.conv2(self.conv1(x, train=train), train=train), train=train)
        shortcut = x if self.downsample is None else self.downsample(x, train=train)
        return nnx.relu(y + shortcut)


class ResNet(L.Detector):
    """ResNet detector; `variant` is one of VARIANTS."""

    def __init__(
        self,
        variant: str = "resnet50",
        *,
        num_outputs: int = 1,
        width: float = 1.0,
        depth: float = 1.0,
        dropout: float = 0.2,
        layers: Sequence[int] | None = None,
        input_mean: Sequence[float] | None = L.IMAGENET_MEAN,
        input_std: Sequence[float] | None = L.IMAGENET_STD,
        bn_momentum: float = 0.9,
        rngs: nnx.Rngs,
    ):
        if variant not in VARIANTS:
            raise L.BackboneConfigError(f"unknown ResNet variant {variant!r}; valid: {', '.join(VARIANTS)}")
        self.variant = variant
        self.width = L.check_multiplier("width", width)
        self.depth = L.check_multiplier("depth", depth)
        self.num_outputs = L.check_num_outputs(num_outputs)
        self.dropout_rate = L.check_rate("dropout", dropout)
        self.input_norm = L.InputNormalization.create(input_mean, input_std)
        self.block_kind, base_layers = VARIANTS[variant]
        if layers is None:
            layers = tuple(L.scale_depth(n, self.depth) for n in base_layers)
        else:
            layers = tuple(layers)
            if len(layers) != 4 or not all(isinstance(n, int) and n >= 1 for n in layers):
                raise L.BackboneConfigError(f"layers must be 4 positive block counts, e.g. (2, 2, 2, 2); got {layers!r}")
        self.layers = layers
        block_cls = Bottleneck if self.block_kind == "bottleneck" else BasicBlock
        widths = [max(1, int(round(w * self.width))) for w in STAGE_WIDTHS]
        conv = dict(bn_eps=BN_EPS, bn_momentum=bn_momentum, rngs=rngs)

        in_channels = widths[0]
        self.stem = L.ConvBN(3, in_channels, 7, stride=2, activation="relu", **conv)
        stages = []
        for index, (stage_width, num_blocks) in enumerate(zip(widths, layers)):
            blocks = []
            for block_index in range(num_blocks):
                stride = 2 if index > 0 and block_index == 0 else 1
                blocks.append(block_cls(in_channels, stage_width, stride, bn_momentum=bn_momentum, rngs=rngs))
                in_channels = stage_width * EXPANSION[self.block_kind]
            stages.append(nnx.List(blocks))
        self.stages = nnx.List(stages)
        self.feature_dim = in_channels
        self.head_dropout, self.head = L.make_head(
            self.feature_dim, self.num_outputs, self.dropout_rate, L.torch_linear_uniform(self.feature_dim), rngs
        )

    def features(self, x, *, train: bool = False):
        x = self.stem(self._normalize_input(x), train=train)
        x = L.max_pool(x, 3, 2, padding=1)
        for stage in self.stages:
            for block in stage:
                x = block(x, train=train)
        return L.global_avg_pool(x)


def resnet18(**kwargs) -> ResNet:
    return ResNet("resnet18", **kwargs)


def resnet34(**kwargs) -> ResNet:
    return ResNet("resnet34", **kwargs)


def resnet50(**kwargs) -> ResNet:
    return ResNet("resnet50", **kwargs)


def resnet101(**kwargs) -> ResNet:
    return ResNet("resnet101", **kwargs)
