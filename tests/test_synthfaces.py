"""synthfaces: determinism, labels, rates, and that every attribute shows where it should."""
import pickle

import numpy as np
import pytest

from jaxface.data.schema import UnknownAttributeError, get_schema
from jaxface.data.synthfaces import DEFAULT_ATTRIBUTE_RATES, SynthFaces

SCHEMA = get_schema("synthfaces")
SEEDS = np.arange(24)


def labels(*present, n=len(SEEDS)):
    """(n, K) labels: brown hair, no eyewear, oval face, every binary absent, then `present` set.

    Naming a member of an exclusive group replaces that group's default member."""
    row = np.zeros(SCHEMA.num_attributes, np.float32)
    for name in ("Brown Hair", "No Eyewear", "Oval Face"):
        row[SCHEMA.index(name)] = 1.0
    for name in present:
        group = SCHEMA.group_of(name)
        if not group.is_binary:
            row[SCHEMA.indices(group.attributes)] = 0.0
        row[SCHEMA.index(name)] = 1.0
    return np.tile(row, (n, 1))


@pytest.fixture(scope="module")
def faces():
    return SynthFaces(1000, resolution=64, seed=7)


def render(faces, *present):
    return faces.render(labels(*present), SEEDS).astype(np.float32)


def changed(a, b, threshold=24.0):
    """Per-image mask of pixels whose colour moved by more than `threshold` (sum over RGB)."""
    return np.abs(a - b).sum(-1) > threshold


def centroid_rows(mask):
    rows = np.arange(mask.shape[1], dtype=np.float32)[None, :, None]
    return (mask * rows).sum((1, 2)) / np.maximum(mask.sum((1, 2)), 1)


def region_mean(images, mask):
    """Mean RGB of each image over its mask, (n, 3)."""
    m = mask[..., None].astype(np.float32)
    return (images * m).sum((1, 2)) / np.maximum(m.sum((1, 2)), 1)


def high_frequency_energy(images):
    lum = images.mean(-1)
    lap = 4 * lum[:, 1:-1, 1:-1] - lum[:, :-2, 1:-1] - lum[:, 2:, 1:-1] - lum[:, 1:-1, :-2] - lum[:, 1:-1, 2:]
    return (lap**2).mean((1, 2))


# ------------------------------------------------------------------------------ access and determinism
def test_item_format(faces):
    item = faces[3]
    assert item["image"].dtype == np.uint8 and item["image"].shape == (64, 64, 3)
    assert item["attributes"].dtype == np.float32 and item["attributes"].shape == (SCHEMA.num_attributes,)
    assert item["attribute_mask"].dtype == bool and item["attribute_mask"].all()
    assert item["index"].dtype == np.int64 and int(item["index"]) == 3
    assert len(faces) == 1000
    assert faces.schema.attribute_names == SCHEMA.attribute_names


def test_item_is_the_same_alone_in_any_batch_and_after_pickling(faces):
    indices = [5, 900, 17, 3]
    images, attributes = faces.render_batch(indices)
    reversed_images, reversed_attributes = faces.render_batch(indices[::-1])
    np.testing.assert_array_equal(images, reversed_images[::-1])
    np.testing.assert_array_equal(attributes, reversed_attributes[::-1])
    for k, i in enumerate(indices):
        item = faces[i]
        np.testing.assert_array_equal(item["image"], images[k])
        np.testing.assert_array_equal(item["attributes"], attributes[k])
    np.testing.assert_array_equal(faces.sample_attributes(indices), attributes)
    clone = pickle.loads(pickle.dumps(faces))
    np.testing.assert_array_equal(clone[900]["image"], images[1])
    rebuilt = SynthFaces(1000, resolution=64, seed=7)
    np.testing.assert_array_equal(rebuilt.render_batch(indices)[0], images)
    # A batch larger than one rendering chunk gives the same images as one by one.
    many, _ = faces.render_batch(np.arange(40))
    np.testing.assert_array_equal(many[37], faces[37]["image"])


def test_render_with_item_labels_and_seeds_reproduces_the_item(faces):
    images, attributes = faces.render_batch([11, 12])
    np.testing.assert_array_equal(faces.render(attributes, [11, 12]), images)
    a = faces.render(attributes, np.random.default_rng(3))
    b = faces.render(attributes, 3)
    np.testing.assert_array_equal(a, b)


