"""Data sources on fixtures written in the exact real formats, splits, balancing, bad-file scanning."""
import collections
import logging
import pickle

import numpy as np
import pytest
from PIL import Image

from jaxface.data import imageio, sources
from jaxface.data.schema import CELEBA40_FILE_COLUMNS, PUBFIG73_FILE_COLUMNS, get_schema
from jaxface.data.sources import DatasetError

LANDMARK_HEADER = ("lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y "
                   "leftmouth_x leftmouth_y rightmouth_x rightmouth_y")


def _image(path, color=(120, 80, 60), size=(24, 20), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


# ------------------------------------------------------------------------------------------ CelebA
def _write_celeba(root, n=12, *, partition=True, landmarks=True, missing=(), seed=0):
    """The official layout: counted attribute table with a header and 1/-1 values, aligned images."""
    rng = np.random.default_rng(seed)
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    values = rng.choice([-1, 1], size=(n, 40))
    lines = [str(n), " ".join(CELEBA40_FILE_COLUMNS) + " "]
    for name, row in zip(names, values):
        # The real file pads single digits with extra spaces: "000001.jpg -1  1  1 -1 ...".
        lines.append(name + " " + " ".join(f"{v:2d}" for v in row))
    root.mkdir(parents=True, exist_ok=True)
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    for name in names:
        if name not in missing:
            _image(root / "img_align_celeba" / name, tuple(int(v) for v in rng.integers(0, 256, 3)))
    marks = rng.integers(60, 160, size=(n, 10))
    if partition:
        parts = [0] * (n - 4) + [1, 1, 2, 2]
        (root / "list_eval_partition.txt").write_text(
            "".join(f"{name} {p}\n" for name, p in zip(names, parts)))
    if landmarks:
        rows = [str(n), LANDMARK_HEADER]
        rows += [name + "    " + "  ".join(f"{v:3d}" for v in row) for name, row in zip(names, marks)]
        (root / "list_landmarks_align_celeba.txt").write_text("\n".join(rows) + "\n")
    return names, values, marks


def test_celeba_folder_reads_the_official_files(tmp_path):
    names, values, marks = _write_celeba(tmp_path / "celeba")
    schema = get_schema("celeba40")
    train = sources.CelebAFolder(tmp_path / "celeba", split="train")
    val = sources.CelebAFolder(tmp_path / "celeba", split="validation")
    test = sources.CelebAFolder(tmp_path / "celeba", split="test")
    assert (len(train), len(val), len(test)) == (8, 2, 2)
    assert train.split_origin == "official"
    # Schema order differs from the file's column order: match by name.
    columns = [CELEBA40_FILE_COLUMNS.index(a) for a in schema.attribute_names]
    for source in (train, val, test):
        for j in range(len(source)):
            record = source[j]
            i = int(record["index"])
            assert record["path"].endswith(names[i])
            np.testing.assert_array_equal(record["attributes"], (values[i, columns] > 0).astype(np.float32))
            assert record["attributes"].dtype == np.float32 and record["attributes"].shape == (40,)
            assert record["attribute_mask"].all()
            np.testing.assert_array_equal(record["landmarks"], marks[i].reshape(5, 2).astype(np.float32))
            assert record["crop_box"].shape == (4,) and np.isnan(record["crop_box"]).all()
    assert [int(test[j]["index"]) for j in range(2)] == [10, 11]
    np.testing.assert_array_equal(train.attributes, np.stack([train[j]["attributes"] for j in range(8)]))
    # Picklable (grain workers) with a deterministic repr (grain checkpoints).
    clone = pickle.loads(pickle.dumps(train))
    assert repr(clone) == repr(train) and clone[3]["path"] == train[3]["path"]
    assert train[-1]["index"] == train[7]["index"]
    with pytest.raises(IndexError):
        train[8]


def test_celeba_hair_group_labels_are_the_file_values(tmp_path):
    _write_celeba(tmp_path / "c", n=20)
    source = sources.CelebAFolder(tmp_path / "c", split="all")
    schema = source.schema
    hair = schema.head_attribute_indices[0]
    targets = schema.head_targets(source.attributes, source.attribute_mask)
    colours = source.attributes[:, list(hair)].sum(1)
    # No colour -> the "none" class; one -> that colour; several -> no target for the hair head.
    np.testing.assert_array_equal(targets[colours == 0, 0], len(hair))
    assert np.all(targets[colours > 1, 0] == -1)
    assert np.all(targets[colours == 1, 0] < len(hair))


def test_celeba_hashed_split_without_partition_file(tmp_path):
    _write_celeba(tmp_path / "c", n=60, partition=False, landmarks=False)
    split_paths = {}
    for split in ("train", "val", "test"):
        source = sources.CelebAFolder(tmp_path / "c", split=split)
        assert source.split_origin == "hashed"
        split_paths[split] = {source[j]["path"] for j in range(len(source))}
        again = sources.CelebAFolder(tmp_path / "c", split=split)
        assert {again[j]["path"] for j in range(len(again))} == split_paths[split]
    everything = sources.CelebAFolder(tmp_path / "c", split="all")
    assert set.union(*split_paths.values()) == set(everything.paths)
    assert sum(len(p) for p in split_paths.values()) == 60
    assert len(split_paths["train"]) > len(split_paths["val"])
    reseeded = sources.CelebAFolder(tmp_path / "c", split="train", seed=1)
    assert set(reseeded.paths) != split_paths["train"]
    assert np.isnan(everything[0]["landmarks"]).all()


def test_celeba_custom_schema_subset_and_missing_attributes(tmp_path):
    names, values, _ = _write_celeba(tmp_path / "c", n=6)
    attr = tmp_path / "c" / "list_attr_celeba.txt"
    attr.write_bytes(attr.read_bytes().replace(b"\n", b"\r\n"))  # Windows line ends read the same
    schema = {"name": "mini", "groups": [
        {"name": "hair", "attributes": ["black hair", "BLOND_HAIR"], "allow_none": True},
        "male", "Sunglasses",  # Sunglasses is not a CelebA column
    ]}
    source = sources.CelebAFolder(tmp_path / "c", split="all", schema=schema)
    record = source[2]
    expected = [values[2, CELEBA40_FILE_COLUMNS.index(c)] > 0 for c in ("Black_Hair", "Blond_Hair", "Male")]
    np.testing.assert_array_equal(record["attributes"][:3], np.array(expected, np.float32))
    np.testing.assert_array_equal(record["attribute_mask"], [True, True, True, False])
    assert record["attributes"][3] == 0.0
    with pytest.raises(DatasetError, match="none of its attribute columns"):
        sources.CelebAFolder(tmp_path / "c", split="all", schema={"groups": ["Sunglasses"]})


def test_celeba_missing_images_are_skipped(tmp_path, caplog):
    names, _, _ = _write_celeba(tmp_path / "c", n=12, missing=("000003.jpg",))
    with caplog.at_level(logging.WARNING):
        source = sources.CelebAFolder(tmp_path / "c", split="all")
    assert len(source) == 11 and not any(p.endswith("000003.jpg") for p in source.paths)
    assert "000003.jpg" in caplog.text


def test_celeba_errors(tmp_path):
    with pytest.raises(DatasetError, match="list_attr_celeba.txt"):
        sources.CelebAFolder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"list_attr_celeba.txt is missing"):
        sources.CelebAFolder(tmp_path / "empty")
    _write_celeba(tmp_path / "c", n=6)
    with pytest.raises(DatasetError, match="valid splits: train, val, test, all"):
        sources.CelebAFolder(tmp_path / "c", split="dev")
    # Partition file with no test rows: the test split is an empty dataset.
    (tmp_path / "c" / "list_eval_partition.txt").write_text("".join(f"{i + 1:06d}.jpg 0\n" for i in range(6)))
    with pytest.raises(DatasetError, match="split 'test' has no images"):
        sources.CelebAFolder(tmp_path / "c", split="test")
    attr = tmp_path / "c" / "list_attr_celeba.txt"
    lines = attr.read_text().splitlines()
    lines[4] = lines[4].rsplit(" ", 1)[0]  # a row with 39 values
    attr.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"list_attr_celeba.txt:5: expected an image name and 40 values"):
        sources.CelebAFolder(tmp_path / "c", split="all")
    lines[4] = lines[4] + "  2"
    attr.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r":5: attribute values must be 1 or -1"):
        sources.CelebAFolder(tmp_path / "c", split="all")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "list_attr_celeba.txt").write_text("1\nMale\n000001.jpg 1\n")
    with pytest.raises(DatasetError, match="img_align_celeba"):
        sources.CelebAFolder(tmp_path / "d")


