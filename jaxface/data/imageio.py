"""Image files at the edges of the library: robust decoding to uint8 RGB, PNG/JPEG encoding, crop+resize.

`decode_image` turns whatever a dataset folder holds into a uint8 (H, W, 3) RGB array, or raises one
`ImageDecodeError` naming the file and the reason. Conversions, and why:

- EXIF orientation is applied first (`ImageOps.exif_transpose`), so phone photos come out upright.
- Grayscale (`1`, `L`) is replicated to three channels.
- 16-bit grayscale (`I;16*`, and `I`, which Pillow uses for 16-bit data in some formats) is scaled
  by 255/65535 with rounding, so full scale maps to 255 instead of saturating at the low byte.
  Pillow reads 16-bit RGB(A) PNG/TIFF samples into 8 bits itself (the high byte).
- 32-bit float (`F`) is taken as [0, 1] when all values lie there, otherwise as [0, 255]; clipped.
- Transparency (`RGBA`, `LA`, `PA`, `P` or `L`/`RGB` with a `transparency` key) is composited over
  white: transparent pixels of a cut-out face become background, not the arbitrary colour stored
  under alpha 0 (often black), which would make a dark halo that classifiers latch on to.
- CMYK (including Adobe's inverted CMYK JPEGs, which Pillow undoes) goes through Pillow's CMYK->RGB
  conversion; embedded ICC profiles are not applied.
- Multi-frame files (GIF, multi-page TIFF) give their first frame.

Truncated files fail: the pixels are loaded eagerly and `ImageFile.LOAD_TRUNCATED_IMAGES` is forced
off for that load, so a half-written JPEG is an error rather than a grey-bottomed image. Images with
more pixels than `max_pixels` (Pillow's decompression-bomb limit by default) are refused before
decoding.
"""
from __future__ import annotations

import io
import os
import pathlib
import threading
from typing import Sequence, Union

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

ImageData = Union[bytes, bytearray, memoryview, str, os.PathLike]

# Resampling filter for resizes: bicubic with Pillow's support scaling (antialiased when shrinking).
RESAMPLE = Image.Resampling.BICUBIC

_TRUNCATION_LOCK = threading.Lock()


class ImageDecodeError(ValueError):
    """A file that is not a decodable image (missing, empty, truncated, not an image, too large)."""

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = str(reason)
        super().__init__(f"cannot decode image {self.path}: {self.reason}")

    def __reduce__(self):  # keeps (path, reason) when raised inside a grain worker process
        return (type(self), (self.path, self.reason))


def _read_bytes(data: ImageData) -> tuple[bytes, str]:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data), "<bytes>"
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        try:
            with open(path, "rb") as f:
                return f.read(), path
        except OSError as err:
            raise ImageDecodeError(path, f"cannot read file ({err.strerror or err})") from None
    raise TypeError(f"decode_image takes bytes or a path, not {type(data).__name__}")


def _load_strict(image: Image.Image) -> None:
    """Decodes all pixels now, refusing truncated data even if someone enabled LOAD_TRUNCATED_IMAGES."""
    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        image.load()
        return
    with _TRUNCATION_LOCK:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            image.load()
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = True


def _composite_over_white(rgba: np.ndarray) -> np.ndarray:
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32)
    out = rgb * alpha + 255.0 * (1.0 - alpha)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return np.asarray(image, np.uint8)
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image).astype(np.float64)
        gray = np.round(np.clip(values, 0, 65535) * (255.0 / 65535.0)).astype(np.uint8)
        return _gray_to_rgb(gray)
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, np.float64), nan=0.0)
        scale = 255.0 if values.size and values.min() >= 0.0 and values.max() <= 1.0 else 1.0
        return _gray_to_rgb(np.round(np.clip(values * scale, 0, 255)).astype(np.uint8))
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        return _composite_over_white(np.asarray(image.convert("RGBA"), np.uint8))
    if mode in ("1", "L"):
        return _gray_to_rgb(np.asarray(image.convert("L"), np.uint8))
    return np.asarray(image.convert("RGB"), np.uint8)  # P, CMYK, YCbCr, RGBX, ...


