"""Face alignment by five landmarks: one canonical template, a similarity transform, a bilinear warp.

The template (the only one in jaxface; use it for every aligned crop, training and inference alike)
is the ArcFace / insightface 112x112 five-point template, `ARCFACE_112`: left eye, right eye, nose tip,
left and right mouth corner (left = the left of the image), the order of MTCNN's landmarks
(jaxface.models.mtcnn.LANDMARK_NAMES) and of augment's landmarks. `template(size, margin)` scales it to
a `size` x `size` crop and shrinks it towards the crop centre so that `margin` of the ArcFace crop's
side is kept as context on every side:

    margin 0      exactly the ArcFace crop (eyebrows to chin; ears and hair cut off)
    margin 0.125  the default: the ArcFace crop widened by 1/8 of its side on each side (1.25x wide)
    margin 0.5    twice as wide: the whole head and some background

Coordinates are pixel indices (the centre of the top-left pixel is (0, 0)), as MTCNN's landmarks are;
scaling keeps pixel centres consistent, p -> (p + 0.5) * size / 112 - 0.5.

`similarity_transform` is Umeyama's least-squares similarity (rotation, one scale, translation; never a
reflection). `align_face` warps with bilinear interpolation in numpy (the same result for uint8 and
float images, any number of channels); outside the image is 0 (`fill="zero"`) or the nearest edge
pixel (`fill="edge"`). uint8 images come back uint8 (rounded), float images as float32.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "AlignmentError",
    "ARCFACE_112",
    "DEFAULT_MARGIN",
    "template",
    "similarity_transform",
    "alignment_matrix",
    "transform_points",
    "warp_affine",
    "align_face",
]

# insightface's arcface_dst, (x, y) in a 112x112 crop.
ARCFACE_112 = np.array([
    [38.2946, 51.6963],  # left eye
    [73.5318, 51.5014],  # right eye
    [56.0252, 71.7366],  # nose tip
    [41.5493, 92.3655],  # left mouth corner
    [70.7299, 92.2041],  # right mouth corner
], np.float64)
TEMPLATE_SIZE = 112
DEFAULT_MARGIN = 0.125
FILLS = ("zero", "edge")
_LANDMARKS = "left eye, right eye, nose, left mouth corner, right mouth corner"


class AlignmentError(ValueError):
    """Landmarks, an image, a size or an option that cannot be aligned (wrong shape, not finite, ...)."""


def _check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 2:
        raise AlignmentError(f"size must be an integer number of pixels >= 2, got {size!r}")
    return int(size)


def _check_margin(margin) -> float:
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not (-0.25 < margin <= 4.0):
        raise AlignmentError(f"margin must be a fraction of the ArcFace crop side in (-0.25, 4] "
                             f"(0 = the ArcFace crop, {DEFAULT_MARGIN} = the default), got {margin!r}")
    return float(margin)


def template(size: int = TEMPLATE_SIZE, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """The (5, 2) target points, (x, y) pixel indices in a size x size crop."""
    size, margin = _check_size(size), _check_margin(margin)
    points = (ARCFACE_112 + 0.5) * (size / TEMPLATE_SIZE) - 0.5
    centre = (size - 1) / 2.0
    return centre + (points - centre) / (1.0 + 2.0 * margin)


def _check_points(points, what: str, count: int | None = None) -> np.ndarray:
    try:
        array = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        array = None
    if array is None or array.ndim != 2 or array.shape[1] != 2 or (count is not None and array.shape[0] != count):
        got = f"shape {array.shape}" if array is not None else f"a ragged or non-numeric {type(points).__name__}"
        rows = f"({count}, 2)" if count is not None else "(N, 2)"
        order = f" in the order {_LANDMARKS}" if count == 5 else ""
        raise AlignmentError(f"{what} must be a {rows} array of (x, y) points{order}; got {got}")
    if not np.isfinite(array).all():
        raise AlignmentError(f"{what} must be finite; got {array.tolist()}")
    return array


def similarity_transform(src_points, dst_points) -> np.ndarray:
    """The 2x3 matrix [s R | t] minimising sum |s R src + t - dst|^2 (Umeyama 1991), R a rotation.

    Apply it as dst = M[:, :2] @ (x, y) + M[:, 2] (see transform_points).
    """
    src = _check_points(src_points, "src_points")
    dst = _check_points(dst_points, "dst_points")
    if len(src) != len(dst) or len(src) < 2:
        raise AlignmentError(f"src_points and dst_points must hold the same number (>= 2) of points, "
                             f"got {len(src)} and {len(dst)}")
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = (src_c ** 2).sum() / len(src)
    if not src_var > 1e-12:
        raise AlignmentError(f"src_points all coincide ({src[0].tolist()}): no transform is defined")
    u, singular, vt = np.linalg.svd(dst_c.T @ src_c / len(src))
    reflection = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        reflection[1, 1] = -1.0  # the closest proper rotation
    rotation = u @ reflection @ vt
    scale = float((singular * np.diag(reflection)).sum() / src_var)
    translation = dst_mean - scale * rotation @ src_mean
    return np.concatenate([scale * rotation, translation[:, None]], axis=1)


def transform_points(matrix, points) -> np.ndarray:
    """(N, 2) points mapped by a 2x3 affine matrix."""
    matrix = np.asarray(matrix, np.float64)
    points = _check_points(points, "points")
    return points @ matrix[:, :2].T + matrix[:, 2]


def alignment_matrix(landmarks, size: int = TEMPLATE_SIZE, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """The 2x3 similarity taking image coordinates to the aligned crop's (landmarks -> template)."""
    return similarity_transform(_check_points(landmarks, "landmarks", 5), template(size, margin))