# -------------------------------------------------------------------------------------------- TFDS
def test_tfds_celeba_on_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    # USE_CODE: the mock builds the features from the dataset's code (no metadata files needed),
    # and also patches tfds.data_source (array_record); the data_dir given is ignored by the mock.
    with tfds.testing.mock_data(num_examples=5, policy=tfds.testing.MockPolicy.USE_CODE):
        source = sources.TFDSCelebA("val", data_dir=str(tmp_path))
        raw = tfds.data_source("celeb_a", split="validation")
        assert len(source) == 5 and source.tfds_split == "validation"
        schema = get_schema("celeba40")
        for i in range(len(source)):
            record, example = source[i], raw[i]
            assert "path" not in record
            assert record["image"].dtype == np.uint8 and record["image"].shape == (218, 178, 3)
            np.testing.assert_array_equal(record["image"], example["image"])
            expected = [float(example["attributes"][name.replace(" ", "_")]) for name in schema.attribute_names]
            np.testing.assert_array_equal(record["attributes"], expected)
            assert record["attribute_mask"].all()
            marks = example["landmarks"]
            np.testing.assert_array_equal(record["landmarks"][2], [marks["nose_x"], marks["nose_y"]])
            np.testing.assert_array_equal(record["landmarks"][4], [marks["rightmouth_x"], marks["rightmouth_y"]])
        assert pickle.loads(pickle.dumps(source))[1]["attributes"].shape == (40,)
        subset = sources.TFDSCelebA("train", schema={"groups": ["Male", "Sunglasses"]})
        np.testing.assert_array_equal(subset[0]["attribute_mask"], [True, False])
        assert sources.TFDSCelebA("all").tfds_split == "train+validation+test"


