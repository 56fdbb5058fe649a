"""The MTCNN port against the reference `mtcnn` 1.0.0 package's recorded detections, and its edges.

tests/fixtures/mtcnn/reference.json was written by tests/fixtures/mtcnn/record_reference.py (TensorFlow,
in a separate environment; see that file). The `mtcnn` package is an install requirement (it carries the
weights): without it these tests fail with the detector's own message rather than skip.
"""
import importlib.util
import json
import pathlib
import sys

import numpy as np
import pytest
from flax import nnx

from jaxface.models import mtcnn
from jaxface.models.mtcnn import Face, FaceDetector, FaceDetectorError, MTCNNWeightsError

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "mtcnn"
REFERENCE = json.loads((FIXTURES / "reference.json").read_text())
LOCAL = [name for name in REFERENCE["images"] if not name.startswith("shared/")]
SHARED = [name for name in REFERENCE["images"] if name.startswith("shared/")]

MIN_IOU = 0.95          # measured: > 0.99999 on every image
MAX_LANDMARK_PX = 1.0   # measured: < 0.001 px
MAX_SCORE_DIFF = 1e-3   # measured: < 1e-6


def _load_recorder():
    spec = importlib.util.spec_from_file_location("mtcnn_record_reference", FIXTURES / "record_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # numpy + PIL only at import; TensorFlow is imported in its main()
    return module


RECORDER = _load_recorder()


@pytest.fixture(scope="module")
def detector():
    return FaceDetector()  # fails (not skips) with MTCNNWeightsError's message if `mtcnn` is missing


@pytest.fixture(scope="module")
def images():
    return RECORDER.test_images()


def iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
    return iw * ih / union


def assert_matches_reference(name: str, pixels: np.ndarray, faces: list[Face]):
    recorded = REFERENCE["images"][name]
    # Another JPEG decoder may give slightly other pixels; the tolerances absorb that, but say so on failure.
    where = name if RECORDER.sha256(pixels) == recorded["pixels_sha256"] else (
        f"{name} (NOTE: its decoded pixels differ from those recorded, another JPEG decoder? re-run "
        f"tests/fixtures/mtcnn/record_reference.py)")
    assert len(faces) == len(recorded["faces"]), (where, [f.box for f in faces], recorded["faces"])
    for expected in recorded["faces"]:
        ours = max(faces, key=lambda f: iou(f.box, expected["box"]))
        assert iou(ours.box, expected["box"]) >= MIN_IOU, (where, ours.box, expected["box"])
        np.testing.assert_allclose(ours.landmarks, expected["landmarks"], atol=MAX_LANDMARK_PX, err_msg=where)
        assert abs(ours.score - expected["score"]) <= MAX_SCORE_DIFF, (where, ours.score, expected["score"])


@pytest.mark.parametrize("name", LOCAL)
def test_matches_reference(detector, images, name):
    faces = detector.detect(images[name])
    assert_matches_reference(name, images[name], faces)
    for face in faces:
        assert isinstance(face, Face) and face.landmarks.shape == (5, 2)
        assert face.score > detector.thresholds[2]
        h, w = images[name].shape[:2]
        assert 0 <= face.box[0] < face.box[2] <= w - 1 and 0 <= face.box[1] < face.box[3] <= h - 1


def test_matches_reference_on_shared_images(detector, shared_data):
    images = RECORDER.test_images(shared_data / "realfake")
    names = [name for name in SHARED if name in images]
    if not names:
        pytest.skip("none of the recorded ../shared/data/realfake images is present")
    for name, faces in zip(names, detector.detect_batch([images[name] for name in names])):
        assert_matches_reference(name, images[name], faces)


def test_faces_and_landmark_order(detector, images):
    faces = detector.detect(images["two_faces"])
    assert len(faces) == 2 and faces[0].score >= faces[1].score
    for face in faces:
        left_eye, right_eye, nose, mouth_left, mouth_right = face.landmarks
        assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]      # image left first
        assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
        x0, y0, x1, y1 = face.box
        assert (x0 < face.landmarks[:, 0]).all() and (face.landmarks[:, 0] < x1).all()
        assert (y0 < face.landmarks[:, 1]).all() and (face.landmarks[:, 1] < y1).all()
    assert not faces[0].landmarks.flags.writeable


def test_batch_float_and_uint8_agree(detector, images):
    names = ["astronaut", "no_face", "two_faces"]
    batch = detector.detect_batch([images[n] for n in names])
    batch_float = detector.detect_batch([images[n].astype(np.float32) / 255.0 for n in names])
    for name, faces, faces_float in zip(names, batch, batch_float):
        single = detector.detect(images[name])
        assert len(faces) == len(single) == len(faces_float), name
        for a, b, c in zip(faces, single, faces_float):
            np.testing.assert_allclose(a.box, b.box, atol=1e-6)
            np.testing.assert_allclose(a.landmarks, b.landmarks, atol=1e-6)
            np.testing.assert_allclose(a.box, c.box, atol=1e-2)
            np.testing.assert_allclose(a.landmarks, c.landmarks, atol=1e-2)


