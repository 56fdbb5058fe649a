"""Host-side image augmentation for deepfake detection and the challenge's robustness perturbations.

Everything here works on ONE image at a time, uint8 HWC RGB in and out, with numpy and PIL's C routines
(no per-pixel Python loops), so it runs cheaply inside grain's map workers.

Training augmentation (the second seed report's list), applied by `Augmenter` in this fixed order:

  1. blackout   black out the eyes, the nose or the mouth (one region chosen at random). Runs first because
                landmarks describe the un-augmented image.
  2. hflip      horizontal flip.
  3. vflip      vertical flip.
  4. affine     ONE warp combining rotation, shear, zoom and shift (each with its own probability); the
                border is filled by reflection or a constant colour (`config.affine.border`).
  5. colour     brightness, contrast, saturation, hue (each with its own probability, in that order).
  6. downscale  down-sample then up-sample back (not in the report's list: an addition so that detectors
                see the resampling the challenge's 'scaling' perturbation applies; set its prob to 0 to drop).
  7. blur       Gaussian blur with a random sigma.
  8. noise      additive Gaussian noise with a random standard deviation (in 0..255 grey levels).
  9. jpeg       JPEG re-compression at a random quality; last of the degradations, as in the wild an image
                is compressed after it was captured and processed.
 10. resize     to the model size when `config.resize.size` is set (always last, so the output size is exact).

Blackout regions are thick line segments ("capsules") between landmarks:
  eyes  from left eye to right eye, radius `eyes_radius` x inter-ocular distance;
  nose  from the midpoint of the eyes to the nose tip, radius `nose_radius` x inter-ocular distance;
  mouth from the left to the right mouth corner, radius `mouth_radius` x inter-ocular distance.
Landmarks are (5, 2) float pixel coordinates (x, y) in the order left eye, right eye, nose, left mouth corner,
right mouth corner (the CelebA / MTCNN order), NaN when unknown. When a record has no landmarks, or any
point is NaN, default aligned-face positions (fractions of width and height) are used, chosen by name from
`FACE_LANDMARK_PRESETS` or given as a (5, 2) table:
  'celeba' (the default, `DEFAULT_FACE_LANDMARKS`): the mean landmarks of CelebA's aligned 178x218 crops,
           left eye (69, 111), right eye (108, 111), nose (88, 134), mouth corners (72, 152), (106, 152);
           fits centred, aligned faces whose eyes sit near mid-height.
  'ffhq':  the FFHQ / StyleGAN alignment (eyes at 47 % of the height, 25 % of the width apart, mouth at
           73 %), as measured on the mean of the StyleGAN2 faces of ../shared/data/realfake.

Robustness perturbations (`perturb`, `ROBUSTNESS_SUITE`) follow the test protocol of the ICIAP 2021
Deepfake Detection and Reconstruction challenge: rotation, mirroring, Gaussian filtering, scaling,
cropping and JPEG re-compression, each at several strengths, every one keeping the image size.
"""
from __future__ import annotations

import io
import math
import time
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

try:  # grain is a project dependency; keep the pure functions importable without it.
    import grain

    _RandomMapBase = grain.transforms.RandomMap
except ImportError:  # pragma: no cover - exercised only where grain is absent
    _RandomMapBase = object

import ml_collections


class AugmentError(ValueError):
    """A bad augmentation or perturbation request (unknown name, bad strength, bad image)."""


# --------------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------------

LANDMARK_NAMES = ("lefteye", "righteye", "nose", "leftmouth", "rightmouth")

# (x, y) as fractions of (width, height): mean CelebA aligned-crop landmarks (see module docstring).
DEFAULT_FACE_LANDMARKS = (
    (0.388, 0.509),  # left eye   (69 / 178, 111 / 218)
    (0.607, 0.509),  # right eye  (108 / 178, 111 / 218)
    (0.494, 0.615),  # nose tip   (88 / 178, 134 / 218)
    (0.404, 0.697),  # left mouth corner  (72 / 178, 152 / 218)
    (0.596, 0.697),  # right mouth corner (106 / 178, 152 / 218)
)

# FFHQ alignment: eye centres 0.25 W apart at 0.47 H, mouth at 0.73 H (the ffhq-dataset crop rule, checked
# against the mean StyleGAN2 face).
FFHQ_FACE_LANDMARKS = (
    (0.375, 0.47),
    (0.625, 0.47),
    (0.5, 0.60),
    (0.41, 0.73),
    (0.59, 0.73),
)

FACE_LANDMARK_PRESETS = {"celeba": DEFAULT_FACE_LANDMARKS, "ffhq": FFHQ_FACE_LANDMARKS}

BLACKOUT_REGIONS = ("eyes", "nose", "mouth")

# Capsule radius as a multiple of the inter-ocular distance: wide enough to cover the whole feature
# (eye width is about 0.45 of the inter-ocular distance, the mouth height about 0.3 of it).
DEFAULT_BLACKOUT_RADII = {"eyes": 0.3, "nose": 0.25, "mouth": 0.3}