def test_tfds_celeba_not_prepared_is_a_clear_error(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(DatasetError, match="tfds build celeb_a") as info:
        sources.TFDSCelebA("train", data_dir=str(tmp_path))
    assert "never downloads" in str(info.value) and str(tmp_path) in str(info.value)
    with pytest.raises(DatasetError, match="valid splits"):
        sources.TFDSCelebA("dev", data_dir=str(tmp_path))


# ---------------------------------------------------------------------------------- PubFig / LFW
def _pubfig_scores(rng, n):
    return rng.normal(size=(n, 73)).round(3)


def _write_pubfig(tmp_path, people, *, header="hash", column_order=None, missing=()):
    """PubFig's pubfig_attributes.txt: `#` comment, `#\\tperson\\timagenum\\t...` header, TSV rows."""
    rng = np.random.default_rng(3)
    scores = _pubfig_scores(rng, len(people))
    columns = list(PUBFIG73_FILE_COLUMNS) if column_order is None else list(column_order)
    order = [PUBFIG73_FILE_COLUMNS.index(c) for c in columns]
    lines = ["# PubFig Dataset v1.2 - Attributes - http://www.cs.columbia.edu/CAVE/databases/pubfig/"]
    if header == "hash":
        lines.append("#\t" + "\t".join(["person", "imagenum"] + columns))
    elif header == "plain":
        lines.append("\t".join(["person", "imagenum"] + columns))
    for (person, num), row in zip(people, scores):
        lines.append("\t".join([person, str(num)] + [f"{v:.3f}" for v in row[order]]))
        if (person, num) not in missing:
            name = person.replace(" ", "_")
            _image(tmp_path / "images" / name / f"{name}_{num:04d}.jpg")
    path = tmp_path / "pubfig_attributes.txt"
    path.write_text("\n".join(lines) + "\n")
    return path, scores


PEOPLE = [("Aaron Eckhart", 1), ("Aaron Eckhart", 2), ("Adam Sandler", 7), ("Alyssa Milano", 3),
          ("Angela Merkel", 12), ("Barack Obama", 5)]


@pytest.mark.parametrize("header", ["hash", "plain", "none"])
def test_pubfig_attributes(tmp_path, header):
    shuffled = list(PUBFIG73_FILE_COLUMNS)[::-1] if header != "none" else None
    path, scores = _write_pubfig(tmp_path, PEOPLE, header=header, column_order=shuffled)
    source = sources.PubFigAttributes(path, tmp_path / "images")
    schema = get_schema("pubfig73")
    assert len(source) == len(PEOPLE)
    in_schema_order = scores[:, [PUBFIG73_FILE_COLUMNS.index(a) for a in schema.attribute_names]]
    expected, expected_mask = schema.labels_from_scores(in_schema_order)
    for i in range(len(source)):
        record = source[i]
        assert record["path"].endswith(f"{PEOPLE[i][0].replace(' ', '_')}_{PEOPLE[i][1]:04d}.jpg")
        np.testing.assert_array_equal(record["attributes"], expected[i])
        np.testing.assert_array_equal(record["attribute_mask"], expected_mask[i])
        assert np.isnan(record["crop_box"]).all() and np.isnan(record["landmarks"]).all()
    # Exclusive groups by arg-max: exactly the best-scoring race is present when it is above 0.
    race = [schema.index(a) for a in ("Asian", "White", "Black", "Indian")]
    race_scores = in_schema_order[:, race]
    for i in range(len(source)):
        if race_scores[i].max() > 0:
            assert source[i]["attributes"][race].argmax() == race_scores[i].argmax()
            assert source[i]["attributes"][race].sum() == 1
        else:
            assert not source[i]["attribute_mask"][race].any()
    male = schema.index("Male")
    np.testing.assert_array_equal(source.attributes[:, male], in_schema_order[:, male] > 0)


def test_pubfig_boxes_patterns_missing_images_and_splits(tmp_path):
    path, _ = _write_pubfig(tmp_path, PEOPLE, missing={("Adam Sandler", 7)})
    bbox = tmp_path / "dev_urls.txt"
    bbox.write_text(
        "# PubFig Dataset v1.2 - Development URLs\n#\tperson\timagenum\turl\trect\tmd5sum\n"
        "Aaron Eckhart\t2\thttp://example.com/a.jpg\t10,20,30,60\t0123456789abcdef0123456789abcdef\n"
    )
    source = sources.PubFigAttributes(path, tmp_path / "images", bbox_file=bbox)
    assert len(source) == 5  # Adam Sandler's image is missing on disk
    np.testing.assert_allclose(source[1]["crop_box"], (0, 20, 40, 60))  # grown to a square
    assert np.isnan(source[0]["crop_box"]).all()
    exact = sources.PubFigAttributes(path, tmp_path / "images", bbox_file=bbox, square_boxes=False)
    np.testing.assert_allclose(exact[1]["crop_box"], (10, 20, 30, 60))
    # {person} keeps the spaces.
    for person, num in PEOPLE:
        _image(tmp_path / "spaced" / f"{person} {num}.png")
    spaced = sources.PubFigAttributes(path, tmp_path / "spaced", path_pattern="{person} {imagenum}.png")
    assert len(spaced) == 6 and spaced[0]["path"].endswith("Aaron Eckhart 1.png")
    # Splits are identity-disjoint.
    people_in = {}
    for split in ("train", "val", "test"):
        try:
            part = sources.PubFigAttributes(path, tmp_path / "images", split=split, split_fractions=(0.5, 0.25, 0.25))
        except DatasetError:
            continue
        people_in[split] = set(part.people[j] for j in part.global_indices)
    for a in people_in:
        for b in people_in:
            assert a == b or not (people_in[a] & people_in[b])


def test_pubfig_errors(tmp_path):
    path, _ = _write_pubfig(tmp_path, PEOPLE)
    with pytest.raises(DatasetError, match="does not exist"):
        sources.PubFigAttributes(tmp_path / "nope.txt", tmp_path / "images")
    with pytest.raises(DatasetError, match="image folder"):
        sources.PubFigAttributes(path, tmp_path / "no_images")
    with pytest.raises(DatasetError, match=r"\{person_\}"):
        sources.PubFigAttributes(path, tmp_path / "images", path_pattern="{name}.jpg")
    with pytest.raises(DatasetError, match="none of the 6 images"):
        sources.PubFigAttributes(path, tmp_path / "images", path_pattern="{person}.jpg")
    lines = path.read_text().splitlines()
    lines[3] = "\t".join(lines[3].split("\t")[:-2])
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"pubfig_attributes.txt:4: expected 75 tab-separated fields"):
        sources.PubFigAttributes(path, tmp_path / "images")
    bad_box = tmp_path / "bad_urls.txt"
    bad_box.write_text("Aaron Eckhart\t1\thttp://x\t10,20,5\tmd5\n")
    _write_pubfig(tmp_path, PEOPLE)
    with pytest.raises(DatasetError, match=r"bad_urls.txt:1"):
        sources.PubFigAttributes(path, tmp_path / "images", bbox_file=bad_box)


