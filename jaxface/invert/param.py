"""Image parameterisations for a batch of images being optimised.

A parameterisation maps an array of free parameters to float32 NHWC images in [0, 1] and back:

- ``pixels``: one parameter per pixel and channel. ``pixel_mode='sigmoid'`` stores logits (the image
  is their sigmoid, always in range); ``'clip'`` stores the pixels themselves and clips them into
  [0, 1] after every update (``project``); ``'free'`` stores the pixels and leaves them unconstrained
  during optimisation (pair it with a pixel-range penalty; the final image is clipped).
- ``fft``: the image's real 2-D Fourier spectrum, one complex number per frequency and channel stored
  as (real, imaginary) float pairs, scaled by 1/f so that a unit step in every parameter changes low
  frequencies more than high ones (natural images have a roughly 1/f amplitude spectrum), followed by
  colour decorrelation (a fixed 3x3 matrix, the square root of natural-image colour correlations) and
  a sigmoid.
- ``pca``: coordinates in the principal subspace of a set of real images (an `ImagePrior`, fitted in
  closed form by `cgmm.image_prior.fit_image_prior`, e.g. eigenfaces of the training faces): image = mean + sum_k
  c_k std_k basis_k, clipped to [0, 1]. Coefficients are in units of each component's standard
  deviation, so N(0, 1) coefficients are a Gaussian model of the training images and a penalty on
  mean(c^2) (objectives.coefficient_prior) is its negative log-likelihood. Unlike the other two, every
  image it can produce is a blend of real images: a strong prior for inversions from features that
  leave most of the image unconstrained. The prior's arrays travel as a jit argument (`prior=`), not
  as constants baked into the program.

``make_param`` returns ``(params, image_param)``; ``image_param(params)`` gives the images, and
``image_param.from_image(images)`` inverts it (used to initialise from an image and to apply image-space
projections such as blurring). Every batch item's initial noise comes from its own key,
``fold_in(key, item_id)``, so an item starts from the same image whichever batch it is in.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxface.cgmm.image_prior import ImagePrior

PARAM_KINDS = ("pixels", "fft", "pca")
PIXEL_MODES = ("sigmoid", "clip", "free")

# Square root of the colour correlation of natural images (the matrix lucid uses, derived from ImageNet
# RGB statistics), normalised so that its largest column has unit norm. Multiplying decorrelated
# channels by it gives correlated RGB.
_COLOR_CORRELATION_SQRT = np.asarray(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], np.float64
)
COLOR_CORRELATION = (
    _COLOR_CORRELATION_SQRT / np.max(np.linalg.norm(_COLOR_CORRELATION_SQRT, axis=0))
).astype(np.float32)
_COLOR_CORRELATION_INV = np.linalg.inv(COLOR_CORRELATION.astype(np.float64)).astype(np.float32)

# Logits are computed from pixels clipped this far inside (0, 1) so that saturated pixels map to large
# but finite parameters.
_LOGIT_EPS = 1e-4


class ParamError(ValueError):
    """An invalid parameterisation option."""


def image_size(size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) from an int or a pair."""
    if isinstance(size, (int, np.integer)):
        hw = (int(size), int(size))
    else:
        hw = tuple(int(s) for s in size)
    if len(hw) != 2 or min(hw) < 1:
        raise ParamError(f"image size must be a positive int or (height, width), got {size!r}")
    return hw


