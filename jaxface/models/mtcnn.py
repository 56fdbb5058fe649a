"""MTCNN face detection with five landmarks (Zhang et al. 2016), in Flax NNX.

A port of the `mtcnn` package, version 1.0.0 (MIT licence, TensorFlow/Keras), with its weights. The
weights ship inside that package's wheel, `mtcnn/assets/weights/{pnet,rnet,onet}.lz4` (joblib lists of
numpy arrays in Keras' `get_weights()` order, conv kernels HWIO). They are read from the installed
package's folder, found with `importlib.util.find_spec` so that the package itself, whose `__init__`
imports TensorFlow, is never imported. Nothing is downloaded.

The cascade, as the reference runs it (its defaults are this module's defaults):

  normalise  pixels x in 0..255 -> (x - 127.5) / 128, on the whole image, before anything else.
             No transposition: the Keras port works on (H, W) images like everything here; the flatten
             before the dense layers of R-Net and O-Net runs over (W, H, C) (a Keras Permute((2, 1, 3)),
             kept from the Caffe original), which the modules below reproduce.
  pyramid    scales 0.6 * 0.709^k (0.6 = 12 / min_face_size), k < round(log(min_side / 12) / -log(0.709) - 1);
             each level is the normalised image area-resized (TensorFlow's AREA kernel) to
             int(H * scale) x int(W * scale) (truncated).
  P-Net      fully convolutional; a cell (y, x) of its output with face probability > thresholds[0] gives
             the box (2x + 1, 2y + 1, 2x + 12, 2y + 12) + 11 * regression, divided by the scale.
             NMS (IoU, 0.5) per level in the order of the scores, then NMS (IoU, 0.7) over all levels,
             then each box is made square around its centre (side = the longer side).
  R-Net      24x24 bilinear crops (TensorFlow's crop_and_resize: box corners scaled by (W - 1) / W and
             (H - 1) / H, outside the image = 0 after normalisation); score > thresholds[1]; box += regression * (w, h)
             with w = x1 - x0 + 1; NMS (IoU, 0.7); square.
  O-Net      48x48 crops of those squares; landmarks = (w, h) * output + (x0, y0) - 1 of the square;
             score > thresholds[2]; box += regression; NMS (intersection over the smaller box, 0.7).
  output     boxes clipped to [0, W - 1] x [0, H - 1]; landmarks are not clipped.

The reference's NMS is not the greedy one: a box is dropped when ANY higher-scored box overlaps it by
more than the threshold, even one that was itself dropped. That is reproduced, as is its score sort
(numpy's argsort, reversed), so that ties fall the same way.

Speed: P-Net runs once per pyramid level, jitted; each level is zero-padded up to a size bucket
(`bucket_size`: at least 64 px, multiples of 32 px below 512, then 8 steps per octave), so a folder
of differently sized photos reuses a handful of compiled programs. The padding is masked exactly: the one pooling
layer sees the reference's -inf 'SAME' padding at the true edge, and output cells that fall in the
padding are ignored. R-Net and O-Net run on batches padded to 16, 32, 64, ... 256 candidates (larger
sets go in chunks of 256). Pyramid resizing and crops run on the host in numpy, with the reference
kernels' float32 arithmetic. Compiled programs are shared by all FaceDetector instances.

Agreement with the reference (tests/test_mtcnn.py, and 60 more photos of ../shared/data/realfake checked
once): the same faces, box IoU >= 1 - 1e-5, landmarks within 1e-3 px, scores within 1e-6. Float32
rounding in the convolutions is the only difference, so a candidate right at a threshold could still
fall the other way.

Notes:
  - The O-Net threshold defaults to the reference's 0.8 (the 0.1.x releases of `mtcnn` used 0.7).
  - Differences, on purpose: detect_batch gives, for every image, exactly what detect gives (the
    reference, given a list, pads all images to one canvas and runs the pyramid of the image with the
    most levels on all of them). Boxes come as floats (x0, y0, x1, y1); the reference's JSON output
    rounds them, and its landmarks, to integers (its numpy output is what is matched).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import pathlib
from typing import Sequence

import jax
import jax.numpy as jnp
import joblib
import numpy as np
from flax import nnx

from jaxface.models import layers as L

__all__ = [
    "FaceDetectorError",
    "MTCNNWeightsError",
    "Face",
    "FaceDetector",
    "PNet",
    "RNet",
    "ONet",
    "LANDMARK_NAMES",
    "weights_folder",
    "load_weights",
    "pyramid_scales",
    "bucket_size",
    "area_resize",
    "crop_and_resize",
]

# The five points, in the order of Face.landmarks (the reference's keypoint order; "left" is the left
# of the image, i.e. the subject's right eye).
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
WEIGHT_FILES = {"pnet": "pnet.lz4", "rnet": "rnet.lz4", "onet": "onet.lz4"}

PIXEL_CENTER = 127.5
PIXEL_SCALE = 1.0 / 128.0  # the reference's "(x - 127.5) / 128" (0.0078125)
PNET_STRIDE = 2
PNET_CELL = 12
RNET_SIZE = 24
ONET_SIZE = 48
BATCH_BUCKETS = (16, 32, 64, 128, 256)  # candidate batches for R-Net and O-Net; above 256, chunks


class FaceDetectorError(ValueError):
    """A face-detector input or option a user can get wrong (image shape or range, thresholds, ...)."""


class MTCNNWeightsError(FaceDetectorError):
    """The MTCNN weights cannot be found or do not fit the networks."""


# ---------------------------------------------------------------------------------------------------
# Weights.

def weights_folder() -> pathlib.Path:
    """The folder holding pnet.lz4, rnet.lz4 and onet.lz4 inside the installed `mtcnn` package.

    find_spec of a top-level name locates the package without importing it (its __init__ would import
    TensorFlow, which jaxface does not need).
    """
    spec = importlib.util.find_spec("mtcnn")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    fix = "install it with `pip install mtcnn` (TensorFlow is not needed)"
    if not locations:
        raise MTCNNWeightsError(f"the face-detector weights ship inside the `mtcnn` package, which is not "
                                f"installed; {fix}")
    for location in locations:
        folder = pathlib.Path(location) / "assets" / "weights"
        if all((folder / name).is_file() for name in WEIGHT_FILES.values()):
            return folder
    raise MTCNNWeightsError(f"the installed `mtcnn` package ({locations[0]}) has no assets/weights/"
                            f"{{pnet,rnet,onet}}.lz4; reinstall it with `pip install --force-reinstall mtcnn` "
                            f"(TensorFlow is not needed)")


def load_weights(folder: str | pathlib.Path | None = None) -> dict[str, list[np.ndarray]]:
    """{'pnet' | 'rnet' | 'onet': the arrays of that network in the reference's order}."""
    folder = weights_folder() if folder is None else pathlib.Path(folder)
    out = {}
    for net, name in WEIGHT_FILES.items():
        path = folder / name
        try:
            arrays = joblib.load(path)
        except Exception as err:  # a missing, truncated or foreign file: say which
            raise MTCNNWeightsError(f"cannot read MTCNN weights {path}: {err}") from None
        out[net] = [np.asarray(a, np.float32) for a in arrays]
    return out


# ---------------------------------------------------------------------------------------------------
# The three networks (NHWC float32, input already normalised to about [-1, 1]).

# Zero initialisers: the pretrained arrays replace them, and nothing random gets compiled. Full float32
# precision: on accelerators that would otherwise use TF32/bf16 passes, scores near a threshold could flip.
PRECISION = jax.lax.Precision.HIGHEST


def _conv(in_channels: int, out_channels: int, kernel_size: int, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(in_channels, out_channels, (kernel_size, kernel_size), padding="VALID", precision=PRECISION,
                    kernel_init=L.zeros_init, bias_init=L.zeros_init, rngs=rngs)


def _dense(in_features: int, out_features: int, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(in_features, out_features, precision=PRECISION, kernel_init=L.zeros_init,
                      bias_init=L.zeros_init, rngs=rngs)


class PReLU(nnx.Module):
    """Keras' PReLU, max(x, 0) + alpha * min(x, 0), with one alpha per channel (last axis)."""

    def __init__(self, channels: int):
        self.alpha = nnx.Param(L.host_array(np.zeros((channels,))))

    def __call__(self, x):
        return jax.nn.relu(x) - self.alpha[...] * jax.nn.relu(-x)


def _max_pool(x, size: int, padding: str):
    # Keras MaxPooling2D, stride 2; 'SAME' pads the bottom/right with -inf as TensorFlow does.
    return nnx.max_pool(x, (size, size), strides=(2, 2), padding=padding)


def _flatten_wh(x):
    # Keras Permute((2, 1, 3)) then Flatten: the dense layers read (W, H, C) order.
    return jnp.transpose(x, (0, 2, 1, 3)).reshape(x.shape[0], -1)


class _Pretrained(nnx.Module):
    # Parameter paths in the order of the reference's weight list.
    WEIGHT_ORDER: tuple[str, ...] = ()

    def load_arrays(self, arrays: Sequence[np.ndarray]) -> None:
        """Sets every parameter from the reference's list (PReLU alphas (1, 1, C) become (C,))."""
        name = type(self).__name__
        if len(arrays) != len(self.WEIGHT_ORDER):
            raise MTCNNWeightsError(f"{name}: the weight file holds {len(arrays)} arrays, the network has "
                                    f"{len(self.WEIGHT_ORDER)} parameters ({', '.join(self.WEIGHT_ORDER)})")
        for path, array in zip(self.WEIGHT_ORDER, arrays):
            layer, attribute = path.split(".")
            param = getattr(getattr(self, layer), attribute)
            array = np.asarray(array, np.float32)
            if attribute == "alpha":
                array = array.reshape(-1)
            if array.shape != param.shape:
                raise MTCNNWeightsError(f"{name}.{path}: the weight file has shape {array.shape}, the network "
                                        f"expects {tuple(param.shape)}")
            param.value = L.host_array(array)


class PNet(_Pretrained):
    """Proposal network: fully convolutional; 12x12 windows at stride 2 -> box regression, face probability."""

    WEIGHT_ORDER = ("conv1.kernel", "conv1.bias", "prelu1.alpha", "conv2.kernel", "conv2.bias", "prelu2.alpha",
                    "conv3.kernel", "conv3.bias", "prelu3.alpha", "conv4_1.kernel", "conv4_1.bias",
                    "conv4_2.kernel", "conv4_2.bias")

    def __init__(self, *, rngs: nnx.Rngs | None = None):
        rngs = rngs or nnx.Rngs(0)
        self.conv1, self.prelu1 = _conv(3, 10, 3, rngs), PReLU(10)
        self.conv2, self.prelu2 = _conv(10, 16, 3, rngs), PReLU(16)
        self.conv3, self.prelu3 = _conv(16, 32, 3, rngs), PReLU(32)
        self.conv4_1 = _conv(32, 4, 1, rngs)  # box regression (dx0, dy0, dx1, dy1)
        self.conv4_2 = _conv(32, 2, 1, rngs)  # (not face, face) logits

    def __call__(self, x, valid_size=None):
        """x (N, H, W, 3) -> (regression (N, h, w, 4), face probability (N, h, w)).

        `valid_size` (2,) int, (height, width) of the image in the top-left of a zero-padded x: the
        pooling then sees the reference's 'SAME' padding at the true edge, so every output cell that
        lies inside the true image equals the reference's (the others are meaningless).
        """
        x = self.prelu1(self.conv1(x))
        if valid_size is not None:
            rows = jnp.arange(x.shape[1])[:, None] < valid_size[0] - 2
            cols = jnp.arange(x.shape[2])[None, :] < valid_size[1] - 2
            x = jnp.where((rows & cols)[None, :, :, None], x, -jnp.inf)
        x = _max_pool(x, 2, "SAME")
        if valid_size is not None:
            x = jnp.where(jnp.isfinite(x), x, 0.0)  # the all-padding cells, kept out of the convolutions
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        return self.conv4_1(x), jax.nn.softmax(self.conv4_2(x), axis=-1)[..., 1]


class RNet(_Pretrained):
    """Refinement network: 24x24 crops -> box regression (N, 4), face probability (N,)."""

    WEIGHT_ORDER = ("conv1.kernel", "conv1.bias", "prelu1.alpha", "conv2.kernel", "conv2.bias", "prelu2.alpha",
                    "conv3.kernel", "conv3.bias", "prelu3.alpha", "fc4.kernel", "fc4.bias", "prelu4.alpha",
                    "fc5_1.kernel", "fc5_1.bias", "fc5_2.kernel", "fc5_2.bias")

    def __init__(self, *, rngs: nnx.Rngs | None = None):
        rngs = rngs or nnx.Rngs(0)
        self.conv1, self.prelu1 = _conv(3, 28, 3, rngs), PReLU(28)
        self.conv2, self.prelu2 = _conv(28, 48, 3, rngs), PReLU(48)
        self.conv3, self.prelu3 = _conv(48, 64, 2, rngs), PReLU(64)
        self.fc4, self.prelu4 = _dense(3 * 3 * 64, 128, rngs), PReLU(128)
        self.fc5_1 = _dense(128, 4, rngs)
        self.fc5_2 = _dense(128, 2, rngs)

    def __call__(self, x):
        x = _max_pool(self.prelu1(self.conv1(x)), 3, "SAME")
        x = _max_pool(self.prelu2(self.conv2(x)), 3, "VALID")
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.fc4(_flatten_wh(x)))
        return self.fc5_1(x), jax.nn.softmax(self.fc5_2(x), axis=-1)[:, 1]


class ONet(_Pretrained):
    """Output network: 48x48 crops -> box regression (N, 4), landmarks (N, 10: x0..x4, y0..y4), probability."""

    WEIGHT_ORDER = ("conv1.kernel", "conv1.bias", "prelu1.alpha", "conv2.kernel", "conv2.bias", "prelu2.alpha",
                    "conv3.kernel", "conv3.bias", "prelu3.alpha", "conv4.kernel", "conv4.bias", "prelu4.alpha",
                    "fc5.kernel", "fc5.bias", "prelu5.alpha", "fc6_1.kernel", "fc6_1.bias", "fc6_2.kernel",
                    "fc6_2.bias", "fc6_3.kernel", "fc6_3.bias")

    def __init__(self, *, rngs: nnx.Rngs | None = None):
        rngs = rngs or nnx.Rngs(0)
        self.conv1, self.prelu1 = _conv(3, 32, 3, rngs), PReLU(32)
        self.conv2, self.prelu2 = _conv(32, 64, 3, rngs), PReLU(64)
        self.conv3, self.prelu3 = _conv(64, 64, 3, rngs), PReLU(64)
        self.conv4, self.prelu4 = _conv(64, 128, 2, rngs), PReLU(128)
        self.fc5, self.prelu5 = _dense(3 * 3 * 128, 256, rngs), PReLU(256)
        self.fc6_1 = _dense(256, 4, rngs)
        self.fc6_2 = _dense(256, 10, rngs)
        self.fc6_3 = _dense(256, 2, rngs)

    def __call__(self, x):
        x = _max_pool(self.prelu1(self.conv1(x)), 3, "SAME")
        x = _max_pool(self.prelu2(self.conv2(x)), 3, "VALID")
        x = _max_pool(self.prelu3(self.conv3(x)), 2, "SAME")
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.fc5(_flatten_wh(x)))
        return self.fc6_1(x), self.fc6_2(x), jax.nn.softmax(self.fc6_3(x), axis=-1)[:, 1]


@functools.lru_cache(maxsize=None)
def _compiled(graphdef):
    """The jitted forward pass of a network structure, shared by every FaceDetector (one compiled program
    per input shape). Looked up once per detector: hashing a graphdef on every call cost ~0.5 ms."""
    def apply(state, *inputs):
        return nnx.merge(graphdef, state)(*inputs)

    return jax.jit(apply)


# ---------------------------------------------------------------------------------------------------
# Host-side geometry: the reference's formulas, vectorised.

def pyramid_scales(height: int, width: int, min_face_size: float = 20, scale_factor: float = 0.709,
                   min_size: int = PNET_CELL) -> np.ndarray:
    """The reference's scales: (12 / min_face_size) * scale_factor^k for k < round(log(min_side/12)/-log(f) - 1)."""
    count = round(-(np.log(min(height, width) / min_size) / np.log(scale_factor) + 1))
    return (min_size / min_face_size) * scale_factor ** np.arange(max(int(count), 0))


def bucket_size(n: int) -> int:
    """The padded size of a pyramid level's side, so that nearby image sizes share compiled programs:
    at least 64 px (the small levels cost next to nothing, and all of them share one program), a multiple
    of 32 px below 512, then 8 steps per octave (at most 12.5 % padding on the large, costly levels)."""
    step = max(32, 2 ** (max(int(n), 1).bit_length() - 4))
    return max(64, -(-int(n) // step) * step)


def _area_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """TensorFlow's ResizeArea along one axis: (out, k) source indices and float32 weights (in pixels)."""
    scale = np.float32(in_size) / np.float32(out_size)
    lo = np.arange(out_size, dtype=np.float32) * scale
    hi = np.arange(1, out_size + 1, dtype=np.float32) * scale
    start = np.floor(lo).astype(np.int64)
    end = np.ceil(hi).astype(np.int64)
    span = int((end - start).max())
    index = start[:, None] + np.arange(span)[None, :]
    i = index.astype(np.float32)
    weight = np.where(i < lo[:, None],
                      np.where(i + 1 > hi[:, None], scale, i + 1 - lo[:, None]),
                      np.where(i + 1 > hi[:, None], hi[:, None] - i, np.float32(1.0))).astype(np.float32)
    weight = np.where(index < end[:, None], weight, np.float32(0.0))
    return np.clip(index, 0, in_size - 1), weight


def area_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, C) float32 -> (height, width, C), TensorFlow's AREA resize (downscaling average)."""
    rows, row_weights = _area_weights(image.shape[0], height)
    cols, col_weights = _area_weights(image.shape[1], width)
    # Rows then columns, a few shifted weighted slices each: every output reads only the input pixels
    # its box covers, so big photos cost O(pixels) time and memory.
    tmp = np.zeros((height,) + image.shape[1:], np.float32)
    for k in range(rows.shape[1]):
        tmp += row_weights[:, k, None, None] * image[rows[:, k]]
    out = np.zeros((height, width) + image.shape[2:], np.float32)
    for k in range(cols.shape[1]):
        out += col_weights[None, :, k, None] * tmp[:, cols[:, k]]
    scale = np.float32(1.0) / (np.float32(image.shape[0]) / np.float32(height)
                               * (np.float32(image.shape[1]) / np.float32(width)))
    return (out * scale).astype(np.float32)


def crop_and_resize(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """TensorFlow's crop_and_resize (bilinear, extrapolation 0) of (N, 4) pixel boxes (x0, y0, x1, y1).

    As in the reference the boxes are passed as fractions of the image size, so a box corner x maps to
    x * (W - 1) / W in the image: the reference's half-pixel quirk, kept on purpose.
    """
    h, w = image.shape[:2]
    b = np.asarray(boxes, np.float64)
    y0, x0 = (b[:, 1] / h).astype(np.float32), (b[:, 0] / w).astype(np.float32)
    y1, x1 = (b[:, 3] / h).astype(np.float32), (b[:, 2] / w).astype(np.float32)
    steps = np.arange(size, dtype=np.float32)
    hs, ws = np.float32(h - 1), np.float32(w - 1)
    in_y = (y0 * hs)[:, None] + steps[None, :] * ((y1 - y0) * hs / np.float32(size - 1))[:, None]
    in_x = (x0 * ws)[:, None] + steps[None, :] * ((x1 - x0) * ws / np.float32(size - 1))[:, None]
    valid = ((in_y >= 0) & (in_y <= hs))[:, :, None] & ((in_x >= 0) & (in_x <= ws))[:, None, :]
    top, left = np.floor(in_y), np.floor(in_x)
    y_lerp, x_lerp = (in_y - top)[:, :, None, None], (in_x - left)[:, None, :, None]
    top, bottom = np.clip(top, 0, h - 1).astype(np.int64), np.clip(np.ceil(in_y), 0, h - 1).astype(np.int64)
    left, right = np.clip(left, 0, w - 1).astype(np.int64), np.clip(np.ceil(in_x), 0, w - 1).astype(np.int64)

    def at(ys, xs):
        return image[ys[:, :, None], xs[:, None, :]]

    upper = at(top, left) + (at(top, right) - at(top, left)) * x_lerp
    lower = at(bottom, left) + (at(bottom, right) - at(bottom, left)) * x_lerp
    out = upper + (lower - upper) * y_lerp
    return np.where(valid[..., None], out, np.float32(0.0)).astype(np.float32)


def _sort_by_score(rows: np.ndarray, column: int = 5) -> np.ndarray:
    # The reference's order (numpy argsort ascending, reversed), so that equal scores fall the same way.
    return rows[np.argsort(rows[:, column])[::-1]]


def _overlap(a: np.ndarray, b: np.ndarray, method: str) -> np.ndarray:
    """(len(a), len(b)) overlap of (x0, y0, x1, y1) boxes: IoU ('union') or intersection / smaller area."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    iw = np.maximum(0.0, np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]))
    ih = np.maximum(0.0, np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]))
    inter = iw * ih
    if method == "union":
        denominator = area_a[:, None] + area_b[None, :] - inter
    else:
        denominator = np.minimum(area_a[:, None], area_b[None, :])
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / denominator


def _suppress(rows: np.ndarray, threshold: float, method: str, chunk: int = 1024) -> np.ndarray:
    """The reference's NMS on rows sorted best first: keep a row unless some EARLIER row (kept or not)
    overlaps it by more than `threshold`. Per image (column 0). Chunked, so memory stays O(n * chunk)."""
    out = []
    for image_id in np.unique(rows[:, 0]):
        group = rows[rows[:, 0] == image_id]
        boxes = group[:, 1:5]
        keep = np.ones(len(group), bool)
        for start in range(0, len(group), chunk):
            stop = min(start + chunk, len(group))
            overlap = _overlap(boxes[:stop], boxes[start:stop], method)
            earlier = np.arange(stop)[:, None] < np.arange(start, stop)[None, :]
            keep[start:stop] = ~((overlap > threshold) & earlier).any(axis=0)
        out.append(group[keep])
    return np.concatenate(out, axis=0) if out else rows[:0]


def _square(rows: np.ndarray) -> np.ndarray:
    rows = rows.copy()
    w, h = rows[:, 3] - rows[:, 1], rows[:, 4] - rows[:, 2]
    side = np.maximum(w, h)
    rows[:, 1] += w * 0.5 - side * 0.5
    rows[:, 2] += h * 0.5 - side * 0.5
    rows[:, 3] = rows[:, 1] + side
    rows[:, 4] = rows[:, 2] + side
    return rows


def _refine(rows: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    rows = rows.copy()
    w = rows[:, 3] - rows[:, 1] + 1
    h = rows[:, 4] - rows[:, 2] + 1
    rows[:, 1:5] += offsets * np.stack([w, h, w, h], axis=-1)
    return rows


# ---------------------------------------------------------------------------------------------------
# The detector.

@dataclasses.dataclass(frozen=True, eq=False)
class Face:
    """One detected face, in the pixel coordinates of the image it was found in.

    box        (x0, y0, x1, y1), clipped to the image (x in [0, W - 1], y in [0, H - 1]).
    score      O-Net's face probability.
    landmarks  (5, 2) float64 (x, y), rows in LANDMARK_NAMES order; not clipped (may lie outside).
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]


def _check_thresholds(thresholds) -> tuple[float, float, float]:
    try:
        values = tuple(float(t) for t in thresholds)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(0.0 <= t < 1.0 for t in values):
        raise FaceDetectorError(f"thresholds must be three probabilities in [0, 1) for P-Net, R-Net and O-Net, "
                                f"e.g. (0.6, 0.7, 0.8); got {thresholds!r}")
    return values  # type: ignore[return-value]


def _normalised(image) -> np.ndarray:
    """HxWx3 uint8 (0..255) or float (0..1) -> float32 (x - 127.5) / 128 with x in 0..255."""
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] < 1 or array.shape[1] < 1:
        raise FaceDetectorError(f"detect takes an (H, W, 3) RGB image (uint8 0..255 or float 0..1), "
                                f"got an array of shape {array.shape}")
    if array.dtype == np.uint8:
        pixels = array.astype(np.float32)
    elif np.issubdtype(array.dtype, np.floating):
        pixels = array.astype(np.float32)
        if pixels.size and not (np.isfinite(pixels).all() and pixels.min() >= 0.0 and pixels.max() <= 1.0):
            raise FaceDetectorError(f"a float image must hold values in [0, 1], got values in "
                                    f"[{np.nanmin(pixels):g}, {np.nanmax(pixels):g}] (pass uint8 for 0..255 data)")
        pixels = pixels * np.float32(255.0)
    else:
        raise FaceDetectorError(f"detect takes a uint8 (0..255) or float (0..1) image, got dtype {array.dtype}")
    return (pixels - np.float32(PIXEL_CENTER)) * np.float32(PIXEL_SCALE)


class FaceDetector:
    """MTCNN, built once (weights loaded, nothing compiled until the first image).

        detector = FaceDetector()
        faces = detector.detect(image)          # image: (H, W, 3) uint8, or float in [0, 1]
        for face in faces: face.box, face.score, face.landmarks

    Defaults are the reference's (`mtcnn` 1.0.0 `detect_faces`): min_face_size 20, scale_factor 0.709,
    thresholds (0.6, 0.7, 0.8) for P-Net, R-Net, O-Net, NMS thresholds (0.5 per level, 0.7 across levels,
    0.7 after R-Net, 0.7 'min' after O-Net). Faces come best first.
    """

    def __init__(self, *, min_face_size: float = 20, scale_factor: float = 0.709,
                 thresholds: Sequence[float] = (0.6, 0.7, 0.8), weights: dict[str, list[np.ndarray]] | None = None):
        if not (isinstance(min_face_size, (int, float)) and min_face_size >= PNET_CELL):
            raise FaceDetectorError(f"min_face_size must be a number of pixels >= {PNET_CELL} (P-Net's window), "
                                    f"got {min_face_size!r}")
        if not (isinstance(scale_factor, (int, float)) and 0.1 <= scale_factor < 1.0):
            raise FaceDetectorError(f"scale_factor must be in [0.1, 1) (the pyramid's step), got {scale_factor!r}")
        self.min_face_size = float(min_face_size)
        self.scale_factor = float(scale_factor)
        self.thresholds = _check_thresholds(thresholds)
        self.nms_thresholds = (0.5, 0.7, 0.7, 0.7)
        weights = load_weights() if weights is None else weights
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        for name, net in (("pnet", self.pnet), ("rnet", self.rnet), ("onet", self.onet)):
            net.load_arrays(weights[name])
        self._forward = {}
        for name, net in (("pnet", self.pnet), ("rnet", self.rnet), ("onet", self.onet)):
            graphdef, state = nnx.split(net)
            self._forward[name] = functools.partial(_compiled(graphdef), state)

    # -- the three stages, on candidate rows [image, x0, y0, x1, y1, score] (float64) -------------------

    def _proposals(self, image_id: int, normalised: np.ndarray) -> np.ndarray:
        h, w = normalised.shape[:2]
        pending = []
        # Dispatch every level first: the device works on one level while the host resizes the next.
        for scale in pyramid_scales(h, w, self.min_face_size, self.scale_factor):
            lh, lw = int(h * scale), int(w * scale)
            if min(lh, lw) < PNET_CELL:
                continue
            padded = np.zeros((1, bucket_size(lh), bucket_size(lw), 3), np.float32)
            padded[0, :lh, :lw] = area_resize(normalised, lh, lw)
            outputs = self._forward["pnet"](padded, np.asarray([lh, lw], np.int32))
            # Valid cells: valid conv (-2), 'SAME' pool (ceil / 2), two valid convs (-4).
            pending.append((scale, (lh - 1) // 2 - 4, (lw - 1) // 2 - 4, outputs))
        per_level = []
        for scale, oh, ow, (regression, probability) in pending:
            probability = np.asarray(probability)[0, :oh, :ow]
            ys, xs = np.nonzero(probability > self.thresholds[0])
            if len(ys) == 0:
                continue
            reg = np.asarray(regression)[0, ys, xs].astype(np.float64)
            x0, y0 = xs * PNET_STRIDE + 1.0, ys * PNET_STRIDE + 1.0
            x1, y1 = xs * PNET_STRIDE + float(PNET_CELL), ys * PNET_STRIDE + float(PNET_CELL)
            side = PNET_CELL - 1.0
            rows = np.stack([np.full(len(ys), float(image_id)), x0 + reg[:, 0] * side, y0 + reg[:, 1] * side,
                             x1 + reg[:, 2] * side, y1 + reg[:, 3] * side,
                             probability[ys, xs].astype(np.float64)], axis=1)
            rows = _sort_by_score(rows)
            rows[:, 1:5] /= scale
            per_level.append(_suppress(rows, self.nms_thresholds[0], "union"))
        if not per_level:
            return np.empty((0, 6))
        rows = _suppress(_sort_by_score(np.concatenate(per_level, axis=0)), self.nms_thresholds[1], "union")
        return _square(rows)

    def _crops(self, normalised: Sequence[np.ndarray], rows: np.ndarray, size: int) -> np.ndarray:
        out = np.empty((len(rows), size, size, 3), np.float32)
        for image_id in np.unique(rows[:, 0]).astype(int):
            select = rows[:, 0] == image_id
            out[select] = crop_and_resize(normalised[image_id], rows[select, 1:5], size)
        return out

    @staticmethod
    def _run_batched(forward, crops: np.ndarray) -> list[np.ndarray]:
        outputs = []
        for start in range(0, len(crops), BATCH_BUCKETS[-1]):
            chunk = crops[start:start + BATCH_BUCKETS[-1]]
            bucket = next(b for b in BATCH_BUCKETS if b >= len(chunk))
            padded = np.zeros((bucket,) + chunk.shape[1:], np.float32)
            padded[:len(chunk)] = chunk
            result = forward(padded)
            outputs.append([np.asarray(r)[:len(chunk)].astype(np.float64) for r in result])
        return [np.concatenate(parts, axis=0) for parts in zip(*outputs)]

    def _refine_stage(self, normalised, rows: np.ndarray) -> np.ndarray:
        regression, probability = self._run_batched(self._forward["rnet"], self._crops(normalised, rows, RNET_SIZE))
        rows = rows.copy()
        rows[:, 5] = probability
        rows = _refine(rows, regression)
        rows = rows[rows[:, 5] > self.thresholds[1]]
        if len(rows) == 0:
            return rows
        return _square(_suppress(_sort_by_score(rows), self.nms_thresholds[2], "union"))

    def _output_stage(self, normalised, rows: np.ndarray) -> np.ndarray:
        regression, points, probability = self._run_batched(self._forward["onet"],
                                                            self._crops(normalised, rows, ONET_SIZE))
        w = rows[:, 3:4] - rows[:, 1:2] + 1
        h = rows[:, 4:5] - rows[:, 2:3] + 1
        xs = w * points[:, 0:5] + rows[:, 1:2] - 1
        ys = h * points[:, 5:10] + rows[:, 2:3] - 1
        rows = rows.copy()
        rows[:, 5] = probability
        rows = np.concatenate([_refine(rows, regression), xs, ys], axis=1)
        rows = rows[rows[:, 5] > self.thresholds[2]]
        if len(rows) == 0:
            return rows
        return _suppress(_sort_by_score(rows), self.nms_thresholds[3], "min")

    # -- public -------------------------------------------------------------------------------------

    def detect(self, image) -> list[Face]:
        """Faces in one (H, W, 3) image (uint8, or float in [0, 1]), best first."""
        return self.detect_batch([image])[0]

    def detect_batch(self, images: Sequence) -> list[list[Face]]:
        """detect() for each image (any sizes); the R-Net and O-Net stages batch all images' candidates."""
        normalised = [_normalised(image) for image in images]
        rows = [self._proposals(i, n) for i, n in enumerate(normalised)]
        rows = np.concatenate(rows, axis=0) if rows else np.empty((0, 6))
        if len(rows):
            rows = self._refine_stage(normalised, rows)
        if len(rows):
            rows = self._output_stage(normalised, rows)
        faces: list[list[Face]] = [[] for _ in images]
        for row in rows:
            image_id = int(row[0])
            h, w = normalised[image_id].shape[:2]
            x0, x1 = (float(np.clip(v, 0, w - 1)) for v in (row[1], row[3]))
            y0, y1 = (float(np.clip(v, 0, h - 1)) for v in (row[2], row[4]))
            landmarks = np.stack([row[6:11], row[11:16]], axis=1)
            landmarks.setflags(write=False)
            faces[image_id].append(Face(box=(x0, y0, x1, y1), score=float(row[5]), landmarks=landmarks))
        return faces
