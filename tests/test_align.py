"""Five-point face alignment: the template, the similarity fit, the warp, and errors."""
import pathlib

import numpy as np
import pytest
from PIL import Image

from jaxface.data import align
from jaxface.data.align import AlignmentError

ASTRONAUT = pathlib.Path(__file__).resolve().parent / "fixtures" / "mtcnn" / "astronaut.jpg"


def _similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    rotation = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.concatenate([scale * rotation, [[tx], [ty]]], axis=1)


def test_template_is_arcface_scaled_with_margin():
    np.testing.assert_allclose(align.template(112, margin=0.0), align.ARCFACE_112, atol=1e-12)
    # Pixel centres scale: a point at the centre of pixel 0 of a 112 crop maps to pixel-centre coordinates.
    np.testing.assert_allclose(align.template(224, margin=0.0), (align.ARCFACE_112 + 0.5) * 2 - 0.5)
    # A margin shrinks the points towards the crop centre by 1 / (1 + 2 margin).
    wide, tight = align.template(200, margin=0.5), align.template(200, margin=0.0)
    np.testing.assert_allclose(wide - 99.5, (tight - 99.5) / 2.0)
    assert align.DEFAULT_MARGIN > 0  # some context is kept by default


def test_similarity_transform_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    for angle, scale, tx, ty in [(23.0, 1.7, 12.0, -5.0), (-160.0, 0.31, -40.5, 80.25), (0.0, 1.0, 0.0, 0.0)]:
        matrix = _similarity(angle, scale, tx, ty)
        src = rng.uniform(0, 300, (5, 2))
        dst = align.transform_points(matrix, src)
        np.testing.assert_allclose(align.similarity_transform(src, dst), matrix, atol=1e-9)


def test_similarity_transform_never_reflects():
    src = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 5.0], [3.0, 7.0]])
    mirrored = src * [-1.0, 1.0]
    matrix = align.similarity_transform(src, mirrored)
    assert np.linalg.det(matrix[:, :2]) > 0


def test_alignment_puts_exact_landmarks_on_the_template():
    size, margin = 128, 0.25
    image_to_crop = _similarity(17.0, 0.8, -20.0, 35.0)
    crop_to_image = np.linalg.inv(np.vstack([image_to_crop, [0, 0, 1]]))[:2]
    landmarks = align.transform_points(crop_to_image, align.template(size, margin))
    matrix = align.alignment_matrix(landmarks, size, margin)
    np.testing.assert_allclose(matrix, image_to_crop, atol=1e-9)
    np.testing.assert_allclose(align.transform_points(matrix, landmarks), align.template(size, margin), atol=1e-9)


def test_warp_moves_image_content_with_the_points():
    """Gaussian dots at the landmarks land, to a fraction of a pixel, where the matrix sends them."""
    h, w = 240, 260
    landmarks = np.array([[90.3, 100.6], [150.8, 95.2], [121.1, 130.4], [95.7, 165.9], [145.2, 163.3]])
    ys, xs = np.mgrid[0:h, 0:w]
    image = np.zeros((h, w), np.float32)
    for x, y in landmarks:
        image += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 2.5 ** 2)).astype(np.float32)
    size = 96
    out = align.align_face(image, landmarks, size, margin=0.1)
    assert out.shape == (size, size) and out.dtype == np.float32
    expected = align.transform_points(align.alignment_matrix(landmarks, size, 0.1), landmarks)
    oy, ox = np.mgrid[0:size, 0:size]
    for x, y in expected:
        window = (np.abs(ox - x) < 6) & (np.abs(oy - y) < 6)
        weights = out * window
        centroid = np.array([(weights * ox).sum(), (weights * oy).sum()]) / weights.sum()
        np.testing.assert_allclose(centroid, [x, y], atol=0.25)


