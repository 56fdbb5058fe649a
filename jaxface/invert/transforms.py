"""Random image transforms applied before every forward pass (transformation robustness).

Every random transform is per item: item b's translation / scale / angle come from its own key, so
items never share jitter and an item's transform does not depend on the rest of the batch. Two ways in:

- key-based helpers (`jitter`, `random_scale_rotate`, `apply_transforms`): draw and apply at once;
- draw-based (`sample_draws` then `apply_drawn`): the random numbers (`TransformDraws`) are drawn
  separately, which lets the render loop draw every step's numbers up front and keep the PRNG out of
  its compiled step (see jaxface.invert.render).

`TransformConfig` composes them: optional pad, then jitter, then scale/rotate, then a centre crop back
to the input size, so the network always sees images of the size its targets were computed at.
`gaussian_blur` is here too; the render loop uses it as a projection every k steps.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

PAD_MODES = ("reflect", "edge", "constant")


class TransformError(ValueError):
    """An invalid transform option."""


def pad(images: jax.Array, width: int, mode: str = "reflect", value: float = 0.5) -> jax.Array:
    """Pad height and width by `width` pixels on every side."""
    if mode not in PAD_MODES:
        raise TransformError(f"unknown pad mode {mode!r}; valid: {', '.join(PAD_MODES)}")
    if width <= 0:
        return images
    widths = ((0, 0), (width, width), (width, width), (0, 0))
    if mode == "constant":
        return jnp.pad(images, widths, mode="constant", constant_values=value)
    return jnp.pad(images, widths, mode=mode)


def random_offsets(keys: jax.Array, max_shift: int) -> jax.Array:
    """(B, 2) integer offsets, uniform in [-max_shift, max_shift], one draw per item key."""
    return jax.vmap(lambda k: jax.random.randint(k, (2,), -max_shift, max_shift + 1))(keys)


def shift(images: jax.Array, offsets: jax.Array, max_shift: int) -> jax.Array:
    """Translate item b by offsets[b] = (dy, dx), |d| <= max_shift, filling in by reflection."""
    if max_shift <= 0:
        return images
    _, h, w, _ = images.shape
    padded = pad(images, max_shift, "reflect")
    start = offsets + max_shift
    # Per-item crops as products with one-hot selection matrices rather than a vmapped dynamic_slice
    # (a gather, and a scatter in the gradient): exact, a negligible number of flops, cheap to compile.
    rows = jax.nn.one_hot(jnp.arange(h)[None, :] + start[:, 0:1], h + 2 * max_shift, dtype=images.dtype)
    cols = jax.nn.one_hot(jnp.arange(w)[None, :] + start[:, 1:2], w + 2 * max_shift, dtype=images.dtype)
    return jnp.einsum("bip,bpqc,bjq->bijc", rows, padded, cols, precision=jax.lax.Precision.HIGHEST)


def jitter(images: jax.Array, keys: jax.Array, max_shift: int) -> jax.Array:
    """Translate every item by its own random offset of up to `max_shift` pixels (reflect-padded)."""
    if max_shift <= 0:
        return images
    return shift(images, random_offsets(keys, max_shift), max_shift)


def _affine_resample(image: jax.Array, scale: jax.Array, angle: jax.Array) -> jax.Array:
    """Scale and rotate one (H, W, C) image about its centre by bilinear resampling (reflect edges)."""
    h, w, c = image.shape
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    # Output pixel (y, x) samples the input at the inverse transform of its position.
    dy, dx = (yy - cy) / scale, (xx - cx) / scale
    src_y = cos * dy + sin * dx + cy
    src_x = -sin * dy + cos * dx + cx

    def channel(ch):
        return jax.scipy.ndimage.map_coordinates(ch, [src_y, src_x], order=1, mode="reflect")

    return jnp.stack([channel(image[..., i]) for i in range(c)], axis=-1)


def scale_rotate(images: jax.Array, scales: jax.Array, angles: jax.Array) -> jax.Array:
    """Scale item b by scales[b] and rotate it by angles[b] radians about its centre."""
    return jax.vmap(_affine_resample)(images, scales, angles)


def random_scale_rotate(
    images: jax.Array, keys: jax.Array, scales: Sequence[float] = (1.0,), max_degrees: float = 0.0
) -> jax.Array:
    """Per item: a scale drawn uniformly from `scales` and a rotation uniform in +-max_degrees."""
    config = make_transform_config(scales=scales, rotate_degrees=max_degrees)
    draws = sample_draws(config, keys)
    return scale_rotate(images, draws.scales, draws.angles)


def center_crop(images: jax.Array, height: int, width: int) -> jax.Array:
    _, h, w, _ = images.shape
    top, left = (h - height) // 2, (w - width) // 2
    return images[:, top : top + height, left : left + width, :]


@dataclasses.dataclass(frozen=True)
class TransformConfig:
    """Which transforms to apply, in order: pad -> jitter -> scale/rotate -> crop to the input size."""

    pad: int = 0
    pad_mode: str = "reflect"
    jitter: int = 0
    scales: tuple[float, ...] = ()
    rotate_degrees: float = 0.0

    @property
    def is_identity(self) -> bool:
        return self.pad <= 0 and self.jitter <= 0 and not self.scales and self.rotate_degrees == 0.0


def make_transform_config(
    *,
    pad: int = 0,
    pad_mode: str = "reflect",
    jitter: int = 0,
    scales: Sequence[float] | None = None,
    rotate_degrees: float = 0.0,
) -> TransformConfig:
    """Validated TransformConfig."""
    if pad_mode not in PAD_MODES:
        raise TransformError(f"unknown pad mode {pad_mode!r}; valid: {', '.join(PAD_MODES)}")
    if int(pad) < 0 or int(jitter) < 0:
        raise TransformError(f"pad and jitter must be >= 0 pixels, got pad={pad}, jitter={jitter}")
    scales = tuple(float(s) for s in (scales or ()))
    if any(s <= 0 for s in scales):
        raise TransformError(f"scales must be positive, got {scales}")
    if rotate_degrees < 0:
        raise TransformError(f"rotate_degrees is a maximum angle and must be >= 0, got {rotate_degrees}")
    return TransformConfig(int(pad), pad_mode, int(jitter), scales, float(rotate_degrees))


class TransformDraws(NamedTuple):
    """The random numbers of one application of the transforms, per item (leading axis B)."""

    offsets: jax.Array  # (B, 2) int32 translation (dy, dx)
    scales: jax.Array  # (B,) float32
    angles: jax.Array  # (B,) float32, radians


DRAW_WORDS = 4  # random 32-bit words per item and application: dy, dx, scale index, angle


def draws_from_bits(config: TransformConfig, bits: jax.Array) -> TransformDraws:
    """Draws from uniform random uint32 words (..., DRAW_WORDS); the leading axes are kept.

    Mapping raw words (modulo for small integer ranges, top 24 bits for the angle) instead of calling
    jax.random per quantity keeps the number of PRNG hashes, and so the compile time, small.
    """
    bits = jnp.asarray(bits, jnp.uint32)
    lead = bits.shape[:-1]
    if config.jitter > 0:
        span = jnp.uint32(2 * config.jitter + 1)
        offsets = (bits[..., 0:2] % span).astype(jnp.int32) - config.jitter
    else:
        offsets = jnp.zeros(lead + (2,), jnp.int32)
    scales = config.scales or (1.0,)
    scale = jnp.asarray(scales, jnp.float32)[(bits[..., 2] % jnp.uint32(len(scales))).astype(jnp.int32)]
    unit = (bits[..., 3] >> 8).astype(jnp.float32) * (1.0 / (1 << 24))  # uniform in [0, 1)
    angle = (2.0 * unit - 1.0) * math.radians(config.rotate_degrees)
    return TransformDraws(offsets, scale, angle)


def sample_draws(config: TransformConfig, keys: jax.Array) -> TransformDraws:
    """One set of draws per key (B,). Items use only their own key."""
    bits = jax.vmap(lambda k: jax.random.bits(k, (DRAW_WORDS,), jnp.uint32))(keys)
    return draws_from_bits(config, bits)


def apply_drawn(config: TransformConfig, images: jax.Array, draws: TransformDraws) -> jax.Array:
    """Apply `config` with given per-item draws; the output has the input's size."""
    if config.is_identity:
        return images
    _, h, w, _ = images.shape
    out = pad(images, config.pad, config.pad_mode)
    out = shift(out, draws.offsets, config.jitter)
    if config.scales or config.rotate_degrees:
        out = scale_rotate(out, draws.scales, draws.angles)
    if out.shape[1:3] != (h, w):
        out = center_crop(out, h, w)
    return out


