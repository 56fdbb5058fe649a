"""Random-access sources for datasets in their real on-disk formats, plus splitting and balancing.

Every source follows grain's RandomAccessDataSource protocol (`__len__`, `__getitem__`, picklable,
a deterministic `__repr__` for checkpointing) and yields dicts of numpy values and strings. Sources
never decode images (the pipeline does, through `imageio.decode_image`); `scan_images` checks a
whole source up front when wanted.

Attribute sources (CelebAFolder, TFDSCelebA, PubFigAttributes) yield
    path str (TFDSCelebA: image uint8 (H, W, 3) instead), crop_box float32 (4,) x0, y0, x1, y1 in
    pixels or NaNs, attributes float32 (K,) 1/0 in schema order, attribute_mask bool (K,),
    landmarks float32 (5, 2) x, y in image pixels in CelebA order (left eye, right eye, nose, left
    mouth corner, right mouth corner) or NaNs, index int32.
Detection sources (RealFakeFolder, ManifestSource) yield
    path str, label int32 (0 real, 1 fake), generator_id int32 (0 = real), index int32,
and expose `generator_names` ('real' first; ids index into it; the same for every split).

`index` is the record's position in the whole dataset (split 'all'), so it is stable across splits.
"""
from __future__ import annotations

import concurrent.futures
import csv
import hashlib
import io
import os
import pathlib
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
from absl import logging

from jaxface.data import imageio
from jaxface.data.schema import (
    PUBFIG73_FILE_COLUMNS,
    Schema,
    UnknownAttributeError,
    get_schema,
    normalize_name,
)

SPLITS = ("train", "val", "test")
VALID_SPLITS = SPLITS + ("all",)
_SPLIT_ALIASES = {"validation": "val", "valid": "val"}
LANDMARK_NAMES = ("lefteye", "righteye", "nose", "leftmouth", "rightmouth")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
REAL, FAKE = 0, 1
_MAX_LISTED = 5


class DatasetError(ValueError):
    """A dataset that cannot be read as described: missing files, bad format, empty split."""


# ------------------------------------------------------------------------------------------ splits
def check_split(split: str) -> str:
    """Canonical split name ('validation' -> 'val'); anything else raises listing the valid ones."""
    name = _SPLIT_ALIASES.get(str(split).lower(), str(split).lower())
    if name not in VALID_SPLITS:
        raise DatasetError(f"unknown split {split!r}; valid splits: {', '.join(VALID_SPLITS)}")
    return name


def _check_fractions(fractions) -> dict[str, float]:
    if isinstance(fractions, Mapping):
        items = {str(k): float(v) for k, v in fractions.items()}
    else:
        values = [float(v) for v in fractions]
        if len(values) != len(SPLITS):
            raise DatasetError(
                f"split fractions must give ({', '.join(SPLITS)}), got {tuple(fractions)}"
            )
        items = dict(zip(SPLITS, values))
    if any(v < 0 for v in items.values()) or abs(sum(items.values()) - 1.0) > 1e-6:
        raise DatasetError(
            f"split fractions must be non-negative and sum to 1, got {items} (sum {sum(items.values()):g})"
        )
    return items