def test_size_buckets_reuse_compiled_programs(detector, images):
    """A photo of a nearby size runs the P-Net programs compiled for another: no new compilation."""
    detector.detect(images["astronaut"])  # 300x300
    pnet = mtcnn._compiled(nnx.split(detector.pnet)[0])
    before = pnet._cache_size()
    other = np.ascontiguousarray(images["astronaut"][4:296, :298])  # 292x298: every level in the same bucket
    detector.detect(other)
    assert pnet._cache_size() == before


def test_padding_is_masked_exactly(detector):
    """P-Net on a level zero-padded to its bucket equals P-Net on the level alone, odd sizes included."""
    forward = detector._forward["pnet"]  # the detector's jitted P-Net
    rng = np.random.default_rng(0)
    for h, w in [(37, 45), (12, 13)]:
        level = rng.uniform(-1, 1, (1, h, w, 3)).astype(np.float32)
        padded = np.zeros((1, mtcnn.bucket_size(h), mtcnn.bucket_size(w), 3), np.float32)
        padded[:, :h, :w] = level
        regression, probability = forward(level, np.asarray([h, w]))
        regression_padded, probability_padded = forward(padded, np.asarray([h, w]))
        oh, ow = probability.shape[1:]
        assert (oh, ow) == ((h - 1) // 2 - 4, (w - 1) // 2 - 4)
        np.testing.assert_allclose(probability_padded[:, :oh, :ow], probability, atol=1e-5)
        np.testing.assert_allclose(regression_padded[:, :oh, :ow], regression, atol=1e-5)


def test_pyramid_and_buckets():
    # The reference's pyramid: 8 levels for a 300-pixel side, starting at 12 / min_face_size.
    np.testing.assert_allclose(mtcnn.pyramid_scales(300, 400), 0.6 * 0.709 ** np.arange(8))
    assert len(mtcnn.pyramid_scales(20, 20)) == 0
    assert [mtcnn.bucket_size(n) for n in (12, 32, 33, 180, 256, 257, 300, 511, 512, 600, 1000, 1100)] == [
        64, 64, 64, 192, 256, 288, 320, 512, 512, 640, 1024, 1152]


def test_area_resize_and_crop_kernels():
    image = np.arange(4 * 6 * 3, dtype=np.float32).reshape(4, 6, 3)
    halved = mtcnn.area_resize(image, 2, 3)
    np.testing.assert_allclose(halved, image.reshape(2, 2, 3, 2, 3).mean(axis=(1, 3)), rtol=1e-6)
    # crop_and_resize samples box corners at x * (W - 1) / W; outside the image it gives 0.
    crop = mtcnn.crop_and_resize(image, np.array([[0.0, 0.0, 6.0, 4.0], [-12.0, -8.0, -6.0, -4.0]]), 2)
    np.testing.assert_allclose(crop[0, 0, 0], image[0, 0])
    np.testing.assert_allclose(crop[0, 1, 1], image[3, 5])
    assert (crop[1] == 0).all()


def test_no_faces_in_tiny_or_flat_images(detector):
    assert detector.detect(np.zeros((8, 8, 3), np.uint8)) == []
    assert detector.detect(np.full((64, 80, 3), 200, np.uint8)) == []
    assert detector.detect_batch([]) == []


@pytest.mark.parametrize("image, message", [
    (np.zeros((40, 40), np.uint8), r"\(H, W, 3\).*shape \(40, 40\)"),
    (np.zeros((40, 40, 4), np.uint8), r"shape \(40, 40, 4\)"),
    (np.full((40, 40, 3), 255.0, np.float32), r"float image must hold values in \[0, 1\]"),
    (np.zeros((40, 40, 3), np.int32), r"dtype int32"),
])
def test_bad_images_raise_one_clear_error(detector, image, message):
    with pytest.raises(FaceDetectorError, match=message):
        detector.detect(image)


def test_bad_options():
    with pytest.raises(FaceDetectorError, match="thresholds"):
        FaceDetector(thresholds=(0.6, 0.7))
    with pytest.raises(FaceDetectorError, match="min_face_size"):
        FaceDetector(min_face_size=5)


def test_missing_mtcnn_package_names_the_fix(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "mtcnn" else real_find_spec(name, *a, **k))
    with pytest.raises(MTCNNWeightsError, match=r"`mtcnn` package.*not installed.*pip install mtcnn"):
        FaceDetector()
    assert issubclass(MTCNNWeightsError, ValueError)


def test_weights_are_read_without_importing_tensorflow_or_mtcnn():
    assert mtcnn.weights_folder().name == "weights"
    arrays = mtcnn.load_weights()
    assert [len(arrays[n]) for n in ("pnet", "rnet", "onet")] == [13, 16, 21]
    assert "mtcnn" not in sys.modules  # the package's __init__ would import TensorFlow
    with pytest.raises(MTCNNWeightsError, match="RNet: the weight file holds 13 arrays"):
        mtcnn.RNet().load_arrays(arrays["pnet"])