# ---------------------------------------------------------------------------------- real / fake
def _write_realfake(root, n_real=20, gens=(("stylegan", 10), ("diffusion", 10)), n_loose=0):
    for i in range(n_real):
        ext = [".jpg", ".PNG", ".jpeg"][i % 3]
        sub = "" if i % 2 else "batch/"
        _image(root / "real" / f"{sub}r{i:03d}{ext}")
    for gen, count in gens:
        for i in range(count):
            ext = [".jpg", ".png", ".bmp", ".webp", ".tif"][i % 5]
            _image(root / "fake" / gen / ("deep/" if i % 4 == 0 else "") / f"{gen}{i:03d}{ext}")
    for i in range(n_loose):
        _image(root / "fake" / f"loose{i}.jpg")
    # Not images, or hidden: skipped.
    (root / "real" / "notes.txt").write_text("hello")
    _image(root / "real" / ".hidden.jpg")
    _image(root / "real" / ".cache" / "x.jpg")


def test_realfake_folder_layout_and_generators(tmp_path):
    _write_realfake(tmp_path / "rf", n_real=6, gens=(("stylegan", 5), ("diffusion", 3)), n_loose=2)
    source = sources.RealFakeFolder(tmp_path / "rf", split="all")
    assert source.generator_names == ("real", "diffusion", "fake", "stylegan")
    assert len(source) == 16
    counts = collections.Counter(source.generator_names[g] for g in source.generator_ids)
    assert counts == {"real": 6, "stylegan": 5, "diffusion": 3, "fake": 2}
    for i in range(len(source)):
        record = source[i]
        name = source.generator_names[record["generator_id"]]
        assert record["label"] == (0 if name == "real" else 1)
        assert record["label"].dtype == np.int32 and record["generator_id"].dtype == np.int32
        assert ("/real/" in record["path"]) == (name == "real")
        if name not in ("real", "fake"):
            assert f"/fake/{name}/" in record["path"]
        assert int(record["index"]) == i
        assert not any(part.startswith(".") for part in record["path"].split("/")[-2:])
    assert any(p.endswith(".PNG") for p in source.paths) and any("/deep/" in p for p in source.paths)
    real_paths = [p for p, y in zip(source.paths, source.labels) if y == 0]
    fake_paths = [p for p, y in zip(source.paths, source.labels) if y == 1]
    assert source.paths == real_paths + fake_paths  # real first, each sorted
    assert real_paths == sorted(real_paths) and fake_paths == sorted(fake_paths)
    assert repr(pickle.loads(pickle.dumps(source))) == repr(source)


