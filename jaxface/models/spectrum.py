"""The frequency baseline (Durall et al. 2020, "Watch your up-convolution"): spectrum + logistic regression.

Upsampling layers of generators leave periodic traces that show up as bumps or a raised tail in the
high-frequency end of an image's power spectrum. The feature is therefore a 1-D profile of the
spectrum:

    grayscale -> 2-D FFT -> log power, centred -> azimuthal average over rings of equal integer radius
    (out to the corners) -> linear interpolation to `n_bins` points -> per-image min-max scaling
    (as in the reference code; 'none' keeps absolute log power)

and the classifier is a logistic regression on the standardised profile. Everything is jnp and jits;
the ring and interpolation tables are numpy constants derived from the (static) image shape, so any
input size works.

`SpectrumDetector` is an NNX module with the detectors' interface (`model(x, train=...)` -> (B, 1)
logits, `features` -> the standardised profile). The standardisation is a scale/bias-free BatchNorm,
so if the shared trainer fits the linear layer by gradient steps the feature statistics follow the
data by themselves; `fit_spectrum_classifier` / `SpectrumDetector.fit` instead solve the L2-regularised
logistic regression exactly with a few Newton (IRLS) steps, deterministic, in closed form.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxface.models import layers as L

LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL's convert('L')
PROFILE_NORMALIZATIONS = ("minmax", "none")
_LOG_EPS = 1e-8
_MIN_STD = 1e-3


class SpectrumFitError(ValueError):
    """Features or labels that the logistic-regression fit cannot use."""


@functools.lru_cache(maxsize=32)
def _ring_tables(height: int, width: int, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ring index per pixel of the centred spectrum, pixel count per ring, (rings, n_bins) interpolation)."""
    ys = np.arange(height) - height // 2  # fftshift puts frequency 0 at index n // 2
    xs = np.arange(width) - width // 2
    radius = np.sqrt(ys[:, None] ** 2 + xs[None, :] ** 2)
    ring = np.rint(radius).astype(np.int32).reshape(-1)
    num_rings = int(ring.max()) + 1
    counts = np.bincount(ring, minlength=num_rings).astype(np.float32)
    # Linear interpolation of the ring profile at n_bins evenly spaced radii (np.interp as a matrix).
    positions = np.linspace(0.0, num_rings - 1, n_bins)
    lower = np.clip(np.floor(positions).astype(np.int64), 0, num_rings - 1)
    upper = np.minimum(lower + 1, num_rings - 1)
    frac = (positions - lower).astype(np.float32)
    interp = np.zeros((num_rings, n_bins), np.float32)
    interp[lower, np.arange(n_bins)] += 1.0 - frac
    interp[upper, np.arange(n_bins)] += frac
    return ring, counts, interp


def radial_profile(images, n_bins: int = 64, normalization: str = "minmax"):
    """(B, H, W, 3) or (B, H, W) images in [0, 1] -> (B, n_bins) azimuthally averaged log power spectrum."""
    if normalization not in PROFILE_NORMALIZATIONS:
        raise L.BackboneConfigError(f"normalization must be one of {PROFILE_NORMALIZATIONS}, got {normalization!r}")
    images = jnp.asarray(images, jnp.float32)
    if images.ndim == 4:
        if images.shape[-1] != 3:
            raise L.BackboneConfigError(f"expected RGB images (B, H, W, 3) or gray (B, H, W), got {images.shape}")
        gray = images @ jnp.asarray(LUMA_WEIGHTS, jnp.float32)
    elif images.ndim == 3:
        gray = images
    else:
        raise L.BackboneConfigError(f"expected RGB images (B, H, W, 3) or gray (B, H, W), got {images.shape}")
    batch, height, width = gray.shape
    ring, counts, interp = _ring_tables(height, width, n_bins)
    spectrum = jnp.fft.fftshift(jnp.fft.fft2(gray), axes=(1, 2))
    log_power = jnp.log(jnp.real(spectrum) ** 2 + jnp.imag(spectrum) ** 2 + _LOG_EPS)
    ring_sums = jax.vmap(lambda v: jax.ops.segment_sum(v, ring, num_segments=counts.size))(
        log_power.reshape(batch, -1)
    )
    profile = (ring_sums / counts) @ interp
    if normalization == "minmax":
        low = profile.min(axis=1, keepdims=True)
        high = profile.max(axis=1, keepdims=True)
        profile = (profile - low) / jnp.maximum(high - low, 1e-6)
    return profile


class LogisticFit(NamedTuple):
    """Result of fit_spectrum_classifier: p(fake) = sigmoid(((x - mean) / std) @ weight + bias)."""

    mean: jax.Array  # (D,)
    std: jax.Array  # (D,)
    weight: jax.Array  # (D,)
    bias: jax.Array  # ()
    loss: jax.Array  # final regularised mean log-loss
    gradient_norm: jax.Array  # max-abs gradient at the solution (about 0 when converged)


@functools.partial(jax.jit, static_argnames=("steps",))
def _newton_logistic(x, y, l2, steps: int):
    n, d = x.shape
    design = jnp.concatenate([x, jnp.ones((n, 1), x.dtype)], axis=1)
    reg = jnp.concatenate([jnp.full((d,), l2, x.dtype), jnp.zeros((1,), x.dtype)])  # bias not penalised

    def loss_and_grad(theta):
        z = design @ theta
        loss = jnp.mean(jnp.logaddexp(0.0, z) - y * z) + 0.5 * jnp.sum(reg * theta ** 2)
        grad = design.T @ (jax.nn.sigmoid(z) - y) / n + reg * theta
        return loss, grad

    def newton_step(theta, _):
        _, grad = loss_and_grad(theta)
        p = jax.nn.sigmoid(design @ theta)
        hessian = (design * (p * (1 - p))[:, None]).T @ design / n + jnp.diag(reg) + 1e-6 * jnp.eye(d + 1)
        return theta - jnp.linalg.solve(hessian, grad), None

    theta, _ = jax.lax.scan(newton_step, jnp.zeros((d + 1,), x.dtype), None, length=steps)
    loss, grad = loss_and_grad(theta)
    return theta, loss, jnp.max(jnp.abs(grad))


