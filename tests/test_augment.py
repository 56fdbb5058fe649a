"""Behaviour of the host-side augmentations and the robustness perturbations (jaxface.data.augment)."""
import pickle

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import map_coordinates

from jaxface.data import augment as A


def smooth_image(size=48, seed=0, height=None):
    """A photograph-like test image: smooth colour field plus mild texture, values well inside 0..255."""
    rng = np.random.default_rng(seed)
    height = height or size
    low = rng.uniform(40, 215, (6, 6, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(low).resize((size, height), Image.Resampling.BICUBIC), np.float32)
    texture = rng.normal(0.0, 10.0, (height, size, 3))
    return np.clip(smooth + texture, 1, 254).astype(np.uint8)


def brute_force_capsule(shape, start, end, radius):
    """Pixels (x = column, y = row) within `radius` of segment start-end, computed point by point."""
    height, width = shape
    mask = np.zeros((height, width), bool)
    start, end = np.asarray(start, float), np.asarray(end, float)
    for y in range(height):
        for x in range(width):
            p = np.array([x, y], float)
            d = end - start
            t = 0.0 if not d.any() else min(max(np.dot(p - start, d) / np.dot(d, d), 0.0), 1.0)
            mask[y, x] = np.linalg.norm(p - (start + t * d)) <= radius
    return mask


def high_frequency_energy(image):
    gray = image.astype(np.float64).mean(axis=2)
    return float(np.mean(np.diff(gray, axis=0) ** 2) + np.mean(np.diff(gray, axis=1) ** 2))


# ---------------------------------------------------------------------------------------------- blackout

LANDMARKS = np.array([[20.0, 25.0], [40.0, 25.0], [30.0, 34.0], [22.0, 44.0], [38.0, 44.0]])


def test_blackout_eyes_zeroes_exactly_the_capsule_between_the_eyes():
    image = smooth_image(64)
    out = A.blackout(image, "eyes", LANDMARKS)
    expected = brute_force_capsule((64, 64), LANDMARKS[0], LANDMARKS[1], 0.3 * 20.0)
    assert np.all(out[expected] == 0)
    np.testing.assert_array_equal(out[~expected], image[~expected])
    # the eyes themselves are covered, the mouth and the forehead are not
    assert (out[25, 20] == 0).all() and (out[25, 40] == 0).all()
    assert (out[44, 22] == image[44, 22]).all() and (out[10, 30] == image[10, 30]).all()


@pytest.mark.parametrize("region, start, end", [
    ("nose", (30.0, 25.0), (30.0, 34.0)),
    ("mouth", (22.0, 44.0), (38.0, 44.0)),
])
def test_blackout_nose_and_mouth_follow_their_landmarks(region, start, end):
    image = smooth_image(64, seed=1)
    out = A.blackout(image, region, LANDMARKS)
    expected = brute_force_capsule((64, 64), start, end, A.DEFAULT_BLACKOUT_RADII[region] * 20.0)
    np.testing.assert_array_equal(np.all(out == 0, axis=2) & expected, expected)
    np.testing.assert_array_equal(out[~expected], image[~expected])


def test_blackout_without_landmarks_uses_the_default_aligned_face_positions():
    height, width = 109, 89  # CelebA's aligned 178x218 at half size
    image = smooth_image(width, seed=2, height=height)
    out = A.blackout(image, "eyes")
    fractions = np.asarray(A.DEFAULT_FACE_LANDMARKS)
    points = fractions * [width, height]
    radius = 0.3 * np.hypot(*(points[1] - points[0]))
    expected = brute_force_capsule((height, width), points[0], points[1], radius)
    np.testing.assert_array_equal(np.all(out == 0, axis=2), expected)
    # CelebA's mean eye positions (69, 111) and (108, 111) at half scale are inside the blacked-out region
    assert expected[int(round(111 / 2)), int(round(69 / 2))] and expected[int(round(111 / 2)), int(round(108 / 2))]
    # NaN landmarks fall back to the same defaults
    np.testing.assert_array_equal(A.blackout(image, "eyes", np.full((5, 2), np.nan)), out)


def test_blackout_ffhq_preset_moves_the_region_and_bad_requests_raise():
    image = smooth_image(64, seed=3)
    celeba = np.all(A.blackout(image, "eyes") == 0, axis=2)
    ffhq = np.all(A.blackout(image, "eyes", default_landmarks="ffhq") == 0, axis=2)
    assert np.argwhere(ffhq)[:, 0].mean() < np.argwhere(celeba)[:, 0].mean()  # FFHQ eyes sit higher
    with pytest.raises(A.AugmentError, match="eyes, nose, mouth"):
        A.blackout(image, "ears")
    with pytest.raises(A.AugmentError, match=r"\(5, 2\)"):
        A.blackout(image, "eyes", np.zeros((4, 2)))
    with pytest.raises(A.AugmentError, match="celeba, ffhq"):
        A.blackout(image, "eyes", default_landmarks="lfw")


# ---------------------------------------------------------------------------------------------- geometry

def test_flips_flip():
    image = smooth_image(32, seed=4, height=24)
    horizontal = A.flip_horizontal(image)
    vertical = A.flip_vertical(image)
    for y, x in [(0, 0), (5, 7), (23, 31)]:
        np.testing.assert_array_equal(horizontal[y, x], image[y, 31 - x])
        np.testing.assert_array_equal(vertical[y, x], image[23 - y, x])
    np.testing.assert_array_equal(A.flip_horizontal(horizontal), image)


def test_rotation_by_zero_is_identity_and_full_turn_is_nearly_identity():
    image = smooth_image(40, seed=5)
    np.testing.assert_array_equal(A.rotate(image, 0.0), image)
    # 360 degrees goes through the real warp: identity up to rounding of the bilinear weights
    assert np.abs(A.rotate(image, 360.0).astype(int) - image).max() <= 1


def test_rotation_matches_pil_counter_clockwise_convention():
    image = smooth_image(48, seed=6)
    ours = A.rotate(image, 30.0, border="constant")
    reference = np.asarray(Image.fromarray(image).rotate(30.0, Image.Resampling.BILINEAR))
    centre = slice(14, 34)
    assert np.abs(ours[centre, centre].astype(int) - reference[centre, centre]).max() <= 2


def test_affine_shift_zoom_and_borders():
    image = smooth_image(40, seed=7)
    shifted = A.affine(image, shift=(0.25, 0.0), border="constant", fill=0)
    np.testing.assert_array_equal(shifted[:, 10:], image[:, :30])  # content moved right by 10 px
    assert (shifted[:, :10] == 0).all()
    reflected = A.affine(image, shift=(0.25, 0.0), border="reflect")
    np.testing.assert_array_equal(reflected[:, 10:], image[:, :30])
    np.testing.assert_array_equal(reflected[:, :10], image[:, 9::-1])  # mirrored into the gap
    zoomed = A.affine(image, zoom=2.0, border="constant")
    # zoom 2 about the centre (20, 20): output pixel index i samples input pixel index (i - 20) / 2 + 19.75
    coordinates = (np.arange(40) - 20) / 2 + 19.75
    rows, cols = np.meshgrid(coordinates, coordinates, indexing="ij")
    for channel in range(3):
        expected = map_coordinates(image[..., channel].astype(float), [rows, cols], order=1)
        assert np.abs(zoomed[..., channel] - expected).max() <= 1.0
    with pytest.raises(A.AugmentError, match="reflect, constant"):
        A.affine(image, rotation=5, border="wrap")
    with pytest.raises(A.AugmentError, match="zoom"):
        A.affine(image, zoom=0)


# ---------------------------------------------------------------------------------------------- quality

def test_jpeg_quality_10_changes_the_image_and_keeps_shape_dtype_range():
    image = smooth_image(48, seed=8)
    out = A.jpeg_recompress(image, 10)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert out.min() >= 0 and out.max() <= 255
    assert np.abs(out.astype(int) - image).mean() > 2.0
    # higher quality stays closer to the original
    assert np.abs(A.jpeg_recompress(image, 95).astype(int) - image).mean() < np.abs(out.astype(int) - image).mean()
    with pytest.raises(A.AugmentError, match=r"\[1, 100\]"):
        A.jpeg_recompress(image, 0)


def test_blur_lowers_high_frequency_energy_more_with_larger_sigma():
    image = smooth_image(48, seed=9)
    light, heavy = A.gaussian_blur(image, 0.7), A.gaussian_blur(image, 2.0)
    assert high_frequency_energy(heavy) < high_frequency_energy(light) < 0.7 * high_frequency_energy(image)
    np.testing.assert_array_equal(A.gaussian_blur(image, 0.0), image)
    with pytest.raises(A.AugmentError, match="sigma"):
        A.gaussian_blur(image, -1.0)


def test_noise_has_the_requested_std():
    image = np.full((64, 64, 3), 128, np.uint8)
    rng = np.random.default_rng(0)
    for std in (3.0, 10.0):
        out = A.gaussian_noise(image, std, rng)
        assert abs((out.astype(float) - 128).std() - std) < 0.05 * std + 0.3
    with pytest.raises(A.AugmentError, match="std"):
        A.gaussian_noise(image, -2.0, rng)


def test_colour_ops_move_brightness_in_the_right_direction():
    image = smooth_image(40, seed=10)
    mean = image.mean()
    assert A.adjust_color(image, brightness=1.3).mean() > mean + 5
    assert A.adjust_color(image, brightness=0.7).mean() < mean - 5
    low_contrast = A.adjust_color(image, contrast=0.5)
    assert low_contrast.std() < 0.7 * image.std() and abs(low_contrast.mean() - mean) < 3
    gray = A.adjust_color(image, saturation=0.0)
    assert np.abs(gray.astype(int) - gray.mean(axis=2, keepdims=True)).max() <= 1  # channels equal
    saturated = A.adjust_color(image, saturation=1.5)
    assert saturated.astype(float).std(axis=2).mean() > image.astype(float).std(axis=2).mean()
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 200
    turned = A.adjust_color(red, hue=1 / 3)  # a third of the colour circle: red -> green
    assert turned[..., 1].mean() > 150 and turned[..., 0].mean() < 50
    np.testing.assert_array_equal(A.adjust_color(image), image)
    with pytest.raises(A.AugmentError, match="hue"):
        A.adjust_color(image, hue=0.8)


def test_resize_and_float_images_are_rejected_clearly():
    image = smooth_image(40, seed=11)
    assert A.resize(image, 24).shape == (24, 24, 3)
    assert A.resize(image, (20, 30)).shape == (20, 30, 3)
    with pytest.raises(A.AugmentError, match="uint8"):
        A.flip_horizontal(image.astype(np.float32) / 255)
    with pytest.raises(A.AugmentError, match="height, width, 3"):
        A.flip_horizontal(image[..., 0])
    with pytest.raises(A.AugmentError, match="size"):
        A.resize(image, 0)


# ---------------------------------------------------------------------------------------------- Augmenter

def test_probability_zero_is_identity_and_one_always_applies():
    image = smooth_image(32, seed=12)
    identity = A.Augmenter(A.identity_augment_config())
    for seed in range(5):
        np.testing.assert_array_equal(identity(image, np.random.default_rng(seed)), image)
    config = A.identity_augment_config()
    config.hflip.prob = 1.0
    always_flip = A.Augmenter(config)
    for seed in range(5):
        np.testing.assert_array_equal(always_flip(image, np.random.default_rng(seed)), image[:, ::-1])
    blackout_always = A.Augmenter({**A.identity_augment_config().to_dict(), "blackout": {"prob": 1.0}})
    for seed in range(5):
        assert (blackout_always(image, np.random.default_rng(seed)) == 0).all(axis=2).sum() > 10


def test_augmenter_is_deterministic_per_seed_and_varies_across_seeds():
    image = smooth_image(48, seed=13)
    augmenter = A.Augmenter()  # the default config
    first = augmenter(image, np.random.default_rng(7), LANDMARKS * 0.75)
    again = augmenter(image, np.random.default_rng(7), LANDMARKS * 0.75)
    np.testing.assert_array_equal(first, again)
    outputs = [augmenter(image, np.random.default_rng(seed)) for seed in range(8)]
    assert len({out.tobytes() for out in outputs}) == len(outputs)
    for out in outputs:
        assert out.shape == image.shape and out.dtype == np.uint8


def test_augmenter_is_picklable_and_resizes_last():
    config = A.default_augment_config()
    config.resize.size = 24
    augmenter = pickle.loads(pickle.dumps(A.Augmenter(config)))
    image = smooth_image(40, seed=14)
    assert augmenter(image, np.random.default_rng(0)).shape == (24, 24, 3)
    np.testing.assert_array_equal(augmenter(image, np.random.default_rng(3)),
                                  A.Augmenter(config)(image, np.random.default_rng(3)))


def test_augmenter_config_errors_name_the_problem():
    with pytest.raises(A.AugmentError, match="unknown augmentation 'sharpen'.*valid names"):
        A.Augmenter({"sharpen": {"prob": 0.5}})
    with pytest.raises(A.AugmentError, match="unknown setting jpeg.qual"):
        A.Augmenter({"jpeg": {"qual": 50}})
    with pytest.raises(A.AugmentError, match=r"hflip.prob must be within \[0, 1\]"):
        A.Augmenter({"hflip": {"prob": 1.5}})
    with pytest.raises(A.AugmentError, match="min_quality <= max_quality"):
        A.Augmenter({"jpeg": {"min_quality": 90, "max_quality": 40}})
    with pytest.raises(A.AugmentError, match="blackout.regions"):
        A.Augmenter({"blackout": {"regions": ("eyes", "ears")}})
    with pytest.raises(A.AugmentError, match="affine.border"):
        A.Augmenter({"affine": {"border": "wrap"}})
    with pytest.raises(A.AugmentError, match="Generator"):
        A.Augmenter()(smooth_image(16), 0)


def test_grain_transform_augments_image_and_keeps_other_keys():
    grain = pytest.importorskip("grain")
    config = A.identity_augment_config()
    config.vflip.prob = 1.0
    records = [{"image": smooth_image(16, seed=i), "label": i, "landmarks": np.full((5, 2), np.nan)}
               for i in range(3)]
    dataset = grain.MapDataset.source(records).random_map(A.AugmentTransform(config), seed=0)
    for record, element in zip(records, dataset):
        np.testing.assert_array_equal(element["image"], record["image"][::-1])
        assert element["label"] == record["label"]
    default = grain.MapDataset.source(records).random_map(A.AugmentTransform(), seed=5)
    # MapDataset recomputes on every access: the same (seed, index) must give the same augmentation
    np.testing.assert_array_equal(default[1]["image"], default[1]["image"])
    assert isinstance(pickle.loads(pickle.dumps(A.AugmentTransform())), A.AugmentTransform)


# ---------------------------------------------------------------------------------------------- robustness

@pytest.mark.parametrize("kind", A.PERTURBATION_KINDS)
def test_every_perturbation_keeps_shape_and_dtype(kind):
    image = smooth_image(40, seed=15, height=36)
    for strength in A.ROBUSTNESS_SUITE[kind]:
        out = A.perturb(image, kind, strength)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert not np.array_equal(out, image), (kind, strength)


def test_suite_covers_the_issue_targets_and_perturbations_do_what_they_say():
    assert set(A.ROBUSTNESS_SUITE) == set(A.PERTURBATION_KINDS)
    assert 50 in A.ROBUSTNESS_SUITE["jpeg"] and 1.0 in A.ROBUSTNESS_SUITE["gaussian_blur"]
    assert 0.5 in A.ROBUSTNESS_SUITE["scaling"]
    image = smooth_image(40, seed=16)
    np.testing.assert_array_equal(A.perturb(image, "mirror", 1), image[:, ::-1])
    np.testing.assert_array_equal(A.perturb(image, "mirror", 2), image[::-1])
    assert high_frequency_energy(A.perturb(image, "scaling", 0.5)) < high_frequency_energy(image)
    rotated = A.perturb(image, "rotation", 45)
    assert (rotated[0, 0] == 0).all()  # black corners, as an editor's rotation leaves them
    cropped = A.perturb(image, "crop", 0.5)  # centre 20x20 blown up to 40x40
    centre = A.resize(image[10:30, 10:30], 40)
    np.testing.assert_array_equal(cropped, centre)


def test_perturbation_errors_list_the_valid_kinds_and_ranges():
    image = smooth_image(16)
    with pytest.raises(A.AugmentError, match="rotation, mirror, gaussian_blur, scaling, crop, jpeg"):
        A.perturb(image, "posterize", 1.0)
    with pytest.raises(A.AugmentError, match="1 \\(horizontal\\) or 2 \\(vertical\\)"):
        A.perturb(image, "mirror", 3)
    with pytest.raises(A.AugmentError, match="crop fraction"):
        A.perturb(image, "crop", 1.5)
    with pytest.raises(A.AugmentError, match="scaling factor"):
        A.perturb(image, "scaling", 0.0)
    with pytest.raises(A.AugmentError, match="JPEG quality"):
        A.perturb(image, "jpeg", 101)
    with pytest.raises(A.AugmentError, match="finite"):
        A.perturb(image, "gaussian_blur", float("nan"))


def test_measure_throughput_reports_images_per_second():
    result = A.measure_throughput(size=32, n=10)
    assert result["images_per_s"] > 0 and result["n"] == 10 and result["size"] == 32
    assert set(result["per_op_ms"]) >= {"jpeg", "gaussian_blur", "blackout"}