def _check_image(image) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim not in (2, 3) or min(array.shape[:2], default=0) < 1 or not (
            array.dtype == np.uint8 or np.issubdtype(array.dtype, np.floating)):
        raise AlignmentError(f"image must be an (H, W) or (H, W, C) uint8 or float array, got "
                             f"{array.dtype} of shape {array.shape}")
    return array


def warp_affine(image, matrix, size: int, fill: str = "zero") -> np.ndarray:
    """The size x size image whose pixel (x, y) is `image` bilinearly sampled at matrix^-1 (x, y)."""
    array = _check_image(image)
    size = _check_size(size)
    if fill not in FILLS:
        raise AlignmentError(f"fill must be one of {', '.join(FILLS)}, got {fill!r}")
    matrix = np.asarray(matrix, np.float64)
    if matrix.shape != (2, 3) or not np.isfinite(matrix).all() or abs(np.linalg.det(matrix[:, :2])) < 1e-12:
        raise AlignmentError(f"matrix must be an invertible, finite 2x3 affine matrix, got {matrix.tolist()}")
    inverse = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    sx = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
    sy = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
    h, w = array.shape[:2]
    x0, y0 = np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64)
    fx, fy = (sx - x0).astype(np.float32), (sy - y0).astype(np.float32)
    pixels = array.astype(np.float32, copy=False)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]

    def tap(yi, xi):
        inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
        value = pixels[np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)]
        return value if fill == "edge" else np.where(inside[..., None], value, np.float32(0.0))

    wx, wy = fx[..., None], fy[..., None]
    top = tap(y0, x0) * (1 - wx) + tap(y0, x0 + 1) * wx
    bottom = tap(y0 + 1, x0) * (1 - wx) + tap(y0 + 1, x0 + 1) * wx
    out = top * (1 - wy) + bottom * wy
    if array.ndim == 2:
        out = out[..., 0]
    if array.dtype == np.uint8:
        return np.clip(np.round(out), 0, 255).astype(np.uint8)
    return out.astype(np.float32)


def align_face(image, landmarks, size: int = TEMPLATE_SIZE, *, margin: float = DEFAULT_MARGIN,
               fill: str = "zero") -> np.ndarray:
    """The (size, size[, C]) crop of `image` with its five `landmarks` ((5, 2) x, y) moved onto
    template(size, margin) by the least-squares similarity. Same dtype family as the image."""
    return warp_affine(image, alignment_matrix(landmarks, size, margin), size, fill)