def test_realfake_split_is_stratified_and_deterministic(tmp_path):
    _write_realfake(tmp_path / "rf")
    parts = {s: sources.RealFakeFolder(tmp_path / "rf", split=s) for s in ("train", "val", "test")}
    for split, expected in (("train", (16, 8, 8)), ("val", (2, 1, 1)), ("test", (2, 1, 1))):
        counts = collections.Counter(parts[split].generator_names[g] for g in parts[split].generator_ids)
        assert (counts["real"], counts["stylegan"], counts["diffusion"]) == expected
    index_sets = [set(int(p[j]["index"]) for j in range(len(p))) for p in parts.values()]
    assert set.union(*index_sets) == set(range(40)) and sum(map(len, index_sets)) == 40
    again = sources.RealFakeFolder(tmp_path / "rf", split="val")
    assert again.paths == parts["val"].paths
    reseeded = sources.RealFakeFolder(tmp_path / "rf", split="val", seed=5)
    assert reseeded.paths != parts["val"].paths


def test_realfake_errors(tmp_path):
    with pytest.raises(DatasetError, match="expected ROOT/real/ and ROOT/fake/"):
        sources.RealFakeFolder(tmp_path / "missing")
    (tmp_path / "neither" / "photos").mkdir(parents=True)
    with pytest.raises(DatasetError, match="neither real/ nor fake/"):
        sources.RealFakeFolder(tmp_path / "neither")
    (tmp_path / "empty" / "real").mkdir(parents=True)
    (tmp_path / "empty" / "fake" / "gan").mkdir(parents=True)
    (tmp_path / "empty" / "real" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="holds no images"):
        sources.RealFakeFolder(tmp_path / "empty", split="all")
    _write_realfake(tmp_path / "rf", n_real=3, gens=(("gan", 3),))
    with pytest.raises(DatasetError, match="valid splits: train, val, test, all"):
        sources.RealFakeFolder(tmp_path / "rf", split="holdout")
    with pytest.raises(DatasetError, match="split 'val' has no images"):
        sources.RealFakeFolder(tmp_path / "rf", split="val", split_fractions=(0.9, 0.0, 0.1))
    with pytest.raises(DatasetError, match="sum to 1"):
        sources.RealFakeFolder(tmp_path / "rf", split_fractions=(0.8, 0.1, 0.2))
    # Only fakes (e.g. one generator's output for cross-dataset evaluation) is allowed.
    _image(tmp_path / "onlyfake" / "fake" / "a.jpg")
    assert len(sources.RealFakeFolder(tmp_path / "onlyfake", split="all")) == 1


