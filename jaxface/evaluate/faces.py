"""Faces found first: what a detector scores when `--faces=align` (predict, evaluate on a folder).

Every face MTCNN finds (`models.mtcnn.FaceDetector`) becomes one input of the detector:
- a detector that resizes (data.crop='resize') gets the face moved by a similarity transform onto the one
  five-point template (`data.align`) at its input size, so framing is the same for every face, real or fake;
- a native-resolution patch detector (data.crop='patches') gets the face's square box (plus margin) cut out
  without any resampling, since resampling would smear the traces it scores, then its patch grid.
An image's p_fake is the maximum over its faces (one fake face makes a fake image); an image without a
face is reported as such, never scored as a whole.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jaxface.data import align

FACE_MODES = ("off", "align")
NO_FACE = "no face found"


class FaceModeError(ValueError):
    """An unknown --faces mode."""


def check_mode(mode: str) -> str:
    if mode not in FACE_MODES:
        raise FaceModeError(f"--faces={mode!r}; valid: {', '.join(FACE_MODES)} ('align': find, align and score "
                            "every face; 'off': score the whole image)")
    return mode


def default_mode(config) -> str:
    """The mode a detector was trained with (data.faces), else 'off'."""
    return check_mode(str(config.data.get("faces", "off") or "off"))


@dataclasses.dataclass(frozen=True)
class FoundFace:
    box: tuple[float, float, float, float]
    landmarks: np.ndarray  # (5, 2) x, y
    score: float
    crop: np.ndarray  # what the detector's image preparer receives


def native_square(image: np.ndarray, box, margin: float) -> np.ndarray:
    """The square around `box` enlarged by `margin` of its side on each side, cut at native resolution
    (clamped to the image, so a face at the border gives a smaller square)."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    right, bottom = int(round(cx + side / 2)), int(round(cy + side / 2))
    left, top = max(left, 0) // 2 * 2, max(top, 0) // 2 * 2  # keep the 2x2 pixel grid
    right, bottom = min(right, w), min(bottom, h)
    return np.ascontiguousarray(image[top:bottom, left:right])


class FaceFinder:
    """Finds faces and makes the detector's input for each; built once per command (MTCNN weights)."""

    def __init__(self, data_cfg, *, margin: float = align.DEFAULT_MARGIN):
        from jaxface.models import mtcnn  # loads the MTCNN weights: only when faces are wanted

        self.crop_mode = str(data_cfg.get("crop", "resize"))
        self.size = int(data_cfg.image_size)
        self.margin = float(margin)
        self.detector = mtcnn.FaceDetector()

    def find(self, image: np.ndarray) -> list[FoundFace]:
        found = []
        for face in self.detector.detect(image):
            if self.crop_mode == "patches":
                crop = native_square(image, face.box, self.margin)
            else:
                crop = align.align_face(image, face.landmarks, self.size, margin=self.margin, fill="edge")
            found.append(FoundFace(tuple(float(v) for v in face.box), np.asarray(face.landmarks, np.float64),
                                   float(face.score), crop))
        return found
