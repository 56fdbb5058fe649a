"""synthfakes: real/fake assignment, leave-one-generator-out, and the traces each generator leaves."""
import pickle

import numpy as np
import pytest

from jaxface.data import synthfakes
from jaxface.data.synthfaces import SynthFaces
from jaxface.data.synthfakes import GENERATORS, SynthRealFake, faceswap_parts, register_generator


@pytest.fixture(scope="module")
def data():
    return SynthRealFake(400, resolution=64, seed=3)


def images_of(ds, generator_id, count):
    ids = np.nonzero(ds.generator_ids == generator_id)[0][:count]
    assert len(ids) == count
    return np.stack([ds[int(i)]["image"] for i in ids]).astype(np.float32)


def test_items_labels_and_generator_ids(data):
    assert data.generator_names == ("real", "upsample", "faceswap")
    assert len(data) == 400
    for i in range(12):
        item = data[i]
        assert item["image"].dtype == np.uint8 and item["image"].shape == (64, 64, 3)
        assert item["label"].dtype == np.int32 and item["generator_id"].dtype == np.int32
        assert item["index"].dtype == np.int64 and int(item["index"]) == i
        assert int(item["label"]) == int(item["generator_id"] > 0)
        assert int(item["generator_id"]) == data.generator_ids[i]
    np.testing.assert_array_equal(data.labels, (data.generator_ids > 0).astype(np.int32))
    # Real items are the synthfaces items of the same seed and index.
    real = int(np.nonzero(data.generator_ids == 0)[0][0])
    np.testing.assert_array_equal(data[real]["image"], SynthFaces(400, seed=3)[real]["image"])


def test_deterministic_picklable_and_seeded(data):
    fake = [int(i) for i in np.nonzero(data.generator_ids > 0)[0][:4]]
    again = SynthRealFake(400, resolution=64, seed=3)
    clone = pickle.loads(pickle.dumps(data))
    for i in fake:
        np.testing.assert_array_equal(data[i]["image"], again[i]["image"])
        np.testing.assert_array_equal(data[i]["image"], clone[i]["image"])
    batch = data._getitems(fake[::-1])
    for item, i in zip(batch, fake[::-1]):
        np.testing.assert_array_equal(item["image"], data[i]["image"])
    other = SynthRealFake(400, resolution=64, seed=4)
    assert not np.array_equal(other.generator_ids, data.generator_ids)


def test_fake_fraction_is_exact_and_generators_balanced():
    ds = SynthRealFake(1000, fake_fraction=0.3, seed=1)
    assert ds.labels.sum() == 300
    np.testing.assert_array_equal(np.bincount(ds.generator_ids, minlength=3), [700, 150, 150])
    assert SynthRealFake(50, fake_fraction=0.0).labels.sum() == 0
    assert SynthRealFake(50, fake_fraction=1.0).labels.sum() == 50


def test_exclude_generators_leaves_one_out():
    train = SynthRealFake(300, seed=2, exclude_generators=("faceswap",))
    assert train.generator_names == ("real", "upsample", "faceswap")  # ids stay comparable
    assert set(np.unique(train.generator_ids)) == {0, 1}
    assert train.labels.sum() == 150
    held_out = SynthRealFake(300, seed=9, generators=("faceswap",))
    assert set(np.unique(held_out.generator_ids)) == {0, 1}
    assert held_out.generator_names == ("real", "faceswap")


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(generators=("upsample", "stylegan")), "available generators: upsample, faceswap"),
        (dict(exclude_generators=("inversion",)), "not among the generators"),
        (dict(exclude_generators=("upsample", "faceswap")), "every generator is excluded"),
        (dict(fake_fraction=1.5), "[0, 1]"),
        (dict(resolution=24), "at least 32"),
        (dict(generators=()), "generators is empty"),
    ],
)
def test_configuration_errors(kwargs, words):
    with pytest.raises(ValueError) as info:
        SynthRealFake(20, **kwargs)
    assert words in str(info.value)