def test_manifest_source(tmp_path):
    _write_realfake(tmp_path / "rf", n_real=10, gens=(("gan", 10),))
    folder = sources.RealFakeFolder(tmp_path / "rf", split="all")
    rows = []
    for path, label, gid in zip(folder.paths, folder.labels, folder.generator_ids):
        relative = path[len(str(tmp_path)) + 1:]
        rows.append(f"{relative},{['real', 'fake'][label]},{folder.generator_names[gid] if label else ''}")
    (tmp_path / "with_header.csv").write_text("path,label,generator\n" + "\n".join(rows) + "\n")
    manifest = sources.ManifestSource(tmp_path / "with_header.csv", split="all")
    assert manifest.generator_names == ("real", "gan") and manifest.paths == folder.paths
    np.testing.assert_array_equal(manifest.labels, folder.labels)
    # Same files and strata -> the same stratified split as the folder source.
    for split in ("train", "val", "test"):
        assert (sources.ManifestSource(tmp_path / "with_header.csv", split=split).paths
                == sources.RealFakeFolder(tmp_path / "rf", split=split).paths)
    # No header, 0/1 labels, no generator column (fakes become 'fake'), absolute paths, a missing file.
    sub = tmp_path / "lists"
    sub.mkdir()
    lines = [f"{p},{y}" for p, y in zip(folder.paths, folder.labels)] + [f"{tmp_path}/gone.jpg,1"]
    (sub / "plain.csv").write_text("\n".join(lines) + "\n")
    plain = sources.ManifestSource(sub / "plain.csv", split="all")
    assert plain.generator_names == ("real", "fake") and len(plain) == 20
    relative = sub / "relative.csv"
    relative.write_text("../rf/fake/gan/gan001.png,FAKE,gan\n# a comment\n../rf/real/r001.PNG,Real\n")
    rel = sources.ManifestSource(relative, split="all")
    assert rel[0]["path"] == str(sub / "../rf/fake/gan/gan001.png") and rel[1]["label"] == 0
    assert imageio.decode_image(rel[0]["path"]).shape == (20, 24, 3)


def test_manifest_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        sources.ManifestSource(tmp_path / "none.csv")
    _image(tmp_path / "a.jpg")
    (tmp_path / "bad.csv").write_text("path,label\na.jpg,real\na.jpg,maybe\n")
    with pytest.raises(DatasetError, match=r"bad.csv:3: label must be real, fake, 0 or 1"):
        sources.ManifestSource(tmp_path / "bad.csv")
    (tmp_path / "short.csv").write_text("a.jpg\n")
    with pytest.raises(DatasetError, match=r"short.csv:1: expected path,label"):
        sources.ManifestSource(tmp_path / "short.csv")
    (tmp_path / "gone.csv").write_text("x.jpg,real\ny.jpg,fake\n")
    with pytest.raises(DatasetError, match="none of the 2 files"):
        sources.ManifestSource(tmp_path / "gone.csv")
    (tmp_path / "empty.csv").write_text("path,label\n")
    with pytest.raises(DatasetError, match="lists no images"):
        sources.ManifestSource(tmp_path / "empty.csv")