def test_astronaut_aligned_by_detected_landmarks():
    """Aligning by MTCNN's landmarks: re-detected on the crop they sit where the transform put them, and
    the least-squares fit leaves them close to the template (a real face is not the template's)."""
    from jaxface.models.mtcnn import FaceDetector  # a models import, in a data-layer test only

    detector = FaceDetector()
    pixels = np.asarray(Image.open(ASTRONAUT).convert("RGB"))
    (face,) = detector.detect(pixels)
    size, margin = 112, 0.125
    crop = align.align_face(pixels, face.landmarks, size, margin=margin)
    assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
    moved = align.transform_points(align.alignment_matrix(face.landmarks, size, margin), face.landmarks)
    target = align.template(size, margin)
    np.testing.assert_allclose(moved.mean(axis=0), target.mean(axis=0), atol=1e-9)  # centroids coincide
    assert np.abs(moved - target).max() < 5.0  # measured 4.4 px: her smile is wider than the template's
    assert np.abs(moved[:2] - target[:2]).max() < 2.0  # the eyes: measured 1.6 px
    (again,) = detector.detect(crop)
    assert np.abs(again.landmarks - moved).max() < 1.5  # measured 0.7 px
    assert np.abs(again.landmarks - target).max() < 5.0


def test_dtypes_fill_and_channels():
    image = np.full((50, 60, 3), 200, np.uint8)
    landmarks = align.template(40, 0.0) + [10.0, 5.0]  # a pure shift: the crop's corner lies at (10, 5)
    matrix = align.alignment_matrix(landmarks, 40, 0.0)
    np.testing.assert_allclose(matrix, [[1, 0, -10], [0, 1, -5]], atol=1e-9)
    wide = align.warp_affine(image, [[0.5, 0, 0], [0, 0.5, 0]], 80)  # samples up to (158, 158)
    assert wide.dtype == np.uint8 and wide[10, 10, 0] == 200 and wide[79, 79, 0] == 0
    edge = align.warp_affine(image, [[0.5, 0, 0], [0, 0.5, 0]], 80, fill="edge")
    assert (edge == 200).all()
    floats = align.align_face(image.astype(np.float64) / 255.0, landmarks, 40, margin=0.0)
    assert floats.dtype == np.float32 and floats.shape == (40, 40, 3)
    np.testing.assert_allclose(floats, 200 / 255.0, atol=1e-6)
    gray = align.align_face(image[..., 0], landmarks, 40, margin=0.0)
    assert gray.shape == (40, 40) and (gray == 200).all()


@pytest.mark.parametrize("landmarks, message", [
    (np.zeros((4, 2)), r"\(5, 2\) array of \(x, y\) points in the order left eye.*got shape \(4, 2\)"),
    (np.zeros((5, 3)), r"got shape \(5, 3\)"),
    (np.zeros(10), r"got shape \(10,\)"),
    ([[1, 2], [3]], r"ragged or non-numeric list"),
    (np.full((5, 2), np.nan), "must be finite"),
    (np.ones((5, 2)), "all coincide"),
])
def test_bad_landmarks_raise_one_clear_error(landmarks, message):
    with pytest.raises(AlignmentError, match=message):
        align.align_face(np.zeros((20, 20, 3), np.uint8), landmarks, 32)
    assert issubclass(AlignmentError, ValueError)


def test_bad_options_raise_one_clear_error():
    landmarks = align.template(64)
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(AlignmentError, match="size must be an integer"):
        align.align_face(image, landmarks, 0)
    with pytest.raises(AlignmentError, match="margin"):
        align.align_face(image, landmarks, 64, margin=-1)
    with pytest.raises(AlignmentError, match="fill must be one of zero, edge"):
        align.align_face(image, landmarks, 64, fill="reflect")
    with pytest.raises(AlignmentError, match="image must be"):
        align.align_face(np.zeros((4, 4, 3, 1)), landmarks, 64)
    with pytest.raises(AlignmentError, match="src_points and dst_points"):
        align.similarity_transform(np.zeros((3, 2)), np.zeros((4, 2)))
