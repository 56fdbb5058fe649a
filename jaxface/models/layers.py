"""Building blocks shared by the deepfake-detector backbones (Flax NNX, NHWC).

Everything here follows PyTorch's numerics where a converted torchvision/timm checkpoint depends on
them: convolutions pad symmetrically by an explicit amount (flax's 'SAME' pads stride-2 layers
asymmetrically, which shifts every feature map by half a pixel against the reference), batch norm uses
the reference epsilon, GELU is the exact (erf) form, and adaptive average pooling uses PyTorch's bins.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxface.kernels import onednn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneConfigError(ValueError):
    """An invalid backbone option (width, depth, stage spec, activation name, ...)."""


# ---------------------------------------------------------------------------------------------------
# Activations, looked up by name so that block tables can stay plain data.

def hard_swish(x):
    return x * jax.nn.relu6(x + 3.0) / 6.0


def hard_sigmoid(x):
    return jax.nn.relu6(x + 3.0) / 6.0


def gelu_exact(x):
    # PyTorch's nn.GELU default is the erf form; jax.nn.gelu defaults to the tanh approximation.
    return jax.nn.gelu(x, approximate=False)


def identity(x):
    return x


ACTIVATIONS: dict[str, Callable] = {
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "hard_swish": hard_swish,
    "hard_sigmoid": hard_sigmoid,
    "silu": jax.nn.silu,
    "sigmoid": jax.nn.sigmoid,
    "gelu": gelu_exact,
    "identity": identity,
}


def get_activation(name: str) -> Callable:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise BackboneConfigError(
            f"unknown activation {name!r}; valid activations are: {', '.join(sorted(ACTIVATIONS))}"
        ) from None


# ---------------------------------------------------------------------------------------------------
# Size helpers.

def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Channel rounding of the TF/torchvision MobileNet and EfficientNet code (never below 90%)."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return int(rounded)


def scale_depth(num_layers: int, depth: float) -> int:
    """ceil(num_layers * depth), at least one layer (the EfficientNet rule)."""
    return max(1, int(math.ceil(num_layers * depth)))


def check_multiplier(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise BackboneConfigError(f"{name} must be a positive number (1.0 is the published size), got {value!r}")
    return float(value)


def check_rate(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise BackboneConfigError(f"{name} must be a probability in [0, 1), got {value!r}")
    return float(value)


def check_num_outputs(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise BackboneConfigError(f"num_outputs must be a positive integer (1 = one real/fake logit), got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------------------------------
# Initialisers matching the reference implementations (they matter when training from scratch).
#
# Each draws on the host with numpy when its key is concrete (an eager build): jax compiles every random
# op once per distinct shape, which made building even a 0.25-width network take tens of seconds on a
# loaded CPU. Under tracing (nnx.jit / nnx.eval_shape builds) the same distribution is drawn with
# jax.random. Both paths are deterministic in the key, but they give different values.

def host_array(value, dtype=np.float32) -> jax.Array:
    """numpy -> device array without compiling anything.

    Cast on the host and device_put: a device-side cast, and in this jax even jnp.asarray of a numpy
    array, compiles a small XLA program once per distinct shape (seconds per model on a busy CPU).
    """
    return jax.device_put(np.asarray(value, dtype=np.dtype(dtype)))


def _host_generator(key) -> np.random.Generator | None:
    if isinstance(key, jax.core.Tracer):
        return None
    data = np.asarray(jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key)
    return np.random.default_rng([int(v) for v in data.reshape(-1).astype(np.uint32)])


def _initializer(host_fn, jax_fn):
    def init(key, shape, dtype=jnp.float32, out_sharding=None):
        shape = tuple(int(d) for d in shape)
        rng = _host_generator(key)
        if rng is None:
            return jax_fn(key, shape, dtype)
        return host_array(host_fn(rng, shape), dtype)

    return init


def normal_init(std: float):
    return _initializer(lambda rng, shape: rng.standard_normal(shape, np.float32) * std,
                        lambda key, shape, dtype: jax.random.normal(key, shape, dtype) * std)


def uniform_init(bound: float):
    return _initializer(lambda rng, shape: rng.uniform(-bound, bound, shape).astype(np.float32),
                        lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound))


def _constant(value: float):
    def init(key, shape, dtype=jnp.float32, out_sharding=None):
        return host_array(np.full(tuple(int(d) for d in shape), value), dtype)

    return init


zeros_init = _constant(0.0)
ones_init = _constant(1.0)


def _fans(shape) -> tuple[int, int]:
    # flax layout: (..receptive field.., in, out); the same fans as torch's (out, in, ..rf..).
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    return shape[-2] * receptive, shape[-1] * receptive


def kaiming_fan_out():
    """torchvision's kaiming_normal_(mode='fan_out', nonlinearity='relu'): N(0, 2 / fan_out)."""
    def host(rng, shape):
        return rng.standard_normal(shape, np.float32) * np.sqrt(2.0 / _fans(shape)[1])

    def traced(key, shape, dtype):
        return jax.random.normal(key, shape, dtype) * np.sqrt(2.0 / _fans(shape)[1])

    return _initializer(host, traced)


