"""VGG-11/13/16/19 (Simonyan & Zisserman 2015), optionally with batch norm, in Flax NNX (NHWC).

Matches torchvision's `vgg16` / `vgg16_bn`: 3x3 convs with bias (then BN when `batch_norm`) and ReLU,
2x2/2 max pools, adaptive average pooling to 7x7 (so any input size >= 32 works and the ImageNet fc6
weights apply), fc6 -> ReLU -> dropout -> fc7 -> ReLU (returned by `features`) -> dropout -> Linear to
`num_outputs`. fc6 reads the pooled map flattened in NHWC order (row, column, channel); the converter
reorders torchvision's (channel, row, column) rows.

`classifier='gap'` replaces pool-to-7x7 + fc6 + fc7 with a global mean of the last conv map (512 at
width 1): a 15M-parameter network instead of 138M, for training from scratch on a CPU.

Size knobs: `width` scales every conv width and the fc width (4096); `depth` has no natural meaning for
VGG's fixed stacks and must stay 1.0 (pick vgg11/13/16/19 or `config` instead).
"""
from __future__ import annotations

from typing import Sequence

from flax import nnx

from jaxface.models import layers as L

BN_EPS = 1e-5
POOL = "M"
CONFIGS = {
    "vgg11": (64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL),
    "vgg13": (64, 64, POOL, 128, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL),
    "vgg16": (64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512, POOL),
    "vgg19": (64, 64, POOL, 128, 128, POOL, 256, 256, 256, 256, POOL, 512, 512, 512, 512, POOL,
              512, 512, 512, 512, POOL),
}
FC_WIDTH = 4096
POOLED_SIZE = 7
CLASSIFIERS = ("fc", "gap")


class VGGConv(nnx.Module):
    """3x3 conv with bias -> (BatchNorm) -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, *, batch_norm: bool, bn_momentum: float,
                 rngs: nnx.Rngs):
        self.conv = L.conv2d(in_channels, out_channels, 3, use_bias=True, rngs=rngs)
        self.bn = L.batch_norm(out_channels, eps=BN_EPS, momentum=bn_momentum, rngs=rngs) if batch_norm else None

    def __call__(self, x, *, train: bool = False):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x, use_running_average=not train)
        return nnx.relu(x)


class VGG(L.Detector):
    def __init__(
        self,
        variant: str = "vgg16",
        *,
        num_outputs: int = 1,
        width: float = 1.0,
        depth: float = 1.0,
        dropout: float = 0.5,
        batch_norm: bool = False,
        classifier: str = "fc",
        config: Sequence[int | str] | None = None,
        input_mean: Sequence[float] | None = L.IMAGENET_MEAN,
        input_std: Sequence[float] | None = L.IMAGENET_STD,
        bn_momentum: float = 0.9,
        rngs: nnx.Rngs,
    ):
        if variant not in CONFIGS:
            raise L.BackboneConfigError(f"unknown VGG variant {variant!r}; valid: {', '.join(CONFIGS)}")
        if L.check_multiplier("depth", depth) != 1.0:
            raise L.BackboneConfigError(
                f"VGG has fixed stacks and no depth multiplier (got depth={depth}); choose one of "
                f"{', '.join(CONFIGS)} or pass an explicit `config`"
            )
        if classifier not in CLASSIFIERS:
            raise L.BackboneConfigError(f"classifier must be one of {CLASSIFIERS}, got {classifier!r}")
        self.variant = variant
        self.width = L.check_multiplier("width", width)
        self.num_outputs = L.check_num_outputs(num_outputs)
        self.dropout_rate = L.check_rate("dropout", dropout)
        self.batch_norm = bool(batch_norm)
        self.classifier = classifier
        self.input_norm = L.InputNormalization.create(input_mean, input_std)
        if config is None:
            config = tuple(v if v == POOL else max(1, int(round(v * self.width))) for v in CONFIGS[variant])
        else:
            config = tuple(config)
            if not config or not all(v == POOL or (isinstance(v, int) and v >= 1) for v in config):
                raise L.BackboneConfigError(f"config must list conv widths and 'M' (max pool), got {config!r}")
        self.config = config

        convs, in_channels = [], 3
        for value in config:
            if value != POOL:
                convs.append(VGGConv(in_channels, value, batch_norm=self.batch_norm, bn_momentum=bn_momentum,
                                     rngs=rngs))
                in_channels = value
        self.convs = nnx.List(convs)
        linear_init = L.normal_init(0.01)  # torchvision: normal(0, 0.01), zero bias
        if classifier == "fc":
            fc_width = max(1, int(round(FC_WIDTH * self.width)))
            self.fc6 = L.linear(in_channels * POOLED_SIZE ** 2, fc_width, kernel_init=linear_init, rngs=rngs)
            self.fc6_dropout = nnx.Dropout(self.dropout_rate, rngs=rngs)
            self.fc7 = L.linear(fc_width, fc_width, kernel_init=linear_init, rngs=rngs)
            self.feature_dim = fc_width
        else:
            self.fc6 = self.fc6_dropout = self.fc7 = None
            self.feature_dim = in_channels
        self.head_dropout, self.head = L.make_head(self.feature_dim, self.num_outputs, self.dropout_rate,
                                                   linear_init, rngs)

    def features(self, x, *, train: bool = False):
        x = self._normalize_input(x)
        convs = iter(self.convs)
        for value in self.config:
            x = L.max_pool(x, 2, 2) if value == POOL else next(convs)(x, train=train)
        if self.classifier == "gap":
            return L.global_avg_pool(x)
        x = L.adaptive_avg_pool(x, POOLED_SIZE).reshape(x.shape[0], -1)
        x = self.fc6_dropout(nnx.relu(self.fc6(x)), deterministic=not train)
        return nnx.relu(self.fc7(x))


def vgg16(**kwargs) -> VGG:
    return VGG("vgg16", **kwargs)