# --------------------------------------------------------------------------- splitting, balancing
def test_stratified_split_counts_and_determinism():
    keys = [(0, "real")] * 589 + [(1, "gan")] * 700 + [(1, "tiny")] * 5 + [(1, "one")]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(keys))
    keys = [keys[i] for i in order]
    parts = sources.stratified_split(keys, (0.8, 0.1, 0.1), seed=0)
    assert set(parts) == {"train", "val", "test"}
    allocated = np.concatenate(list(parts.values()))
    assert sorted(allocated.tolist()) == list(range(len(keys)))
    expected = {(0, "real"): (471, 59, 59), (1, "gan"): (560, 70, 70), (1, "tiny"): (4, 1, 0), (1, "one"): (1, 0, 0)}
    for key, sizes in expected.items():
        got = tuple(sum(keys[i] == key for i in parts[s]) for s in ("train", "val", "test"))
        assert got == sizes, (key, got)
    again = sources.stratified_split(keys, (0.8, 0.1, 0.1), seed=0)
    for s in parts:
        np.testing.assert_array_equal(parts[s], again[s])
        assert np.all(np.diff(parts[s]) > 0)
    assert not np.array_equal(sources.stratified_split(keys, seed=1)["val"], parts["val"])
    # numpy scalars and python ints are the same key.
    np_keys = [(np.int32(k[0]), k[1]) for k in keys]
    np.testing.assert_array_equal(sources.stratified_split(np_keys)["test"], parts["test"])
    named = sources.stratified_split([0] * 10, {"train": 0.5, "test": 0.5})
    assert {k: len(v) for k, v in named.items()} == {"train": 5, "test": 5}
    with pytest.raises(DatasetError, match="sum to 1"):
        sources.stratified_split(keys, (0.5, 0.1, 0.1))
    with pytest.raises(DatasetError, match="non-negative"):
        sources.stratified_split(keys, (1.2, -0.1, -0.1))


def test_class_balance_weights():
    labels = np.array([0, 0, 0, 1, 2, 2])
    weights = sources.class_balance_weights(labels)
    np.testing.assert_allclose(weights, [1 / 9, 1 / 9, 1 / 9, 1 / 3, 1 / 6, 1 / 6])
    for c in (0, 1, 2):
        assert weights[labels == c].sum() == pytest.approx(1 / 3)
    assert weights.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(sources.class_balance_weights(["real", "fake", "fake", "fake"]),
                               [0.5, 1 / 6, 1 / 6, 1 / 6])
    with pytest.raises(DatasetError):
        sources.class_balance_weights([])