def test_grain_reads_the_source(faces):
    import grain

    ds = grain.MapDataset.source(faces).shuffle(seed=1).batch(4)
    batch = ds[0]
    assert batch["image"].shape == (4, 64, 64, 3)
    first = int(batch["index"][0])
    np.testing.assert_array_equal(batch["image"][0], faces[first]["image"])
    items = faces._getitems([2, 9])
    np.testing.assert_array_equal(items[1]["image"], faces[9]["image"])


def test_seeds_give_different_data():
    a_images, a_labels = SynthFaces(64, seed=0).render_batch(np.arange(64))
    b_images, b_labels = SynthFaces(64, seed=1).render_batch(np.arange(64))
    assert not np.array_equal(a_labels, b_labels)
    assert np.mean(a_images != b_images) > 0.5


def test_exclusive_groups_are_one_hot(faces):
    attributes = faces.sample_attributes(np.arange(1000))
    assert set(np.unique(attributes)) <= {0.0, 1.0}
    for group, cols in zip(SCHEMA.groups, SCHEMA.head_attribute_indices):
        if not group.is_binary:
            np.testing.assert_array_equal(attributes[:, list(cols)].sum(1), 1.0)
    targets = SCHEMA.head_targets(attributes, np.ones_like(attributes, bool))
    assert (targets >= 0).all()


# ----------------------------------------------------------------------------------------- frequencies
def test_default_rates_are_skewed_and_every_value_occurs():
    attributes = SynthFaces(2000, seed=3).sample_attributes(np.arange(2000))
    rates = attributes.mean(0)
    for name, rate in zip(SCHEMA.attribute_names, rates):
        assert 0.04 < rate < 0.96, (name, rate)
    assert abs(rates[SCHEMA.index("No Eyewear")] - 0.7) < 0.04
    male = attributes[:, SCHEMA.index("Male")] > 0
    beard = attributes[:, SCHEMA.index("Beard")] > 0
    assert beard[male].mean() > 4 * beard[~male].mean()
    bald = attributes[:, SCHEMA.index("Bald")] > 0
    assert not (attributes[bald, SCHEMA.index("Bangs")] > 0).any()
    assert abs(rates[SCHEMA.index("Beard")] - DEFAULT_ATTRIBUTE_RATES["Beard"]) < 0.03


def test_attribute_rates_skew_the_frequencies():
    faces = SynthFaces(2000, seed=3, attribute_rates={"male": 0.9, "sunglasses": 3.0, "Blurry": 0.0,
                                                      "narrow_eyes": 0.5})
    attributes = faces.sample_attributes(np.arange(2000))
    rates = dict(zip(SCHEMA.attribute_names, attributes.mean(0)))
    assert abs(rates["Male"] - 0.9) < 0.03
    assert abs(rates["Narrow Eyes"] - 0.5) < 0.04
    assert rates["Blurry"] == 0.0
    other_eyewear = DEFAULT_ATTRIBUTE_RATES["No Eyewear"] + DEFAULT_ATTRIBUTE_RATES["Eyeglasses"]
    expected_sunglasses = 3.0 / (3.0 + other_eyewear)
    assert abs(rates["Sunglasses"] - expected_sunglasses) < 0.04


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(num_images=0), ValueError, "num_images"),
        (dict(num_images=10, resolution=8), ValueError, "16 to 512"),
        (dict(num_images=10, resolution=1024), ValueError, "16 to 512"),
        (dict(num_images=10, attribute_rates={"Blond Hiar": 0.3}), UnknownAttributeError, "Blond Hair"),
        (dict(num_images=10, attribute_rates={"Male": 1.5}), ValueError, "[0, 1]"),
        (dict(num_images=10, attribute_rates={"Oval Face": -1}), ValueError, "non-negative"),
        (dict(num_images=10, attribute_rates={"Oval Face": 0, "Round Face": 0, "Square Face": 0}),
         ValueError, "face shape"),
    ],
)
def test_configuration_errors(kwargs, error, words):
    with pytest.raises(error, match=None) as info:
        SynthFaces(**kwargs)
    assert words in str(info.value)


