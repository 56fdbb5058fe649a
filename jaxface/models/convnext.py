"""ConvNeXt (Liu et al. 2022) in Flax NNX, NHWC, with the torchvision/timm numerics.

stem: 4x4/4 conv + LayerNorm; four stages of blocks (7x7 depthwise conv -> LayerNorm -> Linear x4 ->
exact GELU -> Linear -> layer scale -> stochastic depth -> residual), stages 2-4 preceded by
LayerNorm + 2x2/2 conv; head: global mean -> LayerNorm (returned by `features`) -> dropout -> Linear.
LayerNorm epsilon 1e-6 everywhere, as in both references, so torchvision and timm ImageNet checkpoints
convert exactly (convert_torch.py).

Size knobs: `width` scales the stage widths 96/192/384/768, `depth` the blocks per stage 3/3/9/3
(ceil(n * depth)); `dims`/`depths` give them explicitly. `stochastic_depth` is the drop rate of the
last block (linearly increasing from 0 at the first, as in the references; 0.1 for Tiny).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from flax import nnx

from jaxface.models import layers as L

LN_EPS = 1e-6
VARIANTS = {
    # name: (depths, dims, default stochastic depth)
    "convnext_tiny": ((3, 3, 9, 3), (96, 192, 384, 768), 0.1),
    "convnext_small": ((3, 3, 27, 3), (96, 192, 384, 768), 0.4),
}


class ConvNeXtBlock(nnx.Module):
    def __init__(self, dim: int, *, layer_scale: float, drop_rate: float, rngs: nnx.Rngs):
        init = L.trunc_normal(0.02)
        self.dwconv = L.conv2d(dim, dim, 7, groups=dim, use_bias=True, kernel_init=init, rngs=rngs)
        self.norm = L.layer_norm(dim, eps=LN_EPS, rngs=rngs)
        self.fc1 = L.linear(dim, 4 * dim, kernel_init=init, rngs=rngs)
        self.fc2 = L.linear(4 * dim, dim, kernel_init=init, rngs=rngs)
        self.layer_scale = nnx.Param(L.host_array(np.full((dim,), layer_scale)))
        self.drop_path = L.stochastic_depth(drop_rate, rngs)

    def __call__(self, x, *, train: bool = False):
        y = self.fc2(L.gelu_exact(self.fc1(self.norm(self.dwconv(x)))))
        y = L.apply_drop(self.drop_path, y * self.layer_scale[...], train)
        return x + y


class Downsample(nnx.Module):
    def __init__(self, in_dim: int, out_dim: int, *, rngs: nnx.Rngs):
        self.norm = L.layer_norm(in_dim, eps=LN_EPS, rngs=rngs)
        self.conv = L.conv2d(in_dim, out_dim, 2, stride=2, padding="VALID", use_bias=True,
                             kernel_init=L.trunc_normal(0.02), rngs=rngs)

    def __call__(self, x):
        return self.conv(self.norm(x))


class ConvNeXtStage(nnx.Module):
    def __init__(self, in_dim: int | None, dim: int, drop_rates: Sequence[float], *,
                 layer_scale: float, rngs: nnx.Rngs):
        self.downsample = Downsample(in_dim, dim, rngs=rngs) if in_dim is not None else None
        self.blocks = nnx.List([
            ConvNeXtBlock(dim, layer_scale=layer_scale, drop_rate=rate, rngs=rngs) for rate in drop_rates
        ])

    def __call__(self, x, *, train: bool = False):
        if self.downsample is not None:
            x = self.downsample(x)
        for block in self.blocks:
            x = block(x, train=train)
        return x


class ConvNeXt(L.Detector):
    def __init__(
        self,
        variant: str = "convnext_tiny",
        *,
        num_outputs: int = 1,
        width: float = 1.0,
        depth: float = 1.0,
        dropout: float = 0.2,
        dims: Sequence[int] | None = None,
        depths: Sequence[int] | None = None,
        stochastic_depth: float | None = None,
        layer_scale: float = 1e-6,
        input_mean: Sequence[float] | None = L.IMAGENET_MEAN,
        input_std: Sequence[float] | None = L.IMAGENET_STD,
        rngs: nnx.Rngs,
    ):
        if variant not in VARIANTS:
            raise L.BackboneConfigError(f"unknown ConvNeXt variant {variant!r}; valid: {', '.join(VARIANTS)}")
        base_depths, base_dims, default_sd = VARIANTS[variant]
        self.variant = variant
        self.width = L.check_multiplier("width", width)
        self.depth = L.check_multiplier("depth", depth)
        self.num_outputs = L.check_num_outputs(num_outputs)
        self.dropout_rate = L.check_rate("dropout", dropout)
        self.stochastic_depth = L.check_rate("stochastic_depth", default_sd if stochastic_depth is None
                                             else stochastic_depth)
        self.input_norm = L.InputNormalization.create(input_mean, input_std)
        dims = tuple(max(1, int(round(d * self.width))) for d in base_dims) if dims is None else tuple(dims)
        depths = tuple(L.scale_depth(n, self.depth) for n in base_depths) if depths is None else tuple(depths)
        if len(dims) != len(depths) or not dims or not all(isinstance(v, int) and v >= 1 for v in dims + depths):
            raise L.BackboneConfigError(
                f"dims and depths must be equally long sequences of positive ints, got {dims!r} and {depths!r}"
            )
        self.dims, self.depths = dims, depths
        total = sum(depths)
        rates = [self.stochastic_depth * i / max(1, total - 1) for i in range(total)]

        self.stem_conv = L.conv2d(3, dims[0], 4, stride=4, padding="VALID", use_bias=True,
                                  kernel_init=L.trunc_normal(0.02), rngs=rngs)
        self.stem_norm = L.layer_norm(dims[0], eps=LN_EPS, rngs=rngs)
        stages, start = [], 0
        for index, (dim, num_blocks) in enumerate(zip(dims, depths)):
            stages.append(ConvNeXtStage(
                dims[index - 1] if index > 0 else None, dim, rates[start:start + num_blocks],
                layer_scale=layer_scale, rngs=rngs,
            ))
            start += num_blocks
        self.stages = nnx.List(stages)
        self.feature_dim = dims[-1]
        self.head_norm = L.layer_norm(self.feature_dim, eps=LN_EPS, rngs=rngs)
        self.head_dropout, self.head = L.make_head(self.feature_dim, self.num_outputs, self.dropout_rate,
                                                   L.trunc_normal(0.02), rngs)

    def features(self, x, *, train: bool = False):
        x = self.stem_norm(self.stem_conv(self._normalize_input(x)))
        for stage in self.stages:
            x = stage(x, train=train)
        return self.head_norm(L.global_avg_pool(x))


def convnext_tiny(**kwargs) -> ConvNeXt:
    return ConvNeXt("convnext_tiny", **kwargs)