# ----------------------------------------------------------------------------------- bad files
def test_scan_images_counts_bad_files(tmp_path, caplog):
    _write_realfake(tmp_path / "rf", n_real=4, gens=(("gan", 3),))
    good_jpeg = (tmp_path / "rf" / "real" / "r003.jpg").read_bytes()
    (tmp_path / "rf" / "fake" / "gan" / "truncated.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 2])
    (tmp_path / "rf" / "fake" / "gan" / "html.png").write_bytes(b"<html>403 Forbidden</html>")
    (tmp_path / "rf" / "real" / "zero.jpg").write_bytes(b"")
    source = sources.RealFakeFolder(tmp_path / "rf", split="all")
    assert len(source) == 10  # sources list files; they do not decode
    with caplog.at_level(logging.WARNING):
        ok, bad = sources.scan_images(source, max_report=2, num_threads=2)
    assert len(ok) == 7 and len(bad) == 3
    assert sorted(p.rsplit("/", 1)[-1] for p, _ in bad) == ["html.png", "truncated.jpg", "zero.jpg"]
    assert all(reason for _, reason in bad)
    assert "3 of 10 images cannot be decoded" in caplog.text
    for i in ok:
        assert imageio.decode_image(source[int(i)]["path"]).shape == (20, 24, 3)
    with pytest.raises(imageio.ImageDecodeError):
        sources.scan_images(source, strict=True)
    clean = sources.Subset(source, ok)
    assert len(clean) == 7 and clean.generator_names == source.generator_names
    assert sources.scan_images(clean)[1] == []
    assert len(pickle.loads(pickle.dumps(clean))) == 7


# ----------------------------------------------------------------------------- real shared data
def test_shared_celeba32(shared_data):
    root = shared_data / "celeba32"
    source = sources.CelebAFolder(root, split="all")
    assert len(source) == 32
    lines = (root / "list_attr_celeba.txt").read_text().splitlines()
    assert int(lines[0]) == 32
    header = lines[1].split()
    schema = source.schema
    columns = [header.index(name.replace(" ", "_")) for name in schema.attribute_names]
    for j, line in enumerate(lines[2:]):
        tokens = line.split()
        record = source[j]
        assert record["path"].endswith(tokens[0])
        values = np.array([int(v) for v in tokens[1:]])
        np.testing.assert_array_equal(record["attributes"], (values[columns] > 0).astype(np.float32))
        image = imageio.decode_image(record["path"])
        assert image.shape == (218, 178, 3) and image.dtype == np.uint8 and image.std() > 10
    # No partition file there: hashed splits, disjoint, covering all 32.
    assignment = sources.hash_split(source.names)
    for position, split in enumerate(("train", "val", "test")):
        count = int(np.sum(assignment == position))
        if count == 0:
            with pytest.raises(DatasetError, match="has no images"):
                sources.CelebAFolder(root, split=split)
        else:
            part = sources.CelebAFolder(root, split=split)
            assert len(part) == count and part.split_origin == "hashed"
    assert int(np.sum(assignment == 0)) > 16


def test_shared_realfake(shared_data):
    root = shared_data / "realfake"
    everything = sources.RealFakeFolder(root, split="all")
    assert everything.generator_names == ("real", "fake")
    assert collections.Counter(everything.labels.tolist()) == {0: 589, 1: 700}
    expected = {"train": (471, 560), "val": (59, 70), "test": (59, 70)}
    seen = set()
    for split, (n_real, n_fake) in expected.items():
        part = sources.RealFakeFolder(root, split=split)
        assert (int(np.sum(part.labels == 0)), int(np.sum(part.labels == 1))) == (n_real, n_fake)
        indices = set(part.global_indices.tolist())
        assert not indices & seen
        seen |= indices
    assert len(seen) == 1289
    val = sources.RealFakeFolder(root, split="val")
    ok, bad = sources.scan_images(val)
    assert len(ok) == len(val) and bad == []
    assert imageio.decode_image(val[0]["path"]).shape == (300, 300, 3)


def test_data_summary_counts_unreadable_files_apart(tmp_path):
    from jaxface import config as config_lib
    from jaxface.data import pipeline, report

    root = tmp_path / "data"
    _write_realfake(root, n_real=20, gens=(("stylegan", 20),))
    (root / "real" / "empty.jpg").write_bytes(b"")
    (root / "fake" / "stylegan" / "text.png").write_bytes(b"not a png")
    cfg = config_lib.load_config("configs/detect/realfake_resnet18.py", {"data.root": str(root)})
    result = report.detection_report(cfg, tmp_path / "w", num_preview=4)
    summary = result["summary"]
    assert sum(summary["num_images"].values()) == 40  # the readable ones only
    assert sum(summary["num_unreadable"].values()) == 2
    assert len(summary["unreadable_reasons"]) == 2
    assert any("empty.jpg" in r and "empty" in r for r in summary["unreadable_reasons"])
    assert "unreadable, skipped:" in result["text"].splitlines()[0]
    (root / "real" / "empty.jpg").unlink()
    (root / "fake" / "stylegan" / "text.png").unlink()
    clean = report.detection_report(cfg, tmp_path / "w2", num_preview=4)
    assert sum(clean["summary"]["num_unreadable"].values()) == 0
    assert "unreadable" not in clean["text"]
    for path in root.rglob("*.*"):
        if path.suffix.lower() in (".jpg", ".png", ".jpeg", ".bmp", ".webp", ".tif"):
            path.write_bytes(b"broken")
    with pytest.raises(pipeline.UnreadableDataError, match="none of the dataset's .* files could be read"):
        report.detection_report(cfg, tmp_path / "w3", num_preview=4)