def apply_transforms(config: TransformConfig, images: jax.Array, keys: jax.Array) -> jax.Array:
    """Apply `config` to images (B, H, W, C) with per-item keys (B,); output has the input size."""
    if config.is_identity:
        return images
    return apply_drawn(config, images, sample_draws(config, keys))


def make_transform(**kwargs) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """fn(images, keys) applying the transforms configured by `make_transform_config(**kwargs)`."""
    config = make_transform_config(**kwargs)
    return lambda images, keys: apply_transforms(config, images, keys)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian taps, radius ceil(3 sigma)."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def gaussian_blur(images: jax.Array, sigma: float) -> jax.Array:
    """Separable Gaussian blur of (B, H, W, C) images with reflect padding; identity for sigma <= 0."""
    if sigma <= 0:
        return images
    taps = jnp.asarray(gaussian_kernel(sigma))
    radius = (taps.shape[0] - 1) // 2
    _, h, w, _ = images.shape
    if radius >= min(h, w):
        raise TransformError(f"blur sigma {sigma} is too large for {h}x{w} images")
    out = jnp.pad(images, ((0, 0), (radius, radius), (0, 0), (0, 0)), mode="reflect")
    out = sum(taps[i] * out[:, i : i + h] for i in range(taps.shape[0]))
    out = jnp.pad(out, ((0, 0), (0, 0), (radius, radius), (0, 0)), mode="reflect")
    return sum(taps[i] * out[:, :, i : i + w] for i in range(taps.shape[0]))