def rfft2_frequencies(height: int, width: int) -> np.ndarray:
    """Radial frequency (cycles per pixel) of every coefficient of an (height, width) rfft2."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    return np.sqrt(fx * fx + fy * fy)


def spectrum_scale(height: int, width: int, decay_power: float) -> np.ndarray:
    """Per-frequency amplitude 1/f**decay_power, normalised to unit root-mean-square.

    The zero frequency is given the amplitude of the lowest non-zero frequency (1/max(h, w)). The RMS
    normalisation keeps the image-space size of a parameter step comparable to the pixel
    parameterisation, so the same learning rates work for both.
    """
    freqs = rfft2_frequencies(height, width)
    scale = 1.0 / np.maximum(freqs, 1.0 / max(height, width)) ** decay_power
    return (scale / np.sqrt(np.mean(scale**2))).astype(np.float32)


def _logit(images: jax.Array) -> jax.Array:
    p = jnp.clip(images, _LOGIT_EPS, 1.0 - _LOGIT_EPS)
    return jnp.log(p) - jnp.log1p(-p)


@dataclasses.dataclass(frozen=True)
class ImageParam:
    """A parameterisation of a batch of (height, width, 3) images; hashable, usable as a jit static."""

    kind: str
    height: int
    width: int
    pixel_mode: str = "sigmoid"
    decorrelate: bool = False
    decay_power: float = 1.0
    components: int = 0  # kind='pca': the prior's number of components

    # ------------------------------------------------------------------------------ params -> image
    def __call__(self, params: jax.Array, prior: ImagePrior | None = None) -> jax.Array:
        return self.to_image(params, prior)

    def _need_prior(self, prior: ImagePrior | None) -> ImagePrior:
        if prior is None:
            raise ParamError("param='pca' needs its ImagePrior (prior=...)")
        return prior

    def to_image(self, params: jax.Array, prior: ImagePrior | None = None) -> jax.Array:
        """float32 (B, H, W, 3) images. In range [0, 1] except for pixel_mode='free' during optimisation."""
        if self.kind == "pca":
            prior = self._need_prior(prior)
            flat = prior.mean + jnp.matmul(params * prior.std, prior.basis, precision=jax.lax.Precision.HIGHEST)
            return jnp.clip(flat.reshape(params.shape[0], self.height, self.width, 3), 0.0, 1.0)
        if self.kind == "fft":
            scale = jnp.asarray(spectrum_scale(self.height, self.width, self.decay_power))
            spectrum = jax.lax.complex(params[..., 0], params[..., 1]) * scale  # (B, 3, H, W//2+1)
            channels = jnp.fft.irfft2(spectrum, s=(self.height, self.width), norm="ortho")
            signal = jnp.moveaxis(channels, 1, -1)  # (B, H, W, 3)
        else:
            signal = params
            if self.pixel_mode != "sigmoid":
                return signal
        if self.decorrelate:
            signal = signal @ jnp.asarray(COLOR_CORRELATION).T
        return jax.nn.sigmoid(signal)

    # ------------------------------------------------------------------------------ image -> params
    def from_image(self, images: jax.Array, prior: ImagePrior | None = None) -> jax.Array:
        """The parameters whose image is `images` (exactly, up to the clipping of saturated pixels; for
        'pca', the parameters of its orthogonal projection onto the prior's subspace)."""
        images = jnp.asarray(images, jnp.float32)
        if self.kind == "pca":
            prior = self._need_prior(prior)
            flat = images.reshape(images.shape[0], -1) - prior.mean
            return jnp.matmul(flat, prior.basis.T, precision=jax.lax.Precision.HIGHEST) / prior.std
        if self.kind == "pixels" and self.pixel_mode != "sigmoid":
            return images
        signal = _logit(images)
        if self.decorrelate:
            signal = signal @ jnp.asarray(_COLOR_CORRELATION_INV).T
        if self.kind == "pixels":
            return signal
        scale = jnp.asarray(spectrum_scale(self.height, self.width, self.decay_power))
        spectrum = jnp.fft.rfft2(jnp.moveaxis(signal, -1, 1), norm="ortho") / scale
        return jnp.stack([spectrum.real, spectrum.imag], axis=-1).astype(jnp.float32)

    # ------------------------------------------------------------------------------ after an update
    def project(self, params: jax.Array) -> jax.Array:
        """Map parameters back to their valid set after an optimiser update."""
        if self.kind == "pixels" and self.pixel_mode == "clip":
            return jnp.clip(params, 0.0, 1.0)
        return params

    def final_image(self, params: jax.Array, prior: ImagePrior | None = None) -> jax.Array:
        """The image to report: always in [0, 1]."""
        return jnp.clip(self.to_image(params, prior), 0.0, 1.0)

    def param_shape(self, batch: int) -> tuple[int, ...]:
        if self.kind == "pca":
            return (batch, self.components)
        if self.kind == "fft":
            return (batch, 3, self.height, self.width // 2 + 1, 2)
        return (batch, self.height, self.width, 3)


def make_image_param(
    kind: str,
    size: int | Sequence[int],
    *,
    pixel_mode: str = "sigmoid",
    decorrelate: bool | None = None,
    decay_power: float = 1.0,
    prior: ImagePrior | None = None,
) -> ImageParam:
    """Validated ImageParam. `decorrelate` defaults to True for 'fft' and False for 'pixels'; 'pca'
    needs the `prior` (checked against the image size) and ignores the other options."""
    if kind not in PARAM_KINDS:
        raise ParamError(f"unknown parameterisation {kind!r}; valid: {', '.join(PARAM_KINDS)}")
    height, width = image_size(size)
    if kind == "pca":
        if prior is None:
            raise ParamError("param='pca' needs an image prior (fitted by fit-cgmm, or fit_image_prior)")
        if not prior.describes(height, width):
            raise ParamError(
                f"the image prior models {prior.dim} values per image; {height}x{width}x3 images need "
                f"{height * width * 3}")
        return ImageParam(kind, height, width, components=prior.components)
    if pixel_mode not in PIXEL_MODES:
        raise ParamError(f"unknown pixel_mode {pixel_mode!r}; valid: {', '.join(PIXEL_MODES)}")
    if kind == "fft" and pixel_mode != "sigmoid":
        raise ParamError("pixel_mode applies to param='pixels' only; 'fft' always ends in a sigmoid")
    if decorrelate is None:
        decorrelate = kind == "fft"
    if decorrelate and kind == "pixels" and pixel_mode != "sigmoid":
        raise ParamError("decorrelate=True needs pixel_mode='sigmoid' (the decorrelated signal is squashed)")
    return ImageParam(kind, height, width, pixel_mode, bool(decorrelate), float(decay_power))


def item_keys(key: jax.Array, item_ids: jax.Array) -> jax.Array:
    """One key per batch item: fold_in(key, item_id), independent of the rest of the batch."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.asarray(item_ids, jnp.uint32))


def initial_images(
    image_param: ImageParam,
    batch: int,
    key: jax.Array,
    *,
    init_image: Any = None,
    noise_std: float = 0.05,
    item_ids: Sequence[int] | None = None,
) -> jax.Array:
    """Starting images: `init_image` (or mid-grey) plus per-item Gaussian noise, clipped to [0, 1]."""
    h, w = image_param.height, image_param.width
    if init_image is None:
        base = jnp.full((batch, h, w, 3), 0.5, jnp.float32)
    else:
        base = jnp.asarray(init_image, jnp.float32)
        if base.ndim == 3:
            base = jnp.broadcast_to(base[None], (batch,) + base.shape)
        if base.shape != (batch, h, w, 3):
            raise ParamError(
                f"init_image must have shape ({h}, {w}, 3) or ({batch}, {h}, {w}, 3), got "
                f"{tuple(np.shape(init_image))}"
            )
    if item_ids is None:
        item_ids = np.arange(batch)
    keys = item_keys(key, jnp.asarray(item_ids))
    noise = jax.vmap(lambda k: jax.random.normal(k, (h, w, 3), jnp.float32))(keys)
    return jnp.clip(base + noise_std * noise, 0.0, 1.0)


def make_param(
    kind: str,
    batch: int,
    size: int | Sequence[int],
    key: jax.Array,
    init_image: Any = None,
    *,
    noise_std: float = 0.05,
    pixel_mode: str = "sigmoid",
    decorrelate: bool | None = None,
    decay_power: float = 1.0,
    item_ids: Sequence[int] | None = None,
    prior: ImagePrior | None = None,
) -> tuple[jax.Array, ImageParam]:
    """Parameters for `batch` images and the parameterisation mapping them to images.

    Args:
      kind: 'pixels' or 'fft'.
      batch: number of images.
      size: int or (height, width).
      key: base PRNG key; item i's noise uses fold_in(key, item_ids[i]).
      init_image: None (start from mid-grey plus noise), or (H, W, 3) / (B, H, W, 3) in [0, 1]
        (e.g. the dataset mean image); the parameterisation is inverted to start exactly there.
        For 'pca', None starts from the prior's mean image.
      noise_std: standard deviation of the per-pixel Gaussian noise added to the start image; for
        'pca', of the noise added to each coefficient (1: a random draw from the prior).
      pixel_mode, decorrelate, decay_power: see the module docstring.
      item_ids: stable identities of the batch items (default 0..batch-1).
      prior: the ImagePrior of kind='pca'.

    Returns:
      (params, image_param) with image_param(params) -> float32 (B, H, W, 3).
    """
    if int(batch) < 1:
        raise ParamError(f"batch must be >= 1, got {batch}")
    image_param = make_image_param(
        kind, size, pixel_mode=pixel_mode, decorrelate=decorrelate, decay_power=decay_power, prior=prior
    )
    if init_image is not None:
        init_image = np.asarray(init_image, np.float32)
        if init_image.shape not in ((image_param.height, image_param.width, 3),
                                    (int(batch), image_param.height, image_param.width, 3)):
            raise ParamError(
                f"init_image must have shape ({image_param.height}, {image_param.width}, 3) or "
                f"({batch}, {image_param.height}, {image_param.width}, 3), got {init_image.shape}"
            )
    if item_ids is None:
        item_ids = np.arange(int(batch))
    params = _initial_params(
        image_param, int(batch), key, init_image, jnp.float32(noise_std), jnp.asarray(item_ids), prior
    )
    return params, image_param


@functools.partial(jax.jit, static_argnums=(0, 1))
def _initial_params(image_param, batch, key, init_image, noise_std, item_ids, prior):
    # One compiled program: op-by-op dispatch of these small steps costs more than compiling them once.
    if image_param.kind == "pca":
        # The noise lives in coefficient space: pixel noise would mostly fall outside the subspace.
        if init_image is None:
            base = jnp.zeros((batch, image_param.components), jnp.float32)
        else:
            start = jnp.broadcast_to(init_image, (batch, image_param.height, image_param.width, 3))
            base = image_param.from_image(start, prior)
        keys = item_keys(key, item_ids)
        noise = jax.vmap(lambda k: jax.random.normal(k, (image_param.components,), jnp.float32))(keys)
        return base + noise_std * noise
    images = initial_images(
        image_param, batch, key, init_image=init_image, noise_std=noise_std, item_ids=item_ids
    )
    return image_param.from_image(images)