def decode_image(data: ImageData, *, max_pixels: int | None = None) -> np.ndarray:
    """Bytes or a path -> uint8 (H, W, 3) RGB; raises ImageDecodeError (see the module docstring).

    max_pixels: refuse larger images (decompression bombs); None uses Pillow's MAX_IMAGE_PIXELS.
    """
    raw, name = _read_bytes(data)
    if not raw:
        raise ImageDecodeError(name, "the file is empty")
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else int(max_pixels)
    try:
        image = Image.open(io.BytesIO(raw))
    except Image.DecompressionBombError as err:
        raise ImageDecodeError(name, f"refused as a possible decompression bomb ({err})") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(name, "not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageDecodeError(name, f"corrupt image header ({err})") from None
    width, height = image.size
    if limit and width * height > limit:
        raise ImageDecodeError(
            name,
            f"{width}x{height} = {width * height} pixels exceeds the limit of {limit} "
            "(refused as a possible decompression bomb; raise max_pixels if the file is genuine)",
        )
    try:
        _load_strict(image)
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, MemoryError) as err:
        raise ImageDecodeError(name, f"truncated or corrupt image data ({err})") from None
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 -- a corrupt EXIF block should not cost a readable image
        pass
    try:
        rgb = _to_rgb_array(image)
    except (OSError, ValueError) as err:
        raise ImageDecodeError(name, f"unsupported image mode {image.mode!r} ({err})") from None
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or min(rgb.shape[:2]) < 1:
        raise ImageDecodeError(name, f"decoded to an unexpected shape {rgb.shape}")
    return np.ascontiguousarray(rgb)


# -------------------------------------------------------------------------------------- encoding
def to_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 passes through; floats are taken as [0, 1], clipped and rounded."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    if np.issubdtype(image.dtype, np.floating) or image.dtype == np.bool_:
        return np.round(np.clip(image.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    raise TypeError(f"expected a uint8 or float [0, 1] image, got dtype {image.dtype}")


def _to_pil(image: np.ndarray) -> Image.Image:
    image = to_uint8(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        return Image.fromarray(image)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        return Image.fromarray(np.ascontiguousarray(image))
    raise ValueError(f"expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image, got {image.shape}")


def save_png(path: str | os.PathLike, image: np.ndarray) -> pathlib.Path:
    """Writes a uint8 or float [0, 1] HWC (or HW) image as PNG, creating parent folders."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _to_pil(image).save(path, format="PNG")
    return path


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """uint8 (or float [0, 1]) HWC RGB -> JPEG bytes at `quality` (1..100, 4:2:0 as cameras do)."""
    quality = int(quality)
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    buffer = io.BytesIO()
    _to_pil(image).convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


# -------------------------------------------------------------------------------- crop and resize
def center_square_box(height: int, width: int) -> np.ndarray:
    """The largest centred square, as float32 (x0, y0, x1, y1)."""
    side = min(height, width)
    x0, y0 = (width - side) / 2.0, (height - side) / 2.0
    return np.array([x0, y0, x0 + side, y0 + side], np.float32)


def square_box(box: Sequence[float]) -> np.ndarray:
    """Grows a box to the square of its longer side around the same centre (keeps aspect on resize)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    cx, cy, half = (x0 + x1) / 2.0, (y0 + y1) / 2.0, max(x1 - x0, y1 - y0) / 2.0
    return np.array([cx - half, cy - half, cx + half, cy + half], np.float32)


def center_crop_resize(image: np.ndarray, size: int, crop_box=None) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (size, size, 3).

    With `crop_box` (x0, y0, x1, y1) in pixel coordinates, exactly that region is resampled to
    size x size (a non-square box is stretched: pass `square_box(box)` to keep the aspect ratio);
    parts of the box outside the image are black. Without a box (or with NaNs in it) the centre
    square is used. The exact box -> [0, size] mapping is what keypoint transforms rely on.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    height, width = image.shape[:2]
    if crop_box is None or not np.all(np.isfinite(np.asarray(crop_box, np.float64))):
        box = center_square_box(height, width).astype(np.float64)
    else:
        box = np.asarray(crop_box, np.float64).reshape(-1)
        if box.shape != (4,) or box[2] <= box[0] or box[3] <= box[1]:
            raise ValueError(f"crop_box must be (x0, y0, x1, y1) with x1 > x0 and y1 > y0, got {box}")
    if (box[0] < 0 or box[1] < 0 or box[2] > width or box[3] > height):
        # Pad with black so the box stays exactly the box (subpixel accurate) instead of clipping it.
        left = int(np.ceil(max(0.0, -box[0])))
        top = int(np.ceil(max(0.0, -box[1])))
        right = int(np.ceil(max(0.0, box[2] - width)))
        bottom = int(np.ceil(max(0.0, box[3] - height)))
        image = np.pad(image, ((top, bottom), (left, right), (0, 0)))
        box = box + np.array([left, top, left, top], np.float64)
    pil = Image.fromarray(np.ascontiguousarray(image))
    out = pil.resize((size, size), RESAMPLE, box=tuple(float(v) for v in box))
    return np.asarray(out, np.uint8)


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (height, width, 3) with the same filter, no cropping."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    if image.shape[:2] == (height, width):
        return image
    pil = Image.fromarray(np.ascontiguousarray(image))
    return np.asarray(pil.resize((int(width), int(height)), RESAMPLE), np.uint8)