def trunc_normal(std: float = 0.02):
    """timm/torchvision trunc_normal_(std=std): N(0, std^2) cut at +-2 (absolute, so +-2/std sigmas)."""
    def host(rng, shape):
        return np.clip(rng.standard_normal(shape, np.float32) * std, -2.0, 2.0)

    def traced(key, shape, dtype):
        return jax.random.truncated_normal(key, -2.0 / std, 2.0 / std, shape, dtype) * std

    return _initializer(host, traced)


def torch_linear_uniform(fan_in: int):
    """PyTorch's default nn.Linear init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return uniform_init(1.0 / math.sqrt(max(1, fan_in)))


def batch_norm(num_features: int, *, eps: float, momentum: float, rngs: nnx.Rngs, **kwargs) -> nnx.BatchNorm:
    return nnx.BatchNorm(num_features, epsilon=eps, momentum=momentum, scale_init=ones_init, bias_init=zeros_init,
                         rngs=rngs, **kwargs)


def batch_norm_relu(bn: nnx.BatchNorm, x: jax.Array, *, train: bool) -> jax.Array:
    """relu(bn(x)) for a channels-last `bn`, the same function as nnx.BatchNorm then jax.nn.relu.

    In training the batch statistics (flax's fast variance, E[x^2] - E[x]^2) go through one hand-written
    gradient: autodiff of the normalisation materialised several full-size intermediates per layer and
    took 64 ms of a 153 ms VGG-Face step (width 1/8, 64 px, batch 64) on two cores; this takes 22 ms.
    The running averages are updated as nnx.BatchNorm does.
    """
    if not train:
        return jax.nn.relu(bn(x, use_running_average=True))
    reduction_axes = tuple(range(x.ndim - 1))
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, reduction_axes)
    var = jnp.maximum(jnp.mean(jnp.square(x32), reduction_axes) - jnp.square(mean), 0.0)
    mean, var = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)
    bn.mean[...] = bn.momentum * bn.mean[...] + (1 - bn.momentum) * mean
    bn.var[...] = bn.momentum * bn.var[...] + (1 - bn.momentum) * var
    scale = bn.scale[...].astype(jnp.float32)
    bias = bn.bias[...].astype(jnp.float32)
    out = _batch_norm_relu_train(x32, scale, bias, mean, var, bn.epsilon)
    return out.astype(bn.dtype or x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _batch_norm_relu_train(x, scale, bias, mean, var, epsilon):
    return _batch_norm_relu_forward(x, scale, bias, mean, var, epsilon)[0]


def _batch_norm_relu_forward(x, scale, bias, mean, var, epsilon):
    inv_std = jax.lax.rsqrt(var + epsilon)
    multiplier = scale * inv_std
    out = jax.nn.relu(x * multiplier + (bias - mean * multiplier))
    return out, (x, out, scale, mean, inv_std)


def _batch_norm_relu_backward(epsilon, residuals, grad_out):
    # mean and var are the batch statistics of x (see batch_norm_relu), so dx carries their gradient
    # terms: dx = scale/std * (dy - mean(dy) - x_hat * mean(dy * x_hat)), dy the gradient below the ReLU.
    x, out, scale, mean, inv_std = residuals
    axes = tuple(range(x.ndim - 1))
    count = math.prod(x.shape[:-1])
    grad_y = jnp.where(out > 0, grad_out, 0.0)
    x_hat = (x - mean) * inv_std
    grad_bias = jnp.sum(grad_y, axes)
    grad_scale = jnp.sum(grad_y * x_hat, axes)
    grad_x = (scale * inv_std) * (grad_y - grad_bias / count - x_hat * (grad_scale / count))
    return grad_x, grad_scale, grad_bias, jnp.zeros_like(mean), jnp.zeros_like(inv_std)


_batch_norm_relu_train.defvjp(_batch_norm_relu_forward, _batch_norm_relu_backward)


def layer_norm(num_features: int, *, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(num_features, epsilon=eps, scale_init=ones_init, bias_init=zeros_init, rngs=rngs)


def linear(in_features: int, out_features: int, *, kernel_init, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(in_features, out_features, kernel_init=kernel_init, bias_init=zeros_init, rngs=rngs)


# ---------------------------------------------------------------------------------------------------
# Layers.

def torch_padding(kernel_size: int, dilation: int = 1) -> tuple[tuple[int, int], tuple[int, int]]:
    pad = (kernel_size - 1) // 2 * dilation
    return ((pad, pad), (pad, pad))


def conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    stride: int = 1,
    groups: int = 1,
    use_bias: bool = False,
    padding=None,
    kernel_init=None,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """A PyTorch-style Conv2d: symmetric padding (k-1)//2 unless given, HWIO kernel."""
    depthwise = groups > 1 and groups == in_channels == out_channels and padding is None
    return (DepthwiseConv if depthwise else nnx.Conv)(
        in_channels,
        out_channels,
        (kernel_size, kernel_size),
        strides=(stride, stride),
        padding=torch_padding(kernel_size) if padding is None else padding,
        feature_group_count=groups,
        use_bias=use_bias,
        kernel_init=kernel_init or kaiming_fan_out(),
        bias_init=zeros_init,
        rngs=rngs,
    )


def _explicit_padding(padding, kernel_size) -> tuple[tuple[int, int], ...] | None:
    """nnx.Conv padding as ((lo, hi), (lo, hi)), or None for the forms the oneDNN path leaves to XLA."""
    if isinstance(padding, str):
        if padding.upper() == "VALID":
            return ((0, 0),) * len(kernel_size)
        if padding.upper() == "SAME":
            return tuple(((k - 1) // 2, k // 2) for k in kernel_size)  # stride 1 only: see Conv
        return None
    if isinstance(padding, int):
        return ((padding, padding),) * len(kernel_size)
    pads = tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)
    return pads if all(len(p) == 2 for p in pads) else None


class Conv(nnx.Conv):
    """An nnx.Conv (same parameters, same result to float32 rounding) whose float32 2-D convolution
    runs on oneDNN where jaxface.kernels.onednn.applies (a single CPU device with the extension built,
    unless JAXFACE_CONV says otherwise), and on XLA's convolution everywhere else."""

    def __call__(self, inputs: jax.Array, out_sharding=None) -> jax.Array:
        geometry = self._onednn_geometry(inputs, out_sharding)
        if geometry is None:
            return super().__call__(inputs, out_sharding)
        out = onednn.conv2d(inputs, self.kernel[...], strides=geometry[0], padding=geometry[1])
        if self.bias is not None:
            out = out + self.bias[...]
        return out

    def relu_of(self, inputs: jax.Array) -> jax.Array:
        """relu(self(inputs)); on oneDNN one call that adds the bias and applies the ReLU as the
        convolution writes its output."""
        geometry = self._onednn_geometry(inputs, None)
        if geometry is None or self.bias is None:
            return jax.nn.relu(self(inputs))
        return onednn.conv2d_bias_relu(inputs, self.kernel[...], self.bias[...], strides=geometry[0],
                                       padding=geometry[1])

    def _onednn_geometry(self, inputs, out_sharding):
        """(strides, padding) when this call runs on oneDNN, else None."""
        strides = (self.strides,) * 2 if isinstance(self.strides, int) else tuple(self.strides or (1, 1))
        dilations = [d for d in (self.input_dilation, self.kernel_dilation) if d not in (None, 1, (1, 1))]
        padding = _explicit_padding(self.padding, self.kernel_size)
        if isinstance(self.padding, str) and self.padding.upper() == "SAME" and strides != (1, 1):
            padding = None
        if (len(self.kernel_size) != 2 or padding is None or self.mask is not None or out_sharding is not None
                or self.dtype not in (None, jnp.float32)
                or not onednn.applies(inputs, self.kernel[...], feature_group_count=self.feature_group_count,
                                      dilated=bool(dilations))
                or not onednn.supports(inputs.shape, self.kernel.shape, strides, padding)):
            return None
        return strides, padding


class DepthwiseConv(nnx.Conv):
    """A depthwise (groups = channels) nnx.Conv with the same parameters, computed on CPU as a sum of
    k*k shifted, per-channel-scaled slices of the padded input.

    XLA's CPU grouped convolution is slow, above all its gradients: at MobileNetV3 sizes the shifted
    sum ran forward+backward 3-16x faster on 2 cores (same result to float32 rounding). Other backends
    keep the native grouped convolution, which they implement well.
    """

    def __call__(self, inputs: jax.Array, out_sharding=None) -> jax.Array:
        if jax.default_backend() != "cpu" or inputs.ndim != 4:
            return super().__call__(inputs, out_sharding)
        (kh, kw), (sh, sw) = self.kernel_size, self.strides
        (pt, pb), (pl, pr) = self.padding
        x = jnp.pad(inputs, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
        n, hp, wp, c = x.shape
        ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
        kernel = self.kernel[...].astype(x.dtype)
        out = None
        for dy in range(kh):
            for dx in range(kw):
                window = jax.lax.slice(x, (0, dy, dx, 0), (n, dy + (ho - 1) * sh + 1, dx + (wo - 1) * sw + 1, c),
                                       (1, sh, sw, 1))
                term = window * kernel[dy, dx, 0]
                out = term if out is None else out + term
        if self.bias is not None:
            out = out + self.bias[...].astype(out.dtype)
        return out


class ConvBN(nnx.Module):
    """Conv (no bias) -> BatchNorm -> activation: torchvision's Conv2dNormActivation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        groups: int = 1,
        activation: str = "relu",
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.9,
        kernel_init=None,
        rngs: nnx.Rngs,
    ):
        self.activation = activation
        self._act = get_activation(activation)
        self.conv = conv2d(
            in_channels, out_channels, kernel_size, stride=stride, groups=groups, kernel_init=kernel_init, rngs=rngs
        )
        self.bn = batch_norm(out_channels, eps=bn_eps, momentum=bn_momentum, rngs=rngs)

    def __call__(self, x, *, train: bool = False):
        return self._act(self.bn(self.conv(x), use_running_average=not train))


class SqueezeExcite(nnx.Module):
    """Channel attention: global mean -> fc1 -> activation -> fc2 -> gate -> rescale.

    fc1/fc2 are 1x1 convolutions in the references; on the pooled vector they are dense layers.
    """

    def __init__(
        self,
        channels: int,
        squeeze_channels: int,
        *,
        activation: str = "relu",
        gate: str = "hard_sigmoid",
        rngs: nnx.Rngs,
    ):
        self.activation = activation
        self.gate = gate
        self._act = get_activation(activation)
        self._gate = get_activation(gate)
        # torchvision initialises these 1x1 convs like every other conv (kaiming, fan_out).
        # As 1x1 convs their fan_out is their output width, the same as for a dense kernel (in, out).
        self.fc1 = linear(channels, squeeze_channels, kernel_init=kaiming_fan_out(), rngs=rngs)
        self.fc2 = linear(squeeze_channels, channels, kernel_init=kaiming_fan_out(), rngs=rngs)

    def __call__(self, x):
        scale = jnp.mean(x, axis=(1, 2))
        scale = self._gate(self.fc2(self._act(self.fc1(scale))))
        return x * scale[:, None, None, :]


def stochastic_depth(rate: float, rngs: nnx.Rngs) -> nnx.Dropout | None:
    """Per-sample residual-branch drop ('row' mode in torchvision), scaled by 1/(1-rate) in training."""
    if rate <= 0.0:
        return None
    return nnx.Dropout(rate, broadcast_dims=(1, 2, 3), rngs=rngs)


def apply_drop(drop: nnx.Dropout | None, x, train: bool):
    return x if drop is None else drop(x, deterministic=not train)


def max_pool_2x2(x):
    """2x2 max pool with stride 2, flooring odd sizes (VALID): the same values as reduce_window.

    Written as the maximum of four strided slices because its gradient is then elementwise selects
    and pads, where reduce_window's is a select_and_scatter, which XLA:CPU runs as a slow scalar loop
    (the VGG inversion step is 10-20% faster at full width). Slices, unlike a reshape, keep any
    sharding of the batch axis. Ties share the gradient instead of giving it to the first maximum;
    after a ReLU the only common tie is at 0, whose gradient is 0 anyway.
    """
    h2, w2 = x.shape[1] // 2, x.shape[2] // 2
    x = x[:, : 2 * h2, : 2 * w2]
    rows = jnp.maximum(x[:, 0::2], x[:, 1::2])
    return jnp.maximum(rows[:, :, 0::2], rows[:, :, 1::2])


def max_pool(x, window: int, stride: int, padding: int = 0):
    """PyTorch MaxPool2d: pads with -inf, so padding never wins the max."""
    pads = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1), (1, stride, stride, 1), pads)


@functools.lru_cache(maxsize=64)
def _adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    # PyTorch bins: [floor(i*in/out), ceil((i+1)*in/out)); overlapping when in < out (then it replicates).
    matrix = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def adaptive_avg_pool(x, output_size: int):
    """PyTorch AdaptiveAvgPool2d((s, s)) on NHWC input, as two small constant matrix products."""
    rows = jnp.asarray(_adaptive_pool_matrix(x.shape[1], output_size))
    cols = jnp.asarray(_adaptive_pool_matrix(x.shape[2], output_size))
    return jnp.einsum("ih,bhwc,jw->bijc", rows, x, cols)


def global_avg_pool(x):
    return jnp.mean(x, axis=(1, 2))


@dataclasses.dataclass(frozen=True)
class InputNormalization:
    """Maps the library's [0, 1] RGB input to the backbone's expected range (ImageNet mean/std by default).

    A frozen dataclass so that it is a hashable static attribute of the NNX module (jit caches agree
    across equal models).
    """

    mean: tuple[float, float, float] | None = IMAGENET_MEAN
    std: tuple[float, float, float] | None = IMAGENET_STD

    @classmethod
    def create(cls, mean: Sequence[float] | None, std: Sequence[float] | None) -> "InputNormalization":
        if (mean is None) != (std is None):
            raise BackboneConfigError("input_mean and input_std must both be given or both be None")
        if mean is None:
            return cls(None, None)
        mean = tuple(float(m) for m in mean)
        std = tuple(float(s) for s in std)
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise BackboneConfigError(
                f"input_mean/input_std must be 3 numbers each, with std > 0; got {mean!r} / {std!r}"
            )
        return cls(mean, std)

    def __call__(self, x):
        if self.mean is None:
            return x
        return (x - jnp.asarray(self.mean, x.dtype)) / jnp.asarray(self.std, x.dtype)


class Detector(nnx.Module):
    """Common interface: `model(x, *, train=False)` -> logits (B, num_outputs); `features` -> (B, D).

    Subclasses set `self.feature_dim`, `self.num_outputs`, `self.head_dropout` (nnx.Dropout) and
    `self.head` (nnx.Linear) and implement `features`.
    """

    feature_dim: int
    num_outputs: int

    def _normalize_input(self, x):
        x = jnp.asarray(x)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise BackboneConfigError(
                f"{type(self).__name__} expects a float NHWC RGB batch (B, H, W, 3) in [0, 1], got shape {x.shape}"
            )
        return self.input_norm(x.astype(jnp.float32))

    def features(self, x, *, train: bool = False):  # pragma: no cover - abstract
        raise NotImplementedError

    input_transform: str = "none"  # INPUT_TRANSFORMS, set by models.registry.build_detector

    def __call__(self, x, *, train: bool = False):
        x = jnp.asarray(x)
        if x.ndim == 5:  # (B, P, H, W, 3): P patches of each image; an image's logit is their mean
            b, p = x.shape[:2]
            logits = self(x.reshape((b * p,) + x.shape[2:]), train=train)
            return logits.reshape(b, p, -1).mean(axis=1)
        pooled = self.features(input_transform(x, self.input_transform), train=train)
        return self.head(self.head_dropout(pooled, deterministic=not train))


INPUT_TRANSFORMS = ("none", "npr")
NPR_GAIN = 4.0  # the residual of a [0, 1] image is small; BatchNorm follows, this only keeps eps negligible


def npr_residual(x):
    """Neighbouring pixel relationships (Tan et al., CVPR 2024): x - up2(down2(x)) with nearest resampling,
    i.e. each pixel minus the top-left pixel of its 2x2 block. Upsampling in a generator leaves fixed
    relations inside those blocks; image content mostly cancels."""
    h, w = x.shape[-3], x.shape[-2]
    corner = jnp.repeat(jnp.repeat(x[..., ::2, ::2, :], 2, axis=-3), 2, axis=-2)[..., :h, :w, :]
    return x - corner


def input_transform(x, name: str):
    """A detector's fixed input transform; an image-like result in [0, 1] around 0.5 for 'npr'."""
    if name == "none":
        return x
    if name == "npr":
        return 0.5 + NPR_GAIN * npr_residual(x.astype(jnp.float32))
    raise BackboneConfigError(f"unknown input_transform {name!r}; valid: {', '.join(INPUT_TRANSFORMS)}")


def make_head(feature_dim: int, num_outputs: int, dropout: float, kernel_init, rngs: nnx.Rngs):
    """Dropout + the fresh real/fake (or class) layer."""
    return nnx.Dropout(dropout, rngs=rngs), linear(feature_dim, num_outputs, kernel_init=kernel_init, rngs=rngs)


def count_params(model_or_state) -> int:
    """Number of trainable parameters (nnx.Param leaves); works on abstract (eval_shape) models too."""
    state = nnx.state(model_or_state, nnx.Param) if isinstance(model_or_state, nnx.Module) else model_or_state
    return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(state)))