def test_access_and_render_errors(faces):
    with pytest.raises(IndexError, match="out of range"):
        faces[1000]
    assert int(faces[-1]["index"]) == 999
    with pytest.raises(ValueError, match="exactly one of the 'hair' group"):
        bad = labels()
        bad[:, SCHEMA.index("Blond Hair")] = 1.0
        faces.render(bad, SEEDS)
    with pytest.raises(ValueError, match="shape"):
        faces.render(np.zeros((2, 5)), [0, 1])
    with pytest.raises(ValueError, match="seeds"):
        faces.render(labels(n=2), [0, 1, 2])


@pytest.mark.parametrize("resolution", [16, 33, 224])
def test_resolution_option(resolution):
    faces = SynthFaces(4, resolution=resolution, seed=1)
    image = faces[2]["image"]
    assert image.shape == (resolution, resolution, 3)
    assert image.std() > 10  # a picture, not a blank
    # The labels do not depend on the resolution.
    np.testing.assert_array_equal(faces.sample_attributes([0, 1, 2]),
                                  SynthFaces(4, resolution=64, seed=1).sample_attributes([0, 1, 2]))


# ----------------------------------------------------------------------------- labels show in the image
def test_hair_colour_follows_the_label(faces):
    bald = render(faces, "Bald")
    colours = {name: render(faces, name) for name in ("Black Hair", "Blond Hair", "Brown Hair", "Gray Hair")}
    hair_region = changed(colours["Black Hair"], bald) & changed(colours["Blond Hair"], bald)
    assert (hair_region.sum((1, 2)) > 150).all()  # hair occupies a real part of a 64x64 image
    mean = {name: region_mean(images, hair_region) for name, images in colours.items()}
    brightness = {name: m.mean(1) for name, m in mean.items()}
    saturation = {name: m.max(1) - m.min(1) for name, m in mean.items()}
    yellowness = {name: (m[:, 0] + m[:, 1]) / 2 - m[:, 2] for name, m in mean.items()}
    assert (brightness["Blond Hair"] > brightness["Brown Hair"] + 20).all()
    assert (brightness["Brown Hair"] > brightness["Black Hair"] + 10).all()
    assert (brightness["Gray Hair"] > brightness["Black Hair"] + 40).all()
    assert (yellowness["Blond Hair"] > yellowness["Gray Hair"] + 30).all()
    assert (saturation["Gray Hair"] < saturation["Blond Hair"] - 30).all()
    assert (saturation["Gray Hair"] < saturation["Brown Hair"]).all()


def test_eyewear_changes_the_eye_region(faces):
    plain = render(faces)
    glasses = render(faces, "Eyeglasses")
    sunglasses = render(faces, "Sunglasses")
    glasses_region = changed(glasses, plain)
    sun_region = changed(sunglasses, plain)
    assert (glasses_region.sum((1, 2)) > 15).all()
    assert (sun_region.sum((1, 2)) > glasses_region.sum((1, 2))).all()  # filled lenses vs thin frames
    # Dark lenses darken the eye region.
    assert (region_mean(sunglasses, sun_region).mean(1) < region_mean(plain, sun_region).mean(1) - 30).all()
    # Both sit above the mouth.
    mouth_rows = centroid_rows(changed(render(faces, "Mouth Open"), plain))
    assert (centroid_rows(sun_region) < mouth_rows - 5).all()
    assert (centroid_rows(glasses_region) < mouth_rows - 5).all()


def test_mouth_attributes_change_the_mouth_region(faces):
    plain = render(faces)
    eyes = centroid_rows(changed(render(faces, "Sunglasses"), plain))
    for name in ("Smiling", "Mouth Open"):
        images = render(faces, name)
        region = changed(images, plain)
        assert (region.sum((1, 2)) > 6).all(), name
        assert (centroid_rows(region) > eyes + 5).all(), name
    # An open mouth shows a dark opening (and teeth): darker dark pixels, more contrast.
    opened = render(faces, "Mouth Open")
    region = changed(opened, plain)
    lum_open, lum_plain = opened.mean(-1), plain.mean(-1)
    for i in range(len(SEEDS)):
        assert np.percentile(lum_open[i][region[i]], 10) < np.percentile(lum_plain[i][region[i]], 10)
        assert lum_open[i][region[i]].std() > lum_plain[i][region[i]].std()