def _stable_unit(text: str, seed: int) -> float:
    """A deterministic pseudo-random number in [0, 1) from a string (independent of PYTHONHASHSEED)."""
    digest = hashlib.blake2b(f"{int(seed)}\x00{text}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def hash_split(names: Sequence[str], fractions=(0.8, 0.1, 0.1), seed: int = 0) -> np.ndarray:
    """Each name -> its split's position in SPLITS, by hashing the name (stable when files are added).

    Split sizes follow the fractions in expectation, not exactly (use stratified_split for exact).
    """
    fr = _check_fractions(fractions)
    edges = np.cumsum([fr[s] for s in SPLITS])[:-1]
    units = np.array([_stable_unit(n, seed) for n in names], np.float64)
    return np.searchsorted(edges, units, side="right").astype(np.int8)


def _allocate(count: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder rounding: floors first, the leftover items go to the largest remainders
    (ties to the earlier split), so the counts add up to `count` and each is within 1 of count * f."""
    exact = [count * f for f in fractions]
    sizes = [int(np.floor(e + 1e-9)) for e in exact]
    leftover = count - sum(sizes)
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - sizes[i]), i))
    for i in order[:leftover]:
        sizes[i] += 1
    return sizes


def _plain_key(key: Any) -> Any:
    if isinstance(key, np.generic):
        return key.item()
    if isinstance(key, (tuple, list)):
        return tuple(_plain_key(k) for k in key)
    return key


def stratified_split(
    keys: Sequence[Hashable], fractions=(0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, np.ndarray]:
    """Indices of each split (sorted int64 arrays), every stratum (equal key) split by the fractions.

    Within a stratum of n items the split sizes are n * fraction rounded by largest remainder (so a
    stratum of 5 with 0.8/0.1/0.1 gives 4/1/0: the leftover item goes to the earlier split on a tie).
    The shuffle of each stratum is seeded by (seed, the key's repr), so one stratum's assignment does
    not depend on which other strata exist. Deterministic for equal inputs.
    """
    fr = _check_fractions(fractions)
    names = list(fr)
    strata: dict[Any, list[int]] = {}
    for i, key in enumerate(keys):
        strata.setdefault(_plain_key(key), []).append(i)
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for key, members in strata.items():
        digest = hashlib.blake2b(repr(key).encode("utf-8"), digest_size=8).digest()
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int.from_bytes(digest, "little")])
        shuffled = rng.permutation(np.asarray(members, np.int64))
        start = 0
        for name, size in zip(names, _allocate(len(members), [fr[n] for n in names])):
            parts[name].append(shuffled[start : start + size])
            start += size
    return {
        n: np.sort(np.concatenate(p)) if p else np.zeros((0,), np.int64) for n, p in parts.items()
    }


def class_balance_weights(labels: Sequence[Hashable]) -> np.ndarray:
    """Per-example sampling weights (float64, summing to 1) giving every class equal total weight."""
    keys = [_plain_key(k) for k in (labels.tolist() if isinstance(labels, np.ndarray) else labels)]
    if not keys:
        raise DatasetError("class_balance_weights needs at least one label")
    counts: dict[Any, int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    num_classes = len(counts)
    return np.array([1.0 / (num_classes * counts[k]) for k in keys], np.float64)


# ------------------------------------------------------------------------------------ base classes
def _warn_dropped(what: str, missing: list[str], total: int) -> None:
    if missing:
        logging.warning(
            "%d of %d %s are missing on disk and skipped; first: %s",
            len(missing), total, what, ", ".join(missing[:_MAX_LISTED]),
        )


def _select_split(split: str, assignment: np.ndarray, origin: str) -> np.ndarray:
    """Global indices of `split` given per-record split positions (-1: in no split)."""
    if split == "all":
        selected = np.arange(len(assignment), dtype=np.int64)
    else:
        selected = np.flatnonzero(assignment == SPLITS.index(split)).astype(np.int64)
    if selected.size == 0:
        sizes = {s: int(np.sum(assignment == i)) for i, s in enumerate(SPLITS)}
        raise DatasetError(
            f"{origin}: split {split!r} has no images ({len(assignment)} in all; split sizes {sizes})"
        )
    return selected


def checked_index(index, source) -> int:
    """`index` into a source of len(source) records, negative from the end; IndexError outside."""
    index = int(index)
    n = len(source)
    if index < 0:
        index += n
    if not 0 <= index < n:
        raise IndexError(f"index {index} out of range for {source!r}")
    return index


class _Source:
    """Shared random access over the records of one split (subclasses fill `_selected`)."""

    _selected: np.ndarray
    split: str

    def __len__(self) -> int:
        return int(self._selected.size)

    def __getitem__(self, index) -> dict:
        return self._record(int(self._selected[checked_index(index, self)]))

    def _record(self, global_index: int) -> dict:
        raise NotImplementedError

    @property
    def global_indices(self) -> np.ndarray:
        """Position of each record of this split in the whole dataset (the `index` field)."""
        return self._selected.copy()


class _AttributeSource(_Source):
    """Arrays for all records of the dataset; records of the selected split."""

    def _init_arrays(self, schema, paths, attributes, mask, landmarks=None, boxes=None):
        n = len(paths)
        self.schema: Schema = schema
        self._paths = list(paths)
        self._attributes = np.asarray(attributes, np.float32).astype(np.int8)  # 0/1: a quarter the bytes
        self._mask = np.asarray(mask, bool)
        self._landmarks = None if landmarks is None else np.asarray(landmarks, np.float32)
        self._boxes = None if boxes is None else np.asarray(boxes, np.float32)
        assert self._attributes.shape == (n, schema.num_attributes), self._attributes.shape

    def _record(self, i: int) -> dict:
        nan_box = np.full((4,), np.nan, np.float32)
        return {
            "path": self._paths[i],
            "crop_box": nan_box if self._boxes is None else self._boxes[i].copy(),
            "attributes": self._attributes[i].astype(np.float32),
            "attribute_mask": self._mask[i].copy(),
            "landmarks": (
                np.full((5, 2), np.nan, np.float32) if self._landmarks is None
                else self._landmarks[i].copy()
            ),
            "index": np.int32(i),
        }

    @property
    def paths(self) -> list[str]:
        return [self._paths[i] for i in self._selected]

    @property
    def attributes(self) -> np.ndarray:
        """float32 (N, K) labels of this split, in schema order."""
        return self._attributes[self._selected].astype(np.float32)

    @property
    def attribute_mask(self) -> np.ndarray:
        return self._mask[self._selected]


def _map_columns(columns: Sequence[str], schema: Schema, origin: str) -> tuple[np.ndarray, list[str]]:
    """For each schema attribute, the file column holding it (-1 if none); and the unused columns."""
    column_of = np.full((schema.num_attributes,), -1, np.int64)
    unused = []
    for c, name in enumerate(columns):
        try:
            k = schema.index(name)
        except UnknownAttributeError:
            unused.append(name)
            continue
        if column_of[k] >= 0:
            raise DatasetError(f"{origin}: attribute {name!r} appears in two columns")
        column_of[k] = c
    if np.all(column_of < 0):
        raise DatasetError(
            f"{origin}: none of its attribute columns ({', '.join(list(columns)[:6])}, ...) is in "
            f"schema {schema.name!r} ({', '.join(schema.attribute_names[:6])}, ...)"
        )
    absent = [schema.attribute_names[k] for k in np.flatnonzero(column_of < 0)]
    if absent:
        logging.info(
            "%s lacks %d schema attributes (masked out): %s", origin, len(absent), ", ".join(absent)
        )
    if unused:
        logging.info("%s: %d columns not in schema %s are ignored", origin, len(unused), schema.name)
    return column_of, unused


# ------------------------------------------------------------------------------------------ CelebA
def _count_tokens(data: bytes) -> int:
    """Whitespace-separated tokens in `data`, counted without building Python strings."""
    chars = np.frombuffer(data, np.uint8)
    if chars.size == 0:
        return 0
    space = (chars == 32) | ((chars >= 9) & (chars <= 13))  # space, \t \n \v \f \r
    return int(np.count_nonzero(space[:-1] & ~space[1:]) + (not space[0]))


def _read_counted_table(path: pathlib.Path, *, dtype, valid, what: str, expected_fields: int | None = None):
    """CelebA's list_*.txt layout: a count line, a header line of names, then `NAME v1 ... vn`.

    Returns (header, names, values (N, n) of `dtype`); `valid(values)` says whether values are
    acceptable. A vectorised parse handles well-formed files (200k rows in about a second); any
    problem re-reads line by line to report the offending file:line.
    """
    raw = path.read_bytes()
    head, pos, line_no = [], 0, 0
    while len(head) < 2 and pos <= len(raw):
        newline = raw.find(b"\n", pos)
        end = len(raw) if newline < 0 else newline
        line_no += 1
        tokens = raw[pos:end].decode("utf-8", "replace").split()
        if tokens:
            head.append((line_no, tokens))
        pos = end + 1
    if len(head) < 2:
        raise DatasetError(f"{path}: expected a count line and a header line, found {len(head)} lines")
    (count_line, count_tokens), (header_line, header) = head
    try:
        declared = int(count_tokens[0])
    except ValueError:
        raise DatasetError(
            f"{path}:{count_line}: expected the number of images on the first line, got {count_tokens[0]!r}"
        ) from None
    if expected_fields is not None and len(header) != expected_fields:
        raise DatasetError(
            f"{path}:{header_line}: expected {expected_fields} column names, found {len(header)}"
        )
    width = len(header)
    body = raw[pos:] if pos <= len(raw) else b""
    names, values = None, None
    if not body.strip():
        names, values = [], np.zeros((0, width), dtype)
    else:
        text = body.decode("utf-8", "replace")
        try:
            values = np.loadtxt(io.StringIO(text), usecols=range(1, width + 1), dtype=dtype,
                                comments=None, ndmin=2)
            names = np.loadtxt(io.StringIO(text), usecols=0, dtype=str, comments=None, ndmin=1).tolist()
            # loadtxt ignores extra columns: equal token totals mean every row has exactly width + 1.
            if _count_tokens(body) != len(names) * (width + 1) or not valid(values):
                names = None
        except ValueError:
            names = None
        if names is None:  # slow path: find and report the first bad line
            for offset, line in enumerate(text.splitlines()):
                tokens = line.split()
                if not tokens:
                    continue
                where = f"{path}:{line_no + 1 + offset}"
                if len(tokens) != width + 1:
                    raise DatasetError(
                        f"{where}: expected an image name and {width} values, found {len(tokens)} fields"
                    )
                try:
                    row = np.array(tokens[1:]).astype(dtype)[None]
                except (ValueError, OverflowError):
                    row = None
                if row is None or not valid(row):
                    raise DatasetError(f"{where}: {what}")
            raise DatasetError(f"{path}: cannot parse the table (no single bad line found)")
    if declared != len(names):
        logging.warning("%s declares %d rows but has %d", path, declared, len(names))
    return header, names, values


def _read_celeba_attributes(path):
    return _read_counted_table(
        path, dtype=np.int8, valid=lambda v: bool(((v >= -1) & (v <= 1)).all()),
        what="attribute values must be 1 or -1 (0 also means absent)",
    )


def _celeba_landmarks(path, names: Sequence[str]) -> np.ndarray:
    header, rows, values = _read_counted_table(
        path, dtype=np.float32, valid=lambda v: bool(np.isfinite(v).all()),
        what="landmark coordinates must be numbers", expected_fields=10,
    )
    # Column order from the header when it names the points, else the official order.
    wanted = [f"{p}_{axis}" for p in LANDMARK_NAMES for axis in "xy"]
    lowered = [h.lower() for h in header]
    order = [lowered.index(w) for w in wanted] if set(wanted) <= set(lowered) else list(range(10))
    row_of = {name: r for r, name in enumerate(rows)}
    out = np.full((len(names), 5, 2), np.nan, np.float32)
    found = np.array([row_of.get(n, -1) for n in names], np.int64)
    out[found >= 0] = values[found[found >= 0]][:, order].reshape(-1, 5, 2)
    return out


def _celeba_partition(path, names: Sequence[str]) -> np.ndarray:
    by_name = {}
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, 1):
            tokens = line.split()
            if not tokens:
                continue
            if len(tokens) != 2 or tokens[1] not in ("0", "1", "2"):
                raise DatasetError(
                    f"{path}:{line_no}: expected `NAME 0|1|2` (train/val/test), got {line.strip()!r}"
                )
            by_name[tokens[0]] = int(tokens[1])
    assignment = np.array([by_name.get(n, -1) for n in names], np.int8)
    unassigned = [n for n, a in zip(names, assignment) if a < 0]
    if unassigned:
        logging.warning(
            "%d images are not in %s and belong to no split (only to 'all'); first: %s",
            len(unassigned), path, ", ".join(unassigned[:_MAX_LISTED]),
        )
    return assignment


class CelebAFolder(_AttributeSource):
    """The official CelebA folder layout (aligned images).

    ROOT/list_attr_celeba.txt, ROOT/img_align_celeba/; optional ROOT/list_eval_partition.txt (the
    official split; without it, file names are hashed into splits by `split_fractions` and `seed`)
    and ROOT/list_landmarks_align_celeba.txt. Attribute columns are matched to the schema by name,
    so a schema with a subset (or other names' spelling) works; schema attributes the file lacks are
    masked out. Rows whose image is missing are skipped with a warning.
    """

    ATTRIBUTE_FILE = "list_attr_celeba.txt"
    PARTITION_FILE = "list_eval_partition.txt"
    LANDMARK_FILE = "list_landmarks_align_celeba.txt"

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        split: str = "train",
        schema: Any = "celeba40",
        split_fractions=(0.8, 0.1, 0.1),
        seed: int = 0,
        image_dir: str = "img_align_celeba",
    ):
        self.root = pathlib.Path(root)
        self.split = check_split(split)
        expected = f"expected ROOT/{self.ATTRIBUTE_FILE} and ROOT/{image_dir}/"
        if not self.root.is_dir():
            raise DatasetError(f"CelebA root {self.root} is not a folder; {expected}")
        attr_file = self.root / self.ATTRIBUTE_FILE
        images = self.root / image_dir
        if not attr_file.is_file():
            raise DatasetError(f"CelebA attribute file {attr_file} is missing; {expected}")
        if not images.is_dir():
            raise DatasetError(f"CelebA image folder {images} is missing; {expected}")
        schema = get_schema(schema)
        header, listed, values = _read_celeba_attributes(attr_file)
        column_of, _ = _map_columns(header, schema, str(attr_file))

        on_disk = set(os.listdir(images))
        present = np.array([name in on_disk for name in listed], bool)
        missing = [n for n, p in zip(listed, present) if not p]
        _warn_dropped(f"images listed in {attr_file}", missing, len(listed))
        if not present.any():
            raise DatasetError(
                f"{self.root}: none of the {len(listed)} images in {attr_file.name} is in {images}"
            )
        names = [n for n, p in zip(listed, present) if p]
        values = values[present]

        mapped = column_of >= 0
        attributes = np.zeros((len(names), schema.num_attributes), np.float32)
        attributes[:, mapped] = (values[:, column_of[mapped]] > 0).astype(np.float32)
        mask = np.broadcast_to(mapped, attributes.shape).copy()

        landmark_file = self.root / self.LANDMARK_FILE
        landmarks = _celeba_landmarks(landmark_file, names) if landmark_file.is_file() else None
        partition_file = self.root / self.PARTITION_FILE
        if partition_file.is_file():
            self.split_origin = "official"
            assignment = _celeba_partition(partition_file, names)
        else:
            self.split_origin = "hashed"
            assignment = hash_split(names, split_fractions, seed)
        self._init_arrays(schema, [str(images / n) for n in names], attributes, mask, landmarks)
        self.names = names
        self._selected = _select_split(self.split, assignment, f"CelebA {self.root}")

    def __repr__(self) -> str:
        return (
            f"CelebAFolder(root={str(self.root)!r}, split={self.split!r}, "
            f"schema={self.schema.name!r}, n={len(self)})"
        )


# -------------------------------------------------------------------------------------- TFDS CelebA
_TFDS_SPLITS = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}


def _tfds_split(split: str) -> str:
    """Our split names (or TFDS ones, with slices and '+') -> a TFDS split string."""
    if str(split).lower() == "all":
        return "train+validation+test"
    parts = []
    for part in str(split).split("+"):
        base, bracket, rest = part.strip().partition("[")
        if base.lower() not in _TFDS_SPLITS:
            raise DatasetError(
                f"unknown split {split!r} for TFDS celeb_a; valid splits: train, val (validation), "
                "test, all (slices like 'train[:10%]' and 'train+test' also work)"
            )
        parts.append(_TFDS_SPLITS[base.lower()] + bracket + rest)
    return "+".join(parts)


class TFDSCelebA(_Source):
    """CelebA as prepared by TensorFlow Datasets (`celeb_a`), read through `tfds.data_source`.

    Never downloads: the dataset must already be prepared in a random-access format (array_record)
    under `data_dir` (TFDS's default data dir when None). Records carry the decoded `image` (uint8
    218x178x3) instead of a path.
    """

    DATASET = "celeb_a"

    def __init__(self, split: str = "train", *, data_dir: str | None = None, schema: Any = "celeba40"):
        self.split = str(split)
        self.tfds_split = _tfds_split(split)
        self.data_dir = None if data_dir is None else str(data_dir)
        self.schema = get_schema(schema)
        try:
            import tensorflow_datasets as tfds  # lazy: only this source needs it
        except ImportError as err:
            raise DatasetError(
                f"the TFDS CelebA source needs tensorflow-datasets ({err}); "
                "pip install tensorflow-datasets, or use the CelebA folder source"
            ) from None
        where = self.data_dir or "TFDS's default data dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
        try:
            self._tfds = tfds.data_source(
                self.DATASET, split=self.tfds_split, data_dir=self.data_dir, download=False
            )
        except Exception as err:  # noqa: BLE001 -- tfds raises assorted types for "not prepared"
            raise DatasetError(
                f"TFDS dataset {self.DATASET!r} (split {self.tfds_split!r}) is not prepared in a "
                f"random-access format under {where}: {type(err).__name__}: {err}\n"
                "jaxface never downloads data. Prepare it yourself once, e.g.\n"
                f"  tfds build {self.DATASET} --data_dir={self.data_dir or '~/tensorflow_datasets'} "
                "--file_format=array_record\n"
                "(this needs tensorflow and network access), or use the CelebA folder source on the "
                "official files."
            ) from None
        column_of, _ = _map_columns(
            list(self._attribute_keys()), self.schema, f"TFDS {self.DATASET}"
        )
        keys = self._attribute_keys()
        self._key_of = [keys[c] if c >= 0 else None for c in column_of]
        self._mask = column_of >= 0
        self._selected = np.arange(len(self._tfds), dtype=np.int64)

    def _attribute_keys(self) -> list[str]:
        from jaxface.data.schema import CELEBA40_FILE_COLUMNS

        try:
            return list(self._tfds.dataset_info.features["attributes"].keys())
        except Exception:  # noqa: BLE001 -- older/newer feature APIs: fall back to the known names
            return list(CELEBA40_FILE_COLUMNS)

    def _record(self, i: int) -> dict:
        example = self._tfds[i]
        attrs = example["attributes"]
        attributes = np.array(
            [float(bool(attrs[k])) if k is not None else 0.0 for k in self._key_of], np.float32
        )
        marks = example.get("landmarks")
        landmarks = np.full((5, 2), np.nan, np.float32)
        if marks:
            landmarks = np.array(
                [[marks[f"{p}_x"], marks[f"{p}_y"]] for p in LANDMARK_NAMES], np.float32
            )
        return {
            "image": np.asarray(example["image"], np.uint8),
            "crop_box": np.full((4,), np.nan, np.float32),
            "attributes": attributes,
            "attribute_mask": self._mask.copy(),
            "landmarks": landmarks,
            "index": np.int32(i),
        }

    def __repr__(self) -> str:
        return (
            f"TFDSCelebA(split={self.tfds_split!r}, data_dir={self.data_dir!r}, "
            f"schema={self.schema.name!r}, n={len(self)})"
        )


# ----------------------------------------------------------------------------------- PubFig / LFW
def _is_header(fields: Sequence[str]) -> bool:
    return (
        len(fields) >= 3
        and normalize_name(fields[0]) == "person"
        and normalize_name(fields[1]) == "imagenum"
    )


def _read_pubfig_bboxes(path: pathlib.Path) -> dict[tuple[str, int], np.ndarray]:
    """PubFig dev_urls.txt / eval_urls.txt: person, imagenum, url, x0,y0,x1,y1, md5 (tab-separated)."""
    if not path.is_file():
        raise DatasetError(
            f"bounding-box file {path} does not exist (expected PubFig's dev_urls.txt format)"
        )
    boxes = {}
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            fields = line.split("\t")
            try:
                person, imagenum, rect = fields[0].strip(), int(fields[1]), fields[3]
                box = np.array([float(v) for v in rect.split(",")], np.float32)
            except (IndexError, ValueError):
                box = None
            if box is None or box.shape != (4,) or box[2] <= box[0] or box[3] <= box[1]:
                raise DatasetError(
                    f"{path}:{line_no}: expected `person<TAB>imagenum<TAB>url<TAB>x0,y0,x1,y1<TAB>md5` "
                    "with x1 > x0 and y1 > y0"
                )
            boxes[(person, imagenum)] = box
    return boxes


class PubFigAttributes(_AttributeSource):
    """PubFig / LFW attribute files: `person<TAB>imagenum<TAB>73 scores` (> 0 = present).

    `#` lines are comments; a `#` line (or first line) starting with person, imagenum gives the
    column names, matched to the schema by name; without one the columns follow
    schema.PUBFIG73_FILE_COLUMNS. Exclusive groups are resolved by arg-max (schema.labels_from_scores).
    Images are found by `path_pattern` under `image_root` ({person}, {person_} = spaces replaced by
    underscores, {imagenum}); listed images missing on disk (PubFig's dead URLs) are skipped with a
    warning. `bbox_file` (PubFig's dev_urls.txt format) gives face boxes, grown to squares when
    `square_boxes`. Splits are by person (identity-disjoint), hashing names with `split_fractions`.
    """

    def __init__(
        self,
        attributes_file: str | os.PathLike,
        image_root: str | os.PathLike,
        *,
        schema: Any = "pubfig73",
        path_pattern: str = "{person_}/{person_}_{imagenum:04d}.jpg",
        bbox_file: str | os.PathLike | None = None,
        split: str = "all",
        split_fractions=(0.8, 0.1, 0.1),
        seed: int = 0,
        square_boxes: bool = True,
    ):
        self.attributes_file = pathlib.Path(attributes_file)
        self.image_root = pathlib.Path(image_root)
        self.split = check_split(split)
        self.path_pattern = path_pattern
        if not self.attributes_file.is_file():
            raise DatasetError(
                f"attribute file {self.attributes_file} does not exist (expected a tab-separated "
                "PubFig/LFW attribute file: person, imagenum, 73 scores)"
            )
        if not self.image_root.is_dir():
            raise DatasetError(
                f"image folder {self.image_root} does not exist "
                f"(images are found by {path_pattern!r} under it)"
            )
        try:
            path_pattern.format(person="A B", person_="A_B", imagenum=1)
        except (KeyError, IndexError, ValueError) as err:
            raise DatasetError(
                f"bad path_pattern {path_pattern!r} ({err}); use the fields {{person}}, {{person_}} "
                "(spaces as underscores) and {imagenum} (an int, e.g. {imagenum:04d})"
            ) from None
        schema = get_schema(schema)
        origin = str(self.attributes_file)

        header, rows = None, []
        with open(self.attributes_file, "r", encoding="utf-8", errors="replace") as f:
            for line_no, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                stripped = line.lstrip()
                if stripped.startswith("#"):
                    fields = [t.strip() for t in stripped[1:].split("\t") if t.strip()]
                    if header is None and _is_header(fields):
                        header = fields[2:]
                    continue
                fields = line.split("\t")
                if header is None and not rows and _is_header([t.strip() for t in fields]):
                    header = [t.strip() for t in fields[2:] if t.strip()]
                    continue
                rows.append((line_no, fields))
        columns = list(header) if header is not None else list(PUBFIG73_FILE_COLUMNS)
        column_of, _ = _map_columns(columns, schema, origin)
        if not rows:
            raise DatasetError(f"{origin}: no attribute rows (only comments or a header)")

        people, numbers, paths = [], [], []
        scores = np.full((len(rows), schema.num_attributes), np.nan, np.float32)
        mapped = np.flatnonzero(column_of >= 0)
        expected = 2 + len(columns)
        for r, (line_no, fields) in enumerate(rows):
            while len(fields) > expected and not fields[-1].strip():
                fields = fields[:-1]  # tolerate trailing tabs
            if len(fields) != expected:
                raise DatasetError(
                    f"{origin}:{line_no}: expected {expected} tab-separated fields (person, imagenum, "
                    f"{len(columns)} scores), found {len(fields)}"
                )
            try:
                imagenum = int(fields[1])
                values = np.array([float(v) for v in fields[2:]], np.float32)
            except ValueError:
                raise DatasetError(
                    f"{origin}:{line_no}: imagenum must be an integer and the scores numbers"
                ) from None
            person = fields[0].strip()
            scores[r, mapped] = values[column_of[mapped]]
            people.append(person)
            numbers.append(imagenum)
            paths.append(str(self.image_root / path_pattern.format(
                person=person, person_=person.replace(" ", "_"), imagenum=imagenum)))
        attributes, mask = schema.labels_from_scores(scores)

        exists = np.array([os.path.isfile(p) for p in paths], bool)
        missing = [p for p, e in zip(paths, exists) if not e]
        _warn_dropped(f"images of {self.attributes_file.name}", missing, len(paths))
        if not exists.any():
            raise DatasetError(
                f"none of the {len(paths)} images of {origin} exists under {self.image_root} with "
                f"path_pattern {path_pattern!r} (first expected: {paths[0]})"
            )
        keep = np.flatnonzero(exists)
        people = [people[i] for i in keep]
        numbers = [numbers[i] for i in keep]
        boxes = None
        if bbox_file is not None:
            by_key = _read_pubfig_bboxes(pathlib.Path(bbox_file))
            boxes = np.full((len(keep), 4), np.nan, np.float32)
            for j, key in enumerate(zip(people, numbers)):
                if key in by_key:
                    boxes[j] = imageio.square_box(by_key[key]) if square_boxes else by_key[key]
            with_box = int(np.isfinite(boxes[:, 0]).sum())
            logging.info("%d of %d images have a face box in %s", with_box, len(keep), bbox_file)
        self._init_arrays(schema, [paths[i] for i in keep], attributes[keep], mask[keep], None, boxes)
        self.people = people
        self.imagenums = numbers
        assignment = hash_split(people, split_fractions, seed)  # identity-disjoint splits
        self._selected = _select_split(self.split, assignment, f"PubFig {origin}")

    def __repr__(self) -> str:
        return (
            f"PubFigAttributes(attributes_file={str(self.attributes_file)!r}, "
            f"image_root={str(self.image_root)!r}, split={self.split!r}, "
            f"schema={self.schema.name!r}, n={len(self)})"
        )


# ---------------------------------------------------------------------------------- real vs fake
class _DetectionSource(_Source):
    """Paths with real/fake labels and generator names, split stratified by (label, generator)."""

    def _init_detection(self, paths, labels, generators, split, split_fractions, seed, origin):
        self.split = check_split(split)
        fake_generators = sorted({g for g, y in zip(generators, labels) if y == FAKE})
        if "real" in fake_generators:
            raise DatasetError(f"{origin}: a fake generator may not be called 'real'")
        self.generator_names = ("real",) + tuple(fake_generators)
        gid = {name: i for i, name in enumerate(self.generator_names)}
        self._paths = list(paths)
        self._labels = np.asarray(labels, np.int32)
        self._generator_ids = np.array(
            [0 if y == REAL else gid[g] for g, y in zip(generators, labels)], np.int32
        )
        if self.split == "all":
            self._selected = np.arange(len(self._paths), dtype=np.int64)
        else:
            keys = [(int(y), self.generator_names[g]) for y, g in zip(self._labels, self._generator_ids)]
            parts = stratified_split(keys, split_fractions, seed)
            assignment = np.full((len(keys),), -1, np.int8)
            for s, idx in parts.items():
                assignment[idx] = SPLITS.index(s)
            self._selected = _select_split(self.split, assignment, origin)

    def _record(self, i: int) -> dict:
        return {
            "path": self._paths[i],
            "label": np.int32(self._labels[i]),
            "generator_id": np.int32(self._generator_ids[i]),
            "index": np.int32(i),
        }

    @property
    def paths(self) -> list[str]:
        return [self._paths[i] for i in self._selected]

    @property
    def labels(self) -> np.ndarray:
        """int32 (N,) labels of this split (0 real, 1 fake)."""
        return self._labels[self._selected]

    @property
    def generator_ids(self) -> np.ndarray:
        return self._generator_ids[self._selected]


def _list_images(folder: pathlib.Path) -> list[str]:
    """Image files under `folder`, recursively, as sorted POSIX paths relative to it.

    Hidden files and folders (names starting with '.', such as macOS '._x.jpg' sidecars) are skipped.
    Symlinked folders are followed once.
    """
    found, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = pathlib.Path(dirpath).relative_to(folder)
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append((rel_dir / name).as_posix())
    return sorted(found)


def _child_dir(root: pathlib.Path, name: str) -> pathlib.Path | None:
    exact = root / name
    if exact.is_dir():
        return exact
    for child in sorted(root.iterdir()):
        if child.name.lower() == name and child.is_dir():
            return child
    return None


class RealFakeFolder(_DetectionSource):
    """ROOT/real/** and ROOT/fake/** (or ROOT/fake/<generator>/**), any depth, sorted.

    Files directly under fake/ belong to generator 'fake'; files under fake/<name>/ to <name>.
    A root with only one of real/ and fake/ is accepted with a warning (evaluating on a folder of
    one generator's fakes is legitimate); neither is an error. Split: stratified_split by
    (label, generator) with `split_fractions` and `seed`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        split: str = "train",
        split_fractions=(0.8, 0.1, 0.1),
        seed: int = 0,
    ):
        self.root = pathlib.Path(root)
        expected = "expected ROOT/real/ and ROOT/fake/ (or ROOT/fake/<generator>/) with images"
        if not self.root.is_dir():
            raise DatasetError(f"real/fake root {self.root} is not a folder; {expected}")
        real_dir, fake_dir = _child_dir(self.root, "real"), _child_dir(self.root, "fake")
        if real_dir is None and fake_dir is None:
            raise DatasetError(f"{self.root} has neither real/ nor fake/; {expected}")
        for name, d in (("real", real_dir), ("fake", fake_dir)):
            if d is None:
                other = "fake" if name == "real" else "real"
                logging.warning("%s has no %s/ folder: every image is %s", self.root, name, other)
        paths, labels, generators = [], [], []
        if real_dir is not None:
            for rel in _list_images(real_dir):
                paths.append(str(real_dir / rel))
                labels.append(REAL)
                generators.append("real")
        if fake_dir is not None:
            for rel in _list_images(fake_dir):
                parts = rel.split("/")
                paths.append(str(fake_dir / rel))
                labels.append(FAKE)
                generators.append(parts[0] if len(parts) > 1 else "fake")
        if not paths:
            raise DatasetError(
                f"{self.root} holds no images ({', '.join(IMAGE_EXTENSIONS)}); {expected}"
            )
        self._init_detection(
            paths, labels, generators, split, split_fractions, seed, f"real/fake {self.root}"
        )

    def __repr__(self) -> str:
        return f"RealFakeFolder(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"


_LABEL_WORDS = {"real": REAL, "0": REAL, "fake": FAKE, "1": FAKE}


class ManifestSource(_DetectionSource):
    """A CSV manifest `path,label[,generator]` (header optional; label real/fake or 0/1).

    Relative paths are resolved against the CSV's folder. Fake rows without a generator belong to
    'fake'; the generator column of real rows is ignored. Rows whose file is missing are skipped with
    a warning. `#` lines are comments. Split as in RealFakeFolder.
    """

    def __init__(
        self,
        csv_path: str | os.PathLike,
        *,
        split: str = "train",
        split_fractions=(0.8, 0.1, 0.1),
        seed: int = 0,
    ):
        self.csv_path = pathlib.Path(csv_path)
        if not self.csv_path.is_file():
            raise DatasetError(
                f"manifest {self.csv_path} does not exist (expected a CSV with rows path,label[,generator])"
            )
        base = self.csv_path.parent
        columns = {"path": 0, "label": 1, "generator": 2}
        paths, labels, generators = [], [], []
        with open(self.csv_path, "r", encoding="utf-8-sig", newline="") as f:
            first = True
            for line_no, row in enumerate(csv.reader(f), 1):
                cells = [c.strip() for c in row]
                if not any(cells) or cells[0].startswith("#"):
                    continue
                if first:
                    first = False
                    lowered = [c.lower() for c in cells]
                    if "path" in lowered and "label" in lowered:
                        columns = {
                            k: lowered.index(k) for k in ("path", "label", "generator") if k in lowered
                        }
                        continue
                try:
                    path_text, label_text = cells[columns["path"]], cells[columns["label"]]
                except IndexError:
                    raise DatasetError(
                        f"{self.csv_path}:{line_no}: expected path,label[,generator], got {','.join(row)!r}"
                    ) from None
                label = _LABEL_WORDS.get(label_text.lower())
                if label is None or not path_text:
                    raise DatasetError(
                        f"{self.csv_path}:{line_no}: label must be real, fake, 0 or 1 (got {label_text!r}) "
                        "and path non-empty"
                    )
                gcol = columns.get("generator")
                generator = cells[gcol] if gcol is not None and gcol < len(cells) else ""
                path = pathlib.Path(os.path.expanduser(path_text))
                paths.append(str(path if path.is_absolute() else base / path))
                labels.append(label)
                generators.append("real" if label == REAL else (generator or "fake"))
        if not paths:
            raise DatasetError(f"manifest {self.csv_path} lists no images")
        exists = [os.path.isfile(p) for p in paths]
        missing = [p for p, e in zip(paths, exists) if not e]
        _warn_dropped(f"files of {self.csv_path.name}", missing, len(paths))
        if not any(exists):
            raise DatasetError(
                f"none of the {len(paths)} files in {self.csv_path} exists (relative paths are "
                f"resolved against {base}; first: {paths[0]})"
            )
        keep = [i for i, e in enumerate(exists) if e]
        self._init_detection(
            [paths[i] for i in keep], [labels[i] for i in keep], [generators[i] for i in keep],
            split, split_fractions, seed, f"manifest {self.csv_path}",
        )

    def __repr__(self) -> str:
        return f"ManifestSource(csv_path={str(self.csv_path)!r}, split={self.split!r}, n={len(self)})"


# ----------------------------------------------------------------------------------- bad files
class Subset:
    """The records of `source` at `indices` (e.g. the ok_indices of scan_images); attributes such
    as generator_names or schema pass through."""

    def __init__(self, source, indices: Sequence[int]):
        self.source = source
        self.indices = np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, index) -> dict:
        return self.source[int(self.indices[int(index)])]

    def __getattr__(self, name: str):
        if name.startswith("_") or name in ("source", "indices"):
            raise AttributeError(name)
        return getattr(self.source, name)

    def __repr__(self) -> str:
        return f"Subset({self.source!r}, n={len(self)})"


def _check_record(record: dict) -> str | None:
    """None when the record's image decodes, else the reason."""
    if "image" in record:
        image = np.asarray(record["image"])
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            return f"in-memory image has dtype {image.dtype} and shape {image.shape}, not uint8 (H, W, 3)"
        return None
    try:
        imageio.decode_image(record["path"])
    except imageio.ImageDecodeError as err:
        return err.reason
    return None


def scan_images(source, strict: bool = False, max_report: int = 5, num_threads: int | None = None):
    """Tries to decode every record: returns (ok_indices int64 array, bad [(path, reason)]).

    Logs the number of bad files and the first `max_report` paths. strict=True raises
    ImageDecodeError for the first bad file (in index order) instead.
    """
    n = len(source)
    threads = num_threads or min(4, os.cpu_count() or 1)

    def check(i):
        record = source[i]
        return record.get("path", f"<record {i}>"), _check_record(record)

    ok, bad = [], []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for i, (path, reason) in enumerate(pool.map(check, range(n))):
            if reason is None:
                ok.append(i)
                continue
            if strict:
                pool.shutdown(wait=True, cancel_futures=True)
                raise imageio.ImageDecodeError(path, reason)
            bad.append((path, reason))
    if bad:
        logging.warning(
            "%d of %d images cannot be decoded and are skipped; first %d: %s",
            len(bad), n, min(len(bad), max_report),
            "; ".join(f"{p} ({r})" for p, r in bad[:max_report]),
        )
    else:
        logging.info("all %d images of %r decode", n, source)
    return np.asarray(ok, np.int64), bad
