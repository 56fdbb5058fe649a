"""Deepfake-detector backbones looked up by name.

    model = build_detector('mobilenetv3_small', input_size=160, width=0.5, rngs=nnx.Rngs(0))
    logits = model(images, train=False)        # (B, num_outputs); p_fake = sigmoid(logits[:, 0])
    pooled = model.features(images)            # (B, model.feature_dim)

Every detector takes float32 NHWC images in [0, 1] (ImageNet mean/std normalisation happens inside;
pass input_mean=None, input_std=None to feed the input unchanged) and is called as
`model(x, *, train=False)`. `width` and `depth` scale the published architecture (1.0 = published);
architecture-specific options (e.g. `batch_norm` for VGG, `stochastic_depth`, explicit stage specs,
`n_bins` for the spectrum baseline) pass through **kwargs and are checked against the builder.
"""
from __future__ import annotations

import functools
import inspect
from typing import Callable

from flax import nnx

from jaxface.models import convnext, efficientnet, layers, mobilenetv3, resnet, spectrum, vgg
from jaxface.registry import Registry, UnknownNameError

MIN_INPUT_SIZE = 32  # five stride-2 reductions (ConvNeXt's 4x4 stem + three 2x2 downsamples also need 32)


class UnknownDetectorError(UnknownNameError):
    """A detector name that is not in DETECTORS."""


def _cnn(cls, variant: str) -> Callable[..., nnx.Module]:
    def build(*, num_outputs, width, depth, dropout, rngs, **kwargs):
        return cls(variant, num_outputs=num_outputs, width=width, depth=depth, dropout=dropout, rngs=rngs, **kwargs)

    build.options_of = cls  # the class whose keyword options **kwargs may set
    return build


def _spectrum(*, num_outputs, width, depth, dropout, rngs, **kwargs):
    # The spectrum baseline has no width or depth; anything but the default is a configuration mistake.
    if width != 1.0 or depth != 1.0:
        raise layers.BackboneConfigError(
            f"the 'spectrum' detector has no width/depth (got width={width}, depth={depth}); "
            f"its size option is n_bins"
        )
    return spectrum.SpectrumDetector(num_outputs=num_outputs, dropout=dropout, rngs=rngs, **kwargs)


_spectrum.options_of = spectrum.SpectrumDetector

DETECTORS = Registry("detector", {
    "mobilenetv3_small": _cnn(mobilenetv3.MobileNetV3, "small"),
    "mobilenetv3_large": _cnn(mobilenetv3.MobileNetV3, "large"),
    "resnet18": _cnn(resnet.ResNet, "resnet18"),
    "resnet34": _cnn(resnet.ResNet, "resnet34"),
    "resnet50": _cnn(resnet.ResNet, "resnet50"),
    "resnet101": _cnn(resnet.ResNet, "resnet101"),
    "convnext_tiny": _cnn(convnext.ConvNeXt, "convnext_tiny"),
    **{name: _cnn(efficientnet.EfficientNet, name) for name in efficientnet.COMPOUND_COEFFICIENTS},
    "vgg16": _cnn(vgg.VGG, "vgg16"),
    "spectrum": _spectrum,
}, error=UnknownDetectorError, plural="detectors are")
_FIXED_ARGS = {"self", "variant", "num_outputs", "width", "depth", "dropout", "rngs"}


def detector_names() -> tuple[str, ...]:
    return tuple(DETECTORS)


def _check_name(name: str) -> Callable[..., nnx.Module]:
    return DETECTORS[name]


def detector_options(name: str) -> tuple[str, ...]:
    """The architecture-specific keyword options `build_detector(name, **kwargs)` accepts."""
    params = inspect.signature(_check_name(name).options_of.__init__).parameters
    return tuple(p for p in params if p not in _FIXED_ARGS)


def build_detector(
    name: str,
    *,
    input_size: int,
    num_outputs: int = 1,
    width: float = 1.0,
    depth: float = 1.0,
    dropout: float = 0.2,
    rngs: nnx.Rngs,
    input_transform: str = "none",
    **kwargs,
) -> nnx.Module:
    """Build detector `name` (see DETECTORS) for square inputs of side `input_size`; `input_transform`
    (layers.INPUT_TRANSFORMS) is applied to every input before the backbone ('npr': residuals)."""
    builder = _check_name(name)
    if input_transform not in layers.INPUT_TRANSFORMS:
        raise layers.BackboneConfigError(
            f"input_transform={input_transform!r}; valid: {', '.join(layers.INPUT_TRANSFORMS)}")
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < MIN_INPUT_SIZE:
        raise layers.BackboneConfigError(
            f"input_size must be an integer >= {MIN_INPUT_SIZE} (the report used 160), got {input_size!r}"
        )
    unknown = sorted(set(kwargs) - set(detector_options(name)))
    if unknown:
        raise layers.BackboneConfigError(
            f"detector {name!r} has no option(s) {', '.join(unknown)}; its options are: "
            f"{', '.join(detector_options(name)) or '(none)'}"
        )
    model = builder(num_outputs=num_outputs, width=width, depth=depth, dropout=dropout, rngs=rngs, **kwargs)
    model.input_size = input_size
    model.name = name
    if input_transform != "none":
        if not isinstance(model, layers.Detector) or type(model).__call__ is not layers.Detector.__call__:
            raise layers.BackboneConfigError(f"detector {name!r} does not take an input_transform")
        model.input_transform = input_transform
    return model


def _freeze(value):
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value


@functools.lru_cache(maxsize=32)
def _abstract_cached(name: str, frozen: tuple):
    kwargs = dict(frozen)
    return nnx.eval_shape(lambda: build_detector(name, rngs=nnx.Rngs(0), **kwargs))


def abstract_detector(name: str, *, input_size: int = 224, **kwargs) -> nnx.Module:
    """build_detector with shapes only (jax.ShapeDtypeStruct leaves, nothing allocated), cached.

    For parameter counts, weight-file checks and sharding plans; building even an abstract full-size
    network takes a second or more, so equal requests share one instance (treat it as read-only).
    """
    kwargs["input_size"] = input_size
    for option, default in (("num_outputs", 1), ("width", 1.0), ("depth", 1.0), ("dropout", 0.2)):
        kwargs.setdefault(option, default)  # equal requests share a cache entry however they are spelled
    try:
        return _abstract_cached(name, _freeze(kwargs))
    except TypeError:  # an unhashable option value (e.g. a custom spec object): no caching
        return nnx.eval_shape(lambda: build_detector(name, rngs=nnx.Rngs(0), **kwargs))