def fit_spectrum_classifier(features, labels, *, l2: float = 1e-2, steps: int = 25) -> LogisticFit:
    """L2-regularised logistic regression on standardised features by `steps` Newton (IRLS) steps.

    features: (N, D) (e.g. radial profiles); labels: (N,) with 1 = fake, 0 = real. The objective,
    mean log-loss + l2/2 * |w|^2 (bias unpenalised), is strictly convex for l2 > 0, so Newton converges
    in a handful of steps from zero and the result is deterministic.
    """
    x = np.asarray(features, np.float32)
    y = np.asarray(labels)
    if x.ndim != 2 or x.shape[0] < 2:
        raise SpectrumFitError(f"features must be (N >= 2, D), got shape {x.shape}")
    if y.shape != (x.shape[0],):
        raise SpectrumFitError(f"labels must be (N,) = ({x.shape[0]},) to match features, got shape {y.shape}")
    if not np.all(np.isin(y, (0, 1))):
        raise SpectrumFitError("labels must be 0 (real) or 1 (fake)")
    if y.min() == y.max():
        raise SpectrumFitError(f"labels hold only class {int(y[0])}; the fit needs both real (0) and fake (1)")
    if not np.all(np.isfinite(x)):
        raise SpectrumFitError("features contain NaN or infinite values")
    if not (l2 > 0):
        raise SpectrumFitError(f"l2 must be > 0 (it keeps separable data from diverging), got {l2!r}")
    mean = x.mean(axis=0)
    std = np.maximum(x.std(axis=0), _MIN_STD)  # (near-)constant features stay finite
    theta, loss, grad_norm = _newton_logistic(
        jnp.asarray((x - mean) / std), jnp.asarray(y, jnp.float32), jnp.float32(l2), steps=int(steps)
    )
    return LogisticFit(jnp.asarray(mean), jnp.asarray(std), theta[:-1], theta[-1], loss, grad_norm)


class SpectrumDetector(nnx.Module):
    """Radial log-power profile -> standardisation -> dropout -> Linear: one real/fake logit."""

    def __init__(
        self,
        *,
        n_bins: int = 64,
        num_outputs: int = 1,
        dropout: float = 0.0,
        normalization: str = "minmax",
        rngs: nnx.Rngs,
    ):
        if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 2:
            raise L.BackboneConfigError(f"n_bins must be an integer >= 2, got {n_bins!r}")
        if normalization not in PROFILE_NORMALIZATIONS:
            raise L.BackboneConfigError(f"normalization must be one of {PROFILE_NORMALIZATIONS}, got {normalization!r}")
        self.n_bins = n_bins
        self.normalization = normalization
        self.num_outputs = L.check_num_outputs(num_outputs)
        self.dropout_rate = L.check_rate("dropout", dropout)
        self.feature_dim = n_bins
        # Feature standardisation as running statistics (BatchStat): updated in train mode, set by fit().
        self.standardize = L.batch_norm(n_bins, use_bias=False, use_scale=False, eps=1e-6, momentum=0.9, rngs=rngs)
        self.head_dropout, self.head = L.make_head(n_bins, self.num_outputs, self.dropout_rate,
                                                   L.zeros_init, rngs)

    def profile(self, x):
        """The raw radial profile (B, n_bins)."""
        return radial_profile(x, self.n_bins, self.normalization)

    def features(self, x, *, train: bool = False):
        return self.standardize(self.profile(x), use_running_average=not train)

    def __call__(self, x, *, train: bool = False):
        return self.head(self.head_dropout(self.features(x, train=train), deterministic=not train))

    def set_classifier(self, fit: LogisticFit) -> None:
        """Install a fitted logistic regression (num_outputs must be 1)."""
        if self.num_outputs != 1:
            raise SpectrumFitError(f"a logistic fit gives one logit; this detector has num_outputs={self.num_outputs}")
        # BatchNorm divides by sqrt(var + eps); store var so that this reproduces the fitted std.
        self.standardize.mean[...] = jnp.asarray(fit.mean, jnp.float32)
        self.standardize.var[...] = jnp.maximum(jnp.asarray(fit.std, jnp.float32) ** 2 - self.standardize.epsilon, 0.0)
        self.head.kernel[...] = jnp.asarray(fit.weight, jnp.float32)[:, None]
        self.head.bias[...] = jnp.asarray(fit.bias, jnp.float32).reshape(1)

    def fit(self, images, labels, *, l2: float = 1e-2, steps: int = 25, batch_size: int = 256) -> LogisticFit:
        """Fit the classifier in closed form on (N, H, W, 3) images in [0, 1] and labels (1 = fake)."""
        images = np.asarray(images)
        profile = jax.jit(self.profile)
        feats = np.concatenate([np.asarray(profile(images[i:i + batch_size]))
                                for i in range(0, len(images), batch_size)])
        fit = fit_spectrum_classifier(feats, labels, l2=l2, steps=steps)
        self.set_classifier(fit)
        return fit