def test_generators_can_be_registered(monkeypatch):
    monkeypatch.setitem(GENERATORS, "flat", lambda rng, index, resolution, context: np.full(
        (resolution, resolution, 3), 128, np.uint8))
    ds = SynthRealFake(20, resolution=32, generators=("flat",), fake_fraction=1.0)
    assert ds.generator_names == ("real", "flat")
    assert (ds[0]["image"] == 128).all() and int(ds[0]["generator_id"]) == 1
    monkeypatch.setitem(GENERATORS, "broken", lambda rng, index, resolution, context: np.zeros((8, 8)))
    with pytest.raises(ValueError, match="must return"):
        SynthRealFake(4, resolution=32, generators=("broken",), fake_fraction=1.0)[0]
    with pytest.raises(ValueError, match="already registered"):
        register_generator("upsample", synthfakes.upsample_generator)


def test_upsample_kernels_are_a_fixed_fingerprint_per_generator_seed():
    def kernels(**kwargs):
        return SynthRealFake(10, **kwargs).context.fixed("upsample", synthfakes._upsample_kernels)

    # Splits built with different data seeds share the generator's fingerprint ...
    np.testing.assert_array_equal(kernels(seed=1), kernels(seed=2))
    np.testing.assert_array_equal(kernels(seed=1, generator_seed=5), kernels(seed=2, generator_seed=5))
    # ... and another generator seed is another model.
    assert not np.allclose(kernels(seed=1, generator_seed=5), kernels(seed=1, generator_seed=6))


def mean_power_spectrum(images):
    lum = images.mean(-1)
    lum -= lum.mean((1, 2), keepdims=True)
    return (np.abs(np.fft.fft2(lum)) ** 2).mean(0)


def test_upsample_generator_leaves_a_periodic_spectral_peak(data):
    """Stride-2 transposed convolution: a peak at the (N/2, N/2) frequency, absent in real images."""
    half = 32

    def peak_ratio(power):
        neighbours = [power[half, half - 1], power[half, half + 1], power[half - 1, half],
                      power[half + 1, half]]
        return power[half, half] / np.mean(neighbours)

    real = peak_ratio(mean_power_spectrum(images_of(data, 0, 40)))
    fake = peak_ratio(mean_power_spectrum(images_of(data, 1, 40)))
    assert real < 2.0
    assert fake > 8.0
    # Subtle in the picture: no global colour shift between the classes.
    real_mean = images_of(data, 0, 40).mean((0, 1, 2))
    fake_mean = images_of(data, 1, 40).mean((0, 1, 2))
    assert np.abs(real_mean - fake_mean).max() < 25


def test_faceswap_leaves_a_colour_seam_along_the_mask(data):
    steps_fake, steps_target = [], []
    for i in range(30):
        fake, mask, target = faceswap_parts(np.random.default_rng([0, i]), i, 64, data.context)
        assert fake.shape == target.shape == (64, 64, 3) and mask.shape == (64, 64)
        if i < 3:  # the target is the face the real class would show for this index
            np.testing.assert_array_equal(target, data.faces[i]["image"])
        # Only the inner face changes.
        outside = mask == 0
        assert outside.mean() > 0.6 and (mask == 1).sum() > 150
        np.testing.assert_array_equal(fake[outside], target[outside])
        fake, target = fake.astype(np.float32), target.astype(np.float32)
        inner, outer = (mask > 0.75) & (mask < 0.99), (mask > 0.01) & (mask < 0.25)
        steps_fake.append(np.abs(fake[inner].mean(0) - fake[outer].mean(0)).sum())
        steps_target.append(np.abs(target[inner].mean(0) - target[outer].mean(0)).sum())
    steps_fake, steps_target = np.array(steps_fake), np.array(steps_target)
    assert steps_fake.mean() > 1.8 * steps_target.mean()
    assert (steps_fake > steps_target).mean() > 0.7


def test_grain_reads_real_and_fake_items(data):
    import grain

    batch = grain.MapDataset.source(data).shuffle(seed=0).batch(8)[0]
    assert batch["image"].shape == (8, 64, 64, 3)
    for k in range(8):
        i = int(batch["index"][k])
        assert int(batch["generator_id"][k]) == data.generator_ids[i]