def test_hat_bangs_and_facial_hair_are_where_they_belong(faces):
    plain = render(faces)
    eyes = centroid_rows(changed(render(faces, "Sunglasses"), plain))
    mouth = centroid_rows(changed(render(faces, "Mouth Open"), plain))
    hat = changed(render(faces, "Wearing Hat"), plain)
    bangs = changed(render(faces, "Bangs"), plain)
    beard = changed(render(faces, "Beard"), plain)
    mustache = changed(render(faces, "Mustache"), plain)
    assert (hat.sum((1, 2)) > 100).all()
    assert (centroid_rows(hat) < eyes - 8).all()  # over the top of the head
    assert (bangs.sum((1, 2)) > 20).all()
    assert (centroid_rows(bangs) < eyes).all() and (centroid_rows(bangs) > centroid_rows(hat)).all()
    assert (beard.sum((1, 2)) > mustache.sum((1, 2))).all()
    assert (centroid_rows(beard) > eyes + 5).all()
    assert (np.abs(centroid_rows(mustache) - mouth) < 6).all()


def test_face_attributes_change_the_face(faces):
    plain = render(faces)
    eyes = centroid_rows(changed(render(faces, "Sunglasses"), plain))
    mouth = centroid_rows(changed(render(faces, "Mouth Open"), plain))
    nose = changed(render(faces, "Big Nose"), plain)
    assert (nose.sum((1, 2)) > 3).all()
    assert ((centroid_rows(nose) > eyes) & (centroid_rows(nose) < mouth)).all()
    narrow = changed(render(faces, "Narrow Eyes"), plain)
    assert (narrow.sum((1, 2)) > 3).all()
    assert (np.abs(centroid_rows(narrow) - eyes) < 4).all()
    for shape in ("Round Face", "Square Face"):
        assert (changed(render(faces, shape), plain).sum((1, 2)) > 10).all(), shape
    # Men: short hair, so less hair than the same woman.
    hair = changed(plain, render(faces, "Bald")).sum((1, 2))
    male_hair = changed(render(faces, "Male"), render(faces, "Male", "Bald")).sum((1, 2))
    assert (male_hair < hair).all()


def test_skin_lighting_and_blur(faces):
    plain = render(faces)
    pale = render(faces, "Pale Skin")
    skin = changed(pale, plain)
    assert (skin.sum((1, 2)) > 300).all()
    pale_mean, plain_mean = region_mean(pale, skin), region_mean(plain, skin)
    assert (pale_mean.mean(1) > plain_mean.mean(1)).all()
    assert ((pale_mean.max(1) - pale_mean.min(1)) / pale_mean.max(1)
            < (plain_mean.max(1) - plain_mean.min(1)) / plain_mean.max(1)).all()
    # Harsh light: much stronger contrast across the face.
    harsh = render(faces, "Harsh Lighting")
    face_std = lambda images: np.array([images[i][skin[i]].mean(-1).std() for i in range(len(images))])
    assert (face_std(harsh) > 1.5 * face_std(plain)).all()
    # Blur removes high-frequency energy (same noise and pose in both).
    blurry = render(faces, "Blurry")
    assert (high_frequency_energy(blurry) < 0.6 * high_frequency_energy(plain)).all()


# ------------------------------------------------------------------------------------------ nuisance
def test_same_labels_different_index_give_different_pictures(faces):
    images = render(faces)  # 24 seeds, identical labels
    distinct = {images[i].tobytes() for i in range(len(images))}
    assert len(distinct) == len(images)
    # Pose, colours and light vary: most pixels differ across the set.
    assert (images.std(0).mean(-1) > 8).mean() > 0.9


def test_small_attributes_are_not_readable_off_a_fixed_pixel():
    """Pose jitter moves the features: no single pixel's brightness separates the classes well."""
    faces = SynthFaces(1200, resolution=32, seed=5)
    images, attributes = faces.render_batch(np.arange(1200))
    lum = images.astype(np.float32).mean(-1).reshape(len(images), -1)
    ranks = lum.argsort(0).argsort(0).astype(np.float64)
    for name in ("Eyeglasses", "Smiling", "Mouth Open", "Narrow Eyes", "Big Nose", "Blurry", "Wearing Hat"):
        y = attributes[:, SCHEMA.index(name)] > 0
        n_pos, n_neg = y.sum(), (~y).sum()
        auc = (ranks[y].sum(0) - n_pos * (n_pos - 1) / 2) / (n_pos * n_neg)
        best = np.maximum(auc, 1 - auc).max()
        assert best < 0.8, (name, best)