BORDER_MODES = ("reflect", "constant")

# The order in which Augmenter applies its operations (see the module docstring).
AUGMENT_ORDER = (
    "blackout", "hflip", "vflip", "rotation", "shear", "zoom", "shift",
    "brightness", "contrast", "saturation", "hue",
    "downscale", "gaussian_blur", "gaussian_noise", "jpeg", "resize",
)


def _as_rgb_uint8(image: Any, what: str = "image") -> np.ndarray:
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise AugmentError(
            f"{what} must be uint8 HWC RGB (0..255), got dtype {array.dtype}; convert float [0, 1] images "
            "with (x * 255).round().astype(np.uint8) before augmenting")
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] < 1 or array.shape[1] < 1:
        raise AugmentError(f"{what} must have shape (height, width, 3), got {array.shape}")
    return array


def _to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(image))


def _to_array(pil_image: Image.Image) -> np.ndarray:
    return np.asarray(pil_image.convert("RGB") if pil_image.mode != "RGB" else pil_image).copy()


def _finite(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AugmentError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise AugmentError(f"{name} must be finite, got {value!r}")
    return number


# --------------------------------------------------------------------------------------------------
# Individual operations (pure functions; uint8 HWC RGB in and out)
# --------------------------------------------------------------------------------------------------

def default_landmark_fractions(default_landmarks: Any = None) -> np.ndarray:
    """(5, 2) (x, y) fractions of width and height: a preset name, an explicit table, or None ('celeba')."""
    if default_landmarks is None:
        default_landmarks = "celeba"
    if isinstance(default_landmarks, str):
        if default_landmarks not in FACE_LANDMARK_PRESETS:
            raise AugmentError(f"unknown default landmark preset {default_landmarks!r}; valid presets: "
                               f"{', '.join(FACE_LANDMARK_PRESETS)} (or a (5, 2) table of fractions)")
        return np.asarray(FACE_LANDMARK_PRESETS[default_landmarks], np.float64)
    try:
        table = np.asarray(default_landmarks, np.float64)
    except (TypeError, ValueError):
        table = None
    if table is None or table.shape != (5, 2) or not np.all(np.isfinite(table)):
        raise AugmentError(
            f"default landmarks must be a preset name ({', '.join(FACE_LANDMARK_PRESETS)}) or a (5, 2) table of "
            f"(x, y) fractions in the order {', '.join(LANDMARK_NAMES)}; got {default_landmarks!r}")
    return table


def resolve_landmarks(shape: Sequence[int], landmarks: Any = None, default_landmarks: Any = None) -> np.ndarray:
    """(5, 2) float pixel landmarks for an image of `shape`; defaults replace missing or NaN input.

    A partly-known set falls back to the defaults as a whole, so the geometry stays consistent.
    default_landmarks: preset name or (5, 2) fractions, see `default_landmark_fractions`.
    """
    height, width = int(shape[0]), int(shape[1])
    defaults = default_landmark_fractions(default_landmarks) * np.array([width, height], np.float64)
    if landmarks is None:
        return defaults
    points = np.asarray(landmarks, np.float64)
    if points.shape != (5, 2):
        raise AugmentError(
            f"landmarks must have shape (5, 2) as (x, y) pixels in the order {', '.join(LANDMARK_NAMES)}; "
            f"got shape {points.shape}")
    if not np.all(np.isfinite(points)):
        return defaults
    return points


def _capsule_endpoints(points: np.ndarray, region: str) -> tuple[np.ndarray, np.ndarray]:
    if region == "eyes":
        return points[0], points[1]
    if region == "nose":
        return (points[0] + points[1]) / 2.0, points[2]
    return points[3], points[4]  # mouth


def blackout_mask(shape: Sequence[int], region: str, landmarks: Any = None, radius: float | None = None,
                  default_landmarks: Any = None) -> np.ndarray:
    """Boolean (H, W) mask of the region `blackout` zeroes.

    The region is every pixel whose centre (x, y) = (column, row) lies within `radius` x inter-ocular
    distance of the segment between the region's two landmark points (see the module docstring).
    """
    if region not in BLACKOUT_REGIONS:
        raise AugmentError(f"unknown blackout region {region!r}; valid regions: {', '.join(BLACKOUT_REGIONS)}")
    height, width = int(shape[0]), int(shape[1])
    points = resolve_landmarks((height, width), landmarks, default_landmarks)
    scale = DEFAULT_BLACKOUT_RADII[region] if radius is None else _finite(radius, "blackout radius")
    if scale < 0:
        raise AugmentError(f"blackout radius must be >= 0, got {scale}")
    interocular = float(np.hypot(*(points[1] - points[0])))
    if interocular < 1.0:  # degenerate landmarks: fall back to the face width implied by the defaults
        interocular = 0.219 * width
    capsule_radius = scale * interocular
    start, end = _capsule_endpoints(points, region)
    # Only the bounding box of the capsule is evaluated, which keeps this cheap at any image size.
    x0 = max(int(math.floor(min(start[0], end[0]) - capsule_radius)), 0)
    x1 = min(int(math.ceil(max(start[0], end[0]) + capsule_radius)) + 1, width)
    y0 = max(int(math.floor(min(start[1], end[1]) - capsule_radius)), 0)
    y1 = min(int(math.ceil(max(start[1], end[1]) + capsule_radius)) + 1, height)
    mask = np.zeros((height, width), bool)
    if x0 >= x1 or y0 >= y1:
        return mask
    xs = np.arange(x0, x1, dtype=np.float64)[None, :]
    ys = np.arange(y0, y1, dtype=np.float64)[:, None]
    direction = end - start
    length_sq = float(direction @ direction)
    if length_sq > 0:
        t = ((xs - start[0]) * direction[0] + (ys - start[1]) * direction[1]) / length_sq
        t = np.clip(t, 0.0, 1.0)
    else:
        t = np.zeros((1, 1))
    dx = xs - (start[0] + t * direction[0])
    dy = ys - (start[1] + t * direction[1])
    mask[y0:y1, x0:x1] = dx * dx + dy * dy <= capsule_radius * capsule_radius
    return mask


def blackout(image: np.ndarray, region: str, landmarks: Any = None, radius: float | None = None,
             default_landmarks: Any = None) -> np.ndarray:
    """Set the eyes, nose or mouth region to black (0); see `blackout_mask` for the region's shape.

    landmarks: (5, 2) pixel (x, y) or None; default_landmarks: positions used without them (preset name
    'celeba' / 'ffhq' or (5, 2) fractions; None = 'celeba').
    """
    image = _as_rgb_uint8(image)
    mask = blackout_mask(image.shape, region, landmarks, radius, default_landmarks)
    out = image.copy()
    out[mask] = 0
    return out


def flip_horizontal(image: np.ndarray) -> np.ndarray:
    """Mirror left-right."""
    return np.ascontiguousarray(_as_rgb_uint8(image)[:, ::-1])


def flip_vertical(image: np.ndarray) -> np.ndarray:
    """Mirror top-bottom."""
    return np.ascontiguousarray(_as_rgb_uint8(image)[::-1])


def _affine_inverse_coefficients(width: int, height: int, rotation: float, shear: float, zoom: float,
                                 shift: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Matrix M and offset b mapping output (x, y) to input coordinates: p_in = M p_out + b.

    Forward model about the image centre c, in PIL's continuous coordinates (pixel centres at i + 0.5):
    p_out = c + Z R S (p_in - c) + t, with R a counter-clockwise rotation on screen (y points down),
    S an x-shear by `shear` degrees, Z an isotropic zoom (> 1 enlarges) and t the shift in pixels.
    """
    theta = math.radians(rotation)
    cos, sin = math.cos(theta), math.sin(theta)
    rotate = np.array([[cos, sin], [-sin, cos]])
    shear_matrix = np.array([[1.0, math.tan(math.radians(shear))], [0.0, 1.0]])
    forward = zoom * rotate @ shear_matrix
    inverse = np.linalg.inv(forward)
    centre = np.array([width / 2.0, height / 2.0])
    translation = np.array([shift[0] * width, shift[1] * height])
    offset = centre - inverse @ (centre + translation)
    return inverse, offset


def _parse_shift(shift: Any) -> tuple[float, float]:
    if np.isscalar(shift):
        value = _finite(shift, "shift")
        return value, value
    values = tuple(shift)
    if len(values) != 2:
        raise AugmentError(f"shift must be a number or (dx, dy) fractions of width and height, got {shift!r}")
    return _finite(values[0], "shift x"), _finite(values[1], "shift y")


def affine(image: np.ndarray, rotation: float = 0.0, shear: float = 0.0, zoom: float = 1.0,
           shift: Any = (0.0, 0.0), border: str = "reflect", fill: int | Sequence[int] = 0) -> np.ndarray:
    """One bilinear warp: rotate by `rotation` degrees (counter-clockwise), x-shear by `shear` degrees,
    zoom by `zoom` (> 1 enlarges the content) and shift by `shift` = (dx, dy) fractions of width and height
    (positive moves the content right / down), all about the image centre. Same output size.

    border: 'reflect' mirrors the image into the uncovered corners (no black wedges for the detector to
    latch onto); 'constant' fills them with `fill` (a grey level or an RGB triple).
    """
    image = _as_rgb_uint8(image)
    rotation = _finite(rotation, "rotation")
    shear = _finite(shear, "shear")
    zoom = _finite(zoom, "zoom")
    if zoom <= 0:
        raise AugmentError(f"zoom must be > 0, got {zoom}")
    if not -80.0 <= shear <= 80.0:
        raise AugmentError(f"shear must be within [-80, 80] degrees, got {shear}")
    dx, dy = _parse_shift(shift)
    if border not in BORDER_MODES:
        raise AugmentError(f"unknown border mode {border!r}; valid modes: {', '.join(BORDER_MODES)}")
    if rotation == 0.0 and shear == 0.0 and zoom == 1.0 and dx == 0.0 and dy == 0.0:
        return image.copy()
    height, width = image.shape[:2]
    matrix, offset = _affine_inverse_coefficients(width, height, rotation, shear, zoom, (dx, dy))
    source = image
    if border == "reflect":
        # Where do the output corners land in the input? Pad by reflection just enough to cover them.
        corners = np.array([[0, 0], [width, 0], [0, height], [width, height]], np.float64)
        mapped = corners @ matrix.T + offset
        # Capped so an extreme zoom-out cannot allocate a huge canvas; beyond the cap the fill is black.
        limit = 2 * max(width, height)
        pad_x = min(int(math.ceil(max(0.0, -mapped[:, 0].min(), mapped[:, 0].max() - width))) + 2, limit)
        pad_y = min(int(math.ceil(max(0.0, -mapped[:, 1].min(), mapped[:, 1].max() - height))) + 2, limit)
        source = np.pad(image, ((pad_y, pad_y), (pad_x, pad_x), (0, 0)), mode="symmetric")
        offset = offset + np.array([pad_x, pad_y])
        fill_colour = (0, 0, 0)
    else:
        fill_colour = (int(fill),) * 3 if np.isscalar(fill) else tuple(int(v) for v in fill)
    coefficients = (matrix[0, 0], matrix[0, 1], offset[0], matrix[1, 0], matrix[1, 1], offset[1])
    warped = _to_pil(source).transform((width, height), Image.Transform.AFFINE, coefficients,
                                       resample=Image.Resampling.BILINEAR, fillcolor=fill_colour)
    return _to_array(warped)


def rotate(image: np.ndarray, degrees: float, border: str = "reflect", fill: int | Sequence[int] = 0) -> np.ndarray:
    """Rotate counter-clockwise by `degrees` about the centre, keeping the size (see `affine` for borders)."""
    return affine(image, rotation=degrees, border=border, fill=fill)


def jpeg_recompress(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode as baseline JPEG at `quality` (1..100, PIL's scale, 4:2:0 chroma) and decode again."""
    image = _as_rgb_uint8(image)
    quality_value = _finite(quality, "JPEG quality")
    if quality_value != int(quality_value) or not 1 <= quality_value <= 100:
        raise AugmentError(f"JPEG quality must be an integer in [1, 100], got {quality!r}")
    buffer = io.BytesIO()
    _to_pil(image).save(buffer, format="JPEG", quality=int(quality_value))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return _to_array(decoded)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with standard deviation `sigma` pixels (PIL's C box-blur approximation)."""
    image = _as_rgb_uint8(image)
    sigma = _finite(sigma, "blur sigma")
    if sigma < 0:
        raise AugmentError(f"blur sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return image.copy()
    return _to_array(_to_pil(image).filter(ImageFilter.GaussianBlur(radius=sigma)))


def gaussian_noise(image: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """Add i.i.d. Gaussian noise of standard deviation `std` grey levels (0..255 scale), then round and clip."""
    image = _as_rgb_uint8(image)
    std = _finite(std, "noise std")
    if std < 0:
        raise AugmentError(f"noise std must be >= 0, got {std}")
    if std == 0:
        return image.copy()
    noise = rng.standard_normal(image.shape, dtype=np.float32)
    noisy = image.astype(np.float32) + np.float32(std) * noise
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def adjust_color(image: np.ndarray, brightness: float = 1.0, contrast: float = 1.0, saturation: float = 1.0,
                 hue: float = 0.0) -> np.ndarray:
    """Colour jitter, in this order: brightness, contrast, saturation (factors, 1 = unchanged, 0 = black /
    flat grey / grayscale), then hue (a rotation of the colour circle by `hue` turns, in [-0.5, 0.5])."""
    image = _as_rgb_uint8(image)
    factors = {"brightness": brightness, "contrast": contrast, "saturation": saturation}
    for name, value in factors.items():
        factors[name] = _finite(value, name)
        if factors[name] < 0:
            raise AugmentError(f"{name} factor must be >= 0 (1 = unchanged), got {value}")
    hue = _finite(hue, "hue")
    if not -0.5 <= hue <= 0.5:
        raise AugmentError(f"hue shift must be within [-0.5, 0.5] turns of the colour circle, got {hue}")
    pil_image = _to_pil(image)
    if factors["brightness"] != 1.0:
        pil_image = ImageEnhance.Brightness(pil_image).enhance(factors["brightness"])
    if factors["contrast"] != 1.0:
        pil_image = ImageEnhance.Contrast(pil_image).enhance(factors["contrast"])
    if factors["saturation"] != 1.0:
        pil_image = ImageEnhance.Color(pil_image).enhance(factors["saturation"])
    if hue != 0.0:
        hsv = np.asarray(pil_image.convert("HSV")).copy()
        # uint8 hue wraps around naturally: 256 steps = one turn.
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(round(hue * 256))).astype(np.uint8)
        pil_image = Image.frombytes("HSV", pil_image.size, hsv.tobytes()).convert("RGB")
    return _to_array(pil_image)


def _parse_size(size: Any) -> tuple[int, int]:
    """(height, width) from an int (square) or a (height, width) pair."""
    values = (size, size) if np.isscalar(size) else tuple(size)
    if len(values) != 2:
        raise AugmentError(f"size must be an int or (height, width), got {size!r}")
    parsed = []
    for value in values:
        number = _finite(value, "size")
        if number != int(number) or number < 1:
            raise AugmentError(f"size must be positive integers, got {size!r}")
        parsed.append(int(number))
    return parsed[0], parsed[1]


def resize(image: np.ndarray, size: Any) -> np.ndarray:
    """Resize to `size` (int for square, or (height, width)) with antialiased bicubic resampling."""
    image = _as_rgb_uint8(image)
    height, width = _parse_size(size)
    if image.shape[:2] == (height, width):
        return image.copy()
    return _to_array(_to_pil(image).resize((width, height), Image.Resampling.BICUBIC))


def downscale(image: np.ndarray, factor: float) -> np.ndarray:
    """Resample to `factor` x the size (antialiased) and back to the original size: the detail a smaller
    upload would have lost. factor 0.5 = half size."""
    image = _as_rgb_uint8(image)
    factor = _finite(factor, "scaling factor")
    if factor <= 0:
        raise AugmentError(f"scaling factor must be > 0, got {factor}")
    height, width = image.shape[:2]
    small = (max(1, int(round(height * factor))), max(1, int(round(width * factor))))
    if small == (height, width):
        return image.copy()
    pil_image = _to_pil(image).resize((small[1], small[0]), Image.Resampling.BICUBIC)
    return _to_array(pil_image.resize((width, height), Image.Resampling.BICUBIC))


def center_crop(image: np.ndarray, fraction: float) -> np.ndarray:
    """Keep the central `fraction` of height and width and resize back to the original size."""
    image = _as_rgb_uint8(image)
    fraction = _finite(fraction, "crop fraction")
    if not 0 < fraction <= 1:
        raise AugmentError(f"crop fraction (the part kept) must be in (0, 1], got {fraction}")
    height, width = image.shape[:2]
    crop_h, crop_w = max(1, int(round(height * fraction))), max(1, int(round(width * fraction)))
    if (crop_h, crop_w) == (height, width):
        return image.copy()
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    cropped = _to_pil(image[top:top + crop_h, left:left + crop_w])
    return _to_array(cropped.resize((width, height), Image.Resampling.BICUBIC))


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------

def default_augment_config() -> ml_collections.ConfigDict:
    """The report's augmentation list with moderate strengths ("proper care was taken not to degrade").

    Every op has `prob` (0 disables it) and its strength parameters; ranges are sampled uniformly.
    """
    config = ml_collections.ConfigDict()
    config.blackout = dict(
        prob=0.2, regions=BLACKOUT_REGIONS,
        eyes_radius=DEFAULT_BLACKOUT_RADII["eyes"], nose_radius=DEFAULT_BLACKOUT_RADII["nose"],
        mouth_radius=DEFAULT_BLACKOUT_RADII["mouth"],
        default_landmarks="celeba")  # used without landmarks: a preset name or (5, 2) fractions
    config.hflip = dict(prob=0.5)
    config.vflip = dict(prob=0.1)  # faces are upright; a few upside-down ones stop "always upright" cues
    config.rotation = dict(prob=0.3, max_degrees=15.0)
    config.shear = dict(prob=0.2, max_degrees=8.0)
    config.zoom = dict(prob=0.3, min=0.9, max=1.1)
    config.shift = dict(prob=0.3, max_fraction=0.08)
    config.affine = dict(border="reflect", fill=0)  # border handling of the combined warp
    config.brightness = dict(prob=0.3, max_delta=0.2)  # factor in [1 - d, 1 + d]
    config.contrast = dict(prob=0.3, max_delta=0.2)
    config.saturation = dict(prob=0.3, max_delta=0.2)
    config.hue = dict(prob=0.2, max_delta=0.03)  # turns of the colour circle
    config.downscale = dict(prob=0.1, min_factor=0.5, max_factor=0.9)
    config.gaussian_blur = dict(prob=0.2, min_sigma=0.2, max_sigma=1.2)
    config.gaussian_noise = dict(prob=0.2, min_std=2.0, max_std=8.0)  # grey levels (0..255)
    config.jpeg = dict(prob=0.3, min_quality=50, max_quality=95)
    config.resize = dict(size=None)  # None keeps the input size; an int or (height, width) resizes last
    # Lossless quarter turns (k = 1, 2 or 3): the pixel grid survives, so trace detectors keep their
    # input intact while learning that faces may be turned. Last, so adding it kept every other draw.
    config.rot90 = dict(prob=0.0)
    return config


def identity_augment_config() -> ml_collections.ConfigDict:
    """The default config with every probability 0: `Augmenter` returns its input unchanged."""
    config = default_augment_config()
    for name in _OPS_WITH_PROB:
        config[name].prob = 0.0
    return config


_OPS_WITH_PROB = ("blackout", "hflip", "vflip", "rotation", "shear", "zoom", "shift", "brightness", "contrast",
                  "saturation", "hue", "downscale", "gaussian_blur", "gaussian_noise", "jpeg", "rot90")


def _plain(config: Any) -> dict:
    if isinstance(config, ml_collections.ConfigDict):
        return config.to_dict()
    if isinstance(config, Mapping):
        return {key: (_plain(value) if isinstance(value, Mapping) else value) for key, value in config.items()}
    raise AugmentError(f"augmentation config must be a ConfigDict or a dict, got {type(config).__name__}")


def _merge_and_validate(config: Any) -> dict:
    """Defaults overlaid with `config` (missing ops/fields keep their defaults), checked once up front."""
    merged = default_augment_config().to_dict()
    user = _plain(config) if config is not None else {}
    for op_name, op_config in user.items():
        if op_name not in merged:
            raise AugmentError(
                f"unknown augmentation {op_name!r}; valid names: {', '.join(sorted(merged))}")
        if not isinstance(op_config, Mapping):
            raise AugmentError(f"augmentation {op_name!r} must be a dict of settings, got {op_config!r}")
        for field, value in op_config.items():
            if field not in merged[op_name]:
                raise AugmentError(
                    f"unknown setting {op_name}.{field}; valid settings: {', '.join(sorted(merged[op_name]))}")
            merged[op_name][field] = value

    for name in _OPS_WITH_PROB:
        prob = _finite(merged[name]["prob"], f"{name}.prob")
        if not 0.0 <= prob <= 1.0:
            raise AugmentError(f"{name}.prob must be within [0, 1], got {prob}")
        merged[name]["prob"] = prob

    def check_range(name: str, low_key: str, high_key: str, low_bound: float, high_bound: float) -> None:
        low = _finite(merged[name][low_key], f"{name}.{low_key}")
        high = _finite(merged[name][high_key], f"{name}.{high_key}")
        if not low_bound <= low <= high <= high_bound:
            raise AugmentError(
                f"{name} needs {low_bound} <= {low_key} <= {high_key} <= {high_bound}, got {low_key}={low}, "
                f"{high_key}={high}")
        merged[name][low_key], merged[name][high_key] = low, high

    def check_max(name: str, key: str, bound: float) -> None:
        value = _finite(merged[name][key], f"{name}.{key}")
        if not 0.0 <= value <= bound:
            raise AugmentError(f"{name}.{key} must be within [0, {bound}], got {value}")
        merged[name][key] = value

    check_max("rotation", "max_degrees", 180.0)
    check_max("shear", "max_degrees", 60.0)
    check_range("zoom", "min", "max", 0.25, 4.0)
    check_max("shift", "max_fraction", 1.0)
    check_max("brightness", "max_delta", 1.0)
    check_max("contrast", "max_delta", 1.0)
    check_max("saturation", "max_delta", 1.0)
    check_max("hue", "max_delta", 0.5)
    check_range("downscale", "min_factor", "max_factor", 1e-3, 1.0)
    check_range("gaussian_blur", "min_sigma", "max_sigma", 0.0, 100.0)
    check_range("gaussian_noise", "min_std", "max_std", 0.0, 255.0)
    check_range("jpeg", "min_quality", "max_quality", 1.0, 100.0)
    for key in ("min_quality", "max_quality"):
        if merged["jpeg"][key] != int(merged["jpeg"][key]):
            raise AugmentError(f"jpeg.{key} must be an integer, got {merged['jpeg'][key]}")
        merged["jpeg"][key] = int(merged["jpeg"][key])

    regions = merged["blackout"]["regions"]
    regions = (regions,) if isinstance(regions, str) else tuple(regions)
    unknown = [region for region in regions if region not in BLACKOUT_REGIONS]
    if not regions or unknown:
        raise AugmentError(
            f"blackout.regions must be a non-empty subset of {', '.join(BLACKOUT_REGIONS)}, got {regions!r}")
    merged["blackout"]["regions"] = regions
    fractions = default_landmark_fractions(merged["blackout"]["default_landmarks"])
    if not isinstance(merged["blackout"]["default_landmarks"], str):
        merged["blackout"]["default_landmarks"] = tuple(map(tuple, fractions.tolist()))
    for region in BLACKOUT_REGIONS:
        check_max("blackout", f"{region}_radius", 5.0)

    if merged["affine"]["border"] not in BORDER_MODES:
        raise AugmentError(
            f"affine.border must be one of {', '.join(BORDER_MODES)}, got {merged['affine']['border']!r}")
    if merged["resize"]["size"] is not None:
        merged["resize"]["size"] = _parse_size(merged["resize"]["size"])
    return merged


# --------------------------------------------------------------------------------------------------
# The training-time augmenter and its grain transform
# --------------------------------------------------------------------------------------------------

class Augmenter:
    """Random augmentation of one uint8 HWC RGB image, ops in the fixed order `AUGMENT_ORDER`.

    config: a ConfigDict or dict shaped like `default_augment_config()`; missing ops or fields keep their
    defaults, unknown ones raise `AugmentError`. Deterministic for a given `rng` state; picklable.
    """

    def __init__(self, config: Any = None):
        self.config = _merge_and_validate(config)

    def __getstate__(self) -> dict:
        return {"config": self.config}

    def __setstate__(self, state: dict) -> None:
        self.config = state["config"]

    def __repr__(self) -> str:
        active = [name for name in _OPS_WITH_PROB if self.config[name]["prob"] > 0]
        return f"Augmenter(active={active}, resize={self.config['resize']['size']})"

    def _fires(self, name: str, rng: np.random.Generator) -> bool:
        # One draw per op whatever its probability, so changing one op's prob leaves the others' coin flips
        # unchanged for a given seed.
        return rng.random() < self.config[name]["prob"]

    def __call__(self, image: np.ndarray, rng: np.random.Generator, landmarks: Any = None) -> np.ndarray:
        if not isinstance(rng, np.random.Generator):
            raise AugmentError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        image = _as_rgb_uint8(image)
        cfg = self.config
        out = image

        if self._fires("blackout", rng):
            regions = cfg["blackout"]["regions"]
            region = regions[int(rng.integers(len(regions)))]
            out = blackout(out, region, landmarks, radius=cfg["blackout"][f"{region}_radius"],
                           default_landmarks=cfg["blackout"]["default_landmarks"])
        if self._fires("hflip", rng):
            out = out[:, ::-1]
        if self._fires("vflip", rng):
            out = out[::-1]
        out = np.ascontiguousarray(out)

        rotation = shear = 0.0
        zoom = 1.0
        shift = (0.0, 0.0)
        if self._fires("rotation", rng):
            rotation = rng.uniform(-1.0, 1.0) * cfg["rotation"]["max_degrees"]
        if self._fires("shear", rng):
            shear = rng.uniform(-1.0, 1.0) * cfg["shear"]["max_degrees"]
        if self._fires("zoom", rng):
            # log-uniform, so zooming in and out by the same ratio are equally likely
            zoom = math.exp(rng.uniform(math.log(cfg["zoom"]["min"]), math.log(cfg["zoom"]["max"])))
        if self._fires("shift", rng):
            limit = cfg["shift"]["max_fraction"]
            shift = (rng.uniform(-limit, limit), rng.uniform(-limit, limit))
        if rotation or shear or zoom != 1.0 or shift != (0.0, 0.0):
            out = affine(out, rotation, shear, zoom, shift, border=cfg["affine"]["border"],
                         fill=cfg["affine"]["fill"])

        colour = {}
        for name in ("brightness", "contrast", "saturation"):
            if self._fires(name, rng):
                delta = cfg[name]["max_delta"]
                colour[name] = 1.0 + rng.uniform(-delta, delta)
        if self._fires("hue", rng):
            colour["hue"] = rng.uniform(-1.0, 1.0) * cfg["hue"]["max_delta"]
        if colour:
            out = adjust_color(out, **colour)

        if self._fires("downscale", rng):
            out = downscale(out, rng.uniform(cfg["downscale"]["min_factor"], cfg["downscale"]["max_factor"]))
        if self._fires("gaussian_blur", rng):
            out = gaussian_blur(out, rng.uniform(cfg["gaussian_blur"]["min_sigma"],
                                                 cfg["gaussian_blur"]["max_sigma"]))
        if self._fires("gaussian_noise", rng):
            std = rng.uniform(cfg["gaussian_noise"]["min_std"], cfg["gaussian_noise"]["max_std"])
            out = gaussian_noise(out, std, rng)
        if self._fires("jpeg", rng):
            quality = int(rng.integers(cfg["jpeg"]["min_quality"], cfg["jpeg"]["max_quality"] + 1))
            out = jpeg_recompress(out, quality)
        if cfg["resize"]["size"] is not None:
            out = resize(out, cfg["resize"]["size"])
        if self._fires("rot90", rng):
            k = int(rng.integers(1, 4))
            out = np.ascontiguousarray(np.rot90(out, k=k if out.shape[0] == out.shape[1] else 2))  # keep H, W
        return out if out is not image else image.copy()


class AugmentTransform(_RandomMapBase):
    """grain RandomMap: augments element['image'] (uint8 HWC) with `Augmenter`, using element['landmarks']
    when present. Other keys pass through unchanged (landmarks keep describing the un-augmented image).

    Use: `dataset.random_map(AugmentTransform(config), seed=seed)`.
    """

    def __init__(self, config: Any = None, image_key: str = "image", landmarks_key: str = "landmarks"):
        self.augmenter = config if isinstance(config, Augmenter) else Augmenter(config)
        self.image_key = image_key
        self.landmarks_key = landmarks_key

    def random_map(self, element: Mapping[str, Any], rng: np.random.Generator) -> dict:
        if not isinstance(element, Mapping) or self.image_key not in element:
            keys = sorted(element) if isinstance(element, Mapping) else type(element).__name__
            raise AugmentError(f"AugmentTransform expects a dict with key {self.image_key!r}, got {keys}")
        out = dict(element)
        out[self.image_key] = self.augmenter(element[self.image_key], rng, element.get(self.landmarks_key))
        return out


# --------------------------------------------------------------------------------------------------
# Robustness perturbations (evaluation)
# --------------------------------------------------------------------------------------------------

def _mirror(image: np.ndarray, mode: float) -> np.ndarray:
    if mode == 1:
        return flip_horizontal(image)
    if mode == 2:
        return flip_vertical(image)
    raise AugmentError(f"mirror strength must be 1 (horizontal) or 2 (vertical), got {mode}")


def _perturb_rotation(image: np.ndarray, degrees: float) -> np.ndarray:
    # A plain rotation with black corners, as an image editor would produce it.
    return rotate(image, degrees, border="constant", fill=0)


def _perturb_jpeg(image: np.ndarray, quality: float) -> np.ndarray:
    return jpeg_recompress(image, quality)


_PERTURBATIONS = {
    "rotation": _perturb_rotation,   # degrees, counter-clockwise, black corners
    "mirror": _mirror,               # 1 = horizontal, 2 = vertical
    "gaussian_blur": gaussian_blur,  # sigma in pixels
    "scaling": downscale,            # factor, then back to the original size
    "crop": center_crop,             # fraction of height and width kept, then back to the original size
    "jpeg": _perturb_jpeg,           # quality 1..100
}

PERTURBATION_KINDS = tuple(_PERTURBATIONS)

# kind -> strengths evaluated by the robustness suite (JPEG 50, blur sigma 1 and scaling 0.5 are the
# issue's targets).
ROBUSTNESS_SUITE: dict[str, list[float]] = {
    "rotation": [5.0, 15.0, 45.0, 90.0],
    "mirror": [1.0, 2.0],
    "gaussian_blur": [0.5, 1.0, 2.0, 3.0],
    "scaling": [0.75, 0.5, 0.25],
    "crop": [0.9, 0.75, 0.5],
    "jpeg": [90.0, 70.0, 50.0, 30.0],
}


def perturb(image: np.ndarray, kind: str, strength: float = 1.0) -> np.ndarray:
    """Apply one robustness perturbation; the output has the input's shape and dtype (uint8).

    kinds: 'rotation' (degrees), 'mirror' (1 = horizontal, 2 = vertical), 'gaussian_blur' (sigma),
    'scaling' (down- or up-scale by the factor, then back to the original size), 'crop' (fraction kept,
    centred, then resized back) and 'jpeg' (quality).
    """
    if kind not in _PERTURBATIONS:
        raise AugmentError(f"unknown perturbation {kind!r}; valid kinds: {', '.join(PERTURBATION_KINDS)}")
    image = _as_rgb_uint8(image)
    return _PERTURBATIONS[kind](image, _finite(strength, f"{kind} strength"))


# --------------------------------------------------------------------------------------------------
# Throughput (for the benchmark suite)
# --------------------------------------------------------------------------------------------------

def _face_like_images(count: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth random colour fields with mild texture: compress and blur like photographs, unlike white noise."""
    rng = np.random.default_rng(seed)
    images = []
    coarse = max(2, size // 16)
    for _ in range(count):
        low = rng.uniform(0, 255, (coarse, coarse, 3)).astype(np.uint8)
        smooth = np.asarray(Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC), np.float32)
        texture = rng.normal(0.0, 6.0, (size, size, 3)).astype(np.float32)
        images.append(np.clip(smooth + texture, 0, 255).astype(np.uint8))
    return images


def measure_throughput(size: int = 160, n: int = 200, config: Any = None, seed: int = 0) -> dict:
    """Images per second of `Augmenter(config)` (the default config when None) on one core at `size` px,
    plus the milliseconds each op costs when forced on (prob 1) alone."""
    images = _face_like_images(min(n, 16), size, seed)
    augmenter = Augmenter(config)
    rng = np.random.default_rng(seed)
    augmenter(images[0], rng)  # warm-up (PIL plugin imports)
    start = time.perf_counter()
    for index in range(n):
        augmenter(images[index % len(images)], rng)
    seconds = time.perf_counter() - start

    per_op_ms = {}
    repeats = max(10, n // 10)
    for name in _OPS_WITH_PROB:
        single = identity_augment_config()
        single[name].prob = 1.0
        op_augmenter = Augmenter(single)
        op_start = time.perf_counter()
        for index in range(repeats):
            op_augmenter(images[index % len(images)], rng)
        per_op_ms[name] = 1000.0 * (time.perf_counter() - op_start) / repeats
    return {
        "size": size,
        "n": n,
        "seconds": seconds,
        "images_per_s": n / seconds,
        "per_op_ms": per_op_ms,
    }
