"""The one input pipeline: source -> grain (shuffle, decode, resize, augment, batch) -> sharded jax.Arrays.

Records flow through grain as dicts of numpy values. Images stay uint8 on the host (a quarter of the
bytes to move) and become float32 NHWC in [0, 1] on the devices.

Global batches do not depend on how many processes read them (GlobalBatchSampler): global batch k holds
the records at positions k*B .. k*B+B-1 of one seeded order of the whole split, and process p of P reads
its contiguous slice p*B/P .. (p+1)*B/P-1 of it. So 2 processes x 4 devices train on exactly the batches
that 1 process x 8 devices does, and the data position is one number, the count of global batches
consumed, which a checkpoint written by any number of processes restores in any other.
Evaluation passes are padded to whole global batches (rows with `valid` False) and every process yields
the same number of batches, so no process waits in a collective for a batch its peer never sends.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
import threading
from typing import Any, Iterator

import grain
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxface import parallel
from jaxface.config import option
from jaxface.data.schema import Schema, get_schema
from jaxface.registry import Registry, UnknownNameError

SPLITS = ("train", "val", "test")
ATTRIBUTE_SOURCES = ("synthfaces", "celeba", "celeba_tfds", "pubfig")
DETECTION_SOURCES = ("synthfakes", "realfake", "manifest")
SOURCES = ATTRIBUTE_SOURCES + DETECTION_SOURCES
# Record fields that become batch arrays; strings (paths) stay on the host.
_ARRAY_FIELDS = (
    "image", "attributes", "attribute_mask", "label", "generator_id", "index", "landmarks",
)


class DataConfigError(ValueError):
    """A data section of a config that cannot describe a dataset."""


class UnreadableDataError(DataConfigError):
    """Too many images of a split could not be decoded."""


# More than this fraction of unreadable images among the first SKIP_CHECK_READS reads of a split stops
# the run (data.max_skip_fraction; 1.0 only warns).
DEFAULT_MAX_SKIP_FRACTION = 0.5
SKIP_CHECK_READS = 64



def _require(cfg, key: str, source: str) -> str:
    value = option(cfg, key)
    if value in (None, ""):
        raise DataConfigError(f"data.source={source!r} needs --config.data.{key}=PATH")
    return value


def _split_seed(base: int, split: str) -> int:
    return int(base) * 4 + SPLITS.index(split)


def _rendered_size(data_cfg) -> int:
    return int(option(data_cfg, "render_size", option(data_cfg, "image_size", 64)))


def _schema_option(data_cfg, default: str):
    schema = option(data_cfg, "schema", None)
    return (schema.to_dict() if hasattr(schema, "to_dict") else schema) or default


# One builder per data.source: builder(data_cfg, split, seed, split_fractions) -> source.
def _synthfaces(data_cfg, split, seed, fractions):
    from jaxface.data.synthfaces import SynthFaces

    rates = option(data_cfg, "attribute_rates", None)
    rates = rates.to_dict() if hasattr(rates, "to_dict") else rates
    return SynthFaces(int(option(data_cfg, f"num_{split}", 1000)), resolution=_rendered_size(data_cfg),
                      seed=_split_seed(seed, split), attribute_rates=rates or None)


def _synthfakes(data_cfg, split, seed, fractions):
    from jaxface.data.synthfakes import SynthRealFake

    return SynthRealFake(
        int(option(data_cfg, f"num_{split}", 1000)), resolution=_rendered_size(data_cfg),
        seed=_split_seed(seed, split),
        generators=tuple(option(data_cfg, "generators", ("upsample", "faceswap"))),
        exclude_generators=tuple(option(data_cfg, f"exclude_generators_{split}", ())),
    )


def _celeba(data_cfg, split, seed, fractions):
    from jaxface.data import sources

    return sources.CelebAFolder(_require(data_cfg, "root", "celeba"), split=split,
                                schema=_schema_option(data_cfg, "celeba40"), split_fractions=fractions,
                                seed=seed)


def _celeba_tfds(data_cfg, split, seed, fractions):
    from jaxface.data import sources

    return sources.TFDSCelebA({"val": "validation"}.get(split, split),
                              data_dir=option(data_cfg, "tfds_data_dir"),
                              schema=_schema_option(data_cfg, "celeba40"))


def _pubfig(data_cfg, split, seed, fractions):
    from jaxface.data import sources

    return sources.PubFigAttributes(
        _require(data_cfg, "attributes_file", "pubfig"), _require(data_cfg, "root", "pubfig"),
        schema=_schema_option(data_cfg, "pubfig73"),
        path_pattern=option(data_cfg, "path_pattern", "{person_}/{person_}_{imagenum:04d}.jpg"),
        bbox_file=option(data_cfg, "bbox_file"),
    )


def _realfake(data_cfg, split, seed, fractions):
    from jaxface.data import sources

    return sources.RealFakeFolder(_require(data_cfg, "root", "realfake"), split=split,
                                  split_fractions=fractions, seed=seed)


def _manifest(data_cfg, split, seed, fractions):
    from jaxface.data import sources

    return sources.ManifestSource(_require(data_cfg, "manifest", "manifest"), split=split,
                                  split_fractions=fractions, seed=seed)


FOLDER_DETECTION_SOURCES = ("realfake", "manifest")
CROP_MODES = ("resize", "patches")
DEFAULT_PATCH_GRID = 3


class UnknownSourceError(DataConfigError, UnknownNameError):
    """data.source names no source."""


# The builders import their source module when called: rendering sources need no file-reading code
# (and TFDS) loaded, and start-up stays fast.
SOURCE_BUILDERS = Registry("data.source", {
    "synthfaces": _synthfaces, "celeba": _celeba, "celeba_tfds": _celeba_tfds, "pubfig": _pubfig,
    "synthfakes": _synthfakes, "realfake": _realfake, "manifest": _manifest,
}, error=UnknownSourceError, plural="sources")


def build_source(data_cfg, split: str):
    """A random-access source for one split, from a config's data section."""
    if split not in SPLITS + ("all",):
        raise DataConfigError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    name = option(data_cfg, "source", "synthfaces")
    builder = SOURCE_BUILDERS[name]
    source = builder(data_cfg, split, int(option(data_cfg, "seed", 0)),
                     tuple(option(data_cfg, "split_fractions", (0.8, 0.1, 0.1))))
    self_made = tuple(option(data_cfg, "self_made", ()) or ())
    unseen = tuple(option(data_cfg, "unseen_generators", ()) or ())
    if self_made or unseen:
        if name not in FOLDER_DETECTION_SOURCES:
            raise DataConfigError(
                f"data.self_made and data.unseen_generators apply to photo folders "
                f"({', '.join(FOLDER_DETECTION_SOURCES)}), not data.source={name!r}"
                + ("; synthfakes leaves a generator out with data.exclude_generators_train/_val"
                   if name == "synthfakes" else ""))
        from jaxface.data import selfmade

        try:
            source = selfmade.WithSelfMadeFakes(source, self_made, unseen=unseen, seed=int(option(data_cfg, "seed", 0)))
        except selfmade.SelfMadeConfigError as err:
            raise DataConfigError(str(err)) from None
    fake_folders = option(data_cfg, "fake_folders", None)
    if fake_folders:
        if name not in DETECTION_SOURCES:
            raise DataConfigError(f"data.fake_folders adds fakes to a detection source ({', '.join(DETECTION_SOURCES)}), "
                                  f"not to data.source={name!r}")
        from jaxface.data import folder_fakes

        folders = fake_folders.to_dict() if hasattr(fake_folders, "to_dict") else dict(fake_folders)
        try:
            source = folder_fakes.WithFolderFakes(
                source, folders, split=split, seed=int(option(data_cfg, "seed", 0)),
                fractions=tuple(option(data_cfg, "split_fractions", (0.8, 0.1, 0.1))))
        except folder_fakes.FolderFakesError as err:
            raise DataConfigError(str(err)) from None
    return source


def schema_for(data_cfg) -> Schema:
    """The attribute schema that the data section's labels follow."""
    schema = option(data_cfg, "schema", None)
    if schema is None:
        schema = {"synthfaces": "synthfaces", "pubfig": "pubfig73"}.get(
            option(data_cfg, "source", "synthfaces"), "celeba40"
        )
    return get_schema(schema)


# --------------------------------------------------------------------------------------------- ops
class DecodeAndResize(grain.transforms.Map):
    """Decodes a path (or takes a rendered image), crops, resizes, and keeps the batchable fields.

    A file that fails to decode becomes a record marked bad, dropped by the next op; the first few
    paths and a running count are logged, so a long run never dies on one bad file (unless strict).
    """

    def __init__(self, image_size: int, strict: bool = False, max_logged: int = 5, *,
                 max_skip_fraction: float = DEFAULT_MAX_SKIP_FRACTION, min_reads: int = SKIP_CHECK_READS,
                 what: str = "the data", crop: str = "resize", patch_grid: int = DEFAULT_PATCH_GRID,
                 train: bool = False):
        self.image_size = int(image_size)
        self.crop = check_crop(crop)
        self.patch_grid = int(patch_grid)
        if self.patch_grid < 1:
            raise DataConfigError(f"data.patch_grid must be a positive integer, got {patch_grid}")
        self.train = bool(train)
        self.strict = strict
        self.max_logged = max_logged
        self.max_skip_fraction = float(max_skip_fraction)
        self.min_reads = max(int(min_reads), 1)
        self.what = what
        self.num_bad = 0
        self.num_read = 0
        self.reasons: list[str] = []

    def _check_skip_rate(self) -> None:
        """Too many unreadable files is an error, not a warning: an all-unreadable training split would
        otherwise be read epoch after epoch for ever without producing a batch."""
        if self.num_read >= self.min_reads and self.num_bad > self.max_skip_fraction * self.num_read:
            raise UnreadableDataError(
                f"{self.what}: {self.num_bad} of the first {self.num_read} images could not be read (more "
                f"than data.max_skip_fraction={self.max_skip_fraction:g}); first reasons: "
                + "; ".join(self.reasons) + ". Fix or remove those files, or point data.root elsewhere")

    def map(self, record: dict) -> dict:
        from jaxface.data import imageio

        try:
            if "image" in record:
                image = np.asarray(record["image"], np.uint8)
                crop = None
            else:
                image = imageio.decode_image(record["path"])
                crop = record.get("crop_box")
                if crop is not None and not np.all(np.isfinite(crop)):
                    crop = None
        except imageio.ImageDecodeError as err:
            if self.strict:
                raise
            self.num_read += 1
            self.num_bad += 1
            if len(self.reasons) < 3:
                self.reasons.append(str(err))
            self._check_skip_rate()
            if self.num_bad <= self.max_logged or self.num_bad % 1000 == 0:
                logging.warning("skipping unreadable image (%d so far): %s", self.num_bad, err)
            return {"_bad": True}
        self.num_read += 1
        if self.num_bad:
            self._check_skip_rate()  # reads finish in any order across reader threads
        h, w = image.shape[:2]
        out = {k: np.asarray(record[k]) for k in _ARRAY_FIELDS if k in record and k != "image"}
        if "_pad" in record:  # an evaluation pass (PaddedSource): padding rows are not counted
            out["valid"] = np.bool_(not record["_pad"])
        if self.crop == "patches":
            # Native resolution: resizing would smear the traces a generator's upsampling leaves.
            out.pop("landmarks", None)
            image = pad_to_min_side(image, self.image_size)
            out["image"] = image if self.train else patch_grid(image, self.image_size, self.patch_grid)
            out["_bad"] = False
            return out
        if image.shape[:2] != (self.image_size, self.image_size) or crop is not None:
            image, out_landmarks = _crop_resize(image, self.image_size, crop, record.get("landmarks"))
            if "landmarks" in out:
                out["landmarks"] = out_landmarks
        out["image"] = image
        out["_bad"] = False
        return out


def _crop_resize(image, size, crop, landmarks):
    from jaxface.data import imageio

    h, w = image.shape[:2]
    if crop is None:  # the centre square, as imageio.center_crop_resize takes it
        side = min(h, w)
        crop = np.array([(w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2], np.float32)
    resized = imageio.center_crop_resize(image, size, crop_box=crop)
    if landmarks is None:
        return resized, None
    x0, y0, x1, y1 = [float(v) for v in crop]
    lm = np.asarray(landmarks, np.float32).copy()
    lm[:, 0] = (lm[:, 0] - x0) * size / max(x1 - x0, 1e-6)
    lm[:, 1] = (lm[:, 1] - y0) * size / max(y1 - y0, 1e-6)
    return resized, lm


def check_crop(crop: str) -> str:
    if crop not in CROP_MODES:
        raise DataConfigError(f"data.crop={crop!r}; valid: {', '.join(CROP_MODES)} ('resize': the centre "
                              "square resized to data.image_size; 'patches': native-resolution patches)")
    return crop


def pad_to_min_side(image: np.ndarray, size: int) -> np.ndarray:
    """An image with a side below `size` is mirrored out to `size` (never resampled)."""
    h, w = image.shape[:2]
    if h >= size and w >= size:
        return image
    ph, pw = max(0, size - h), max(0, size - w)
    mode = "reflect" if ph < h and pw < w else "symmetric" if ph <= h and pw <= w else "wrap"
    return np.pad(image, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode=mode)


def _even_offsets(length: int, size: int, count: int) -> list[int]:
    """`count` patch starts spread over [0, length - size], rounded down to even numbers so the 2x2 pixel
    grid (where upsampling traces live) is the same in every patch."""
    top = max(length - size, 0)
    starts = np.linspace(0, top, count) if count > 1 else np.array([top / 2])
    return [int(v) // 2 * 2 for v in starts]


def patch_grid(image: np.ndarray, size: int, grid: int) -> np.ndarray:
    """(H, W, 3), H and W >= size -> (grid * grid, size, size, 3) native-resolution patches, corners to
    centre; the model scores the image as the mean of its patches' logits."""
    h, w = image.shape[:2]
    return np.stack([image[y:y + size, x:x + size]
                     for y in _even_offsets(h, size, grid) for x in _even_offsets(w, size, grid)])


class RandomPatch(grain.transforms.RandomMap):
    """One native-resolution training patch at an even offset (training only, before augmentation)."""

    def __init__(self, size: int):
        self.size = int(size)

    def random_map(self, record: dict, rng: np.random.Generator) -> dict:
        image = record["image"]
        h, w = image.shape[:2]
        y = int(rng.integers(0, (h - self.size) // 2 + 1)) * 2
        x = int(rng.integers(0, (w - self.size) // 2 + 1)) * 2
        out = dict(record)
        out["image"] = np.ascontiguousarray(image[y:y + self.size, x:x + self.size])
        return out


def image_preparer(data_cfg, *, strict: bool = True) -> "DecodeAndResize":
    """What evaluation, predict and serve do to one decoded image: the centre square resized, or the
    patch grid, as the data section says (the same as the evaluation pipeline)."""
    return DecodeAndResize(int(data_cfg.image_size), strict=strict, crop=option(data_cfg, "crop", "resize"),
                           patch_grid=int(option(data_cfg, "patch_grid", DEFAULT_PATCH_GRID)))


class DropBad(grain.transforms.Filter):
    def filter(self, record: dict) -> bool:
        return not record.get("_bad", False)


class StripFlags(grain.transforms.Map):
    def map(self, record: dict) -> dict:
        record.pop("_bad", None)
        return record


# ---------------------------------------------------------------------------------------- loaders
# Rendered sources are pure-Python/numpy work that holds the GIL: one reader thread renders 2.3x
# faster than grain's default 16 (measured on 2 cores), while file decoding (PIL releases the GIL)
# gains from many threads.
RENDERED_SOURCES = ("synthfaces", "synthfakes")
FILE_READ_THREADS = 16  # grain's own default
# Rendered splits up to this size (all worker processes together) stay in memory after their first
# read (data.cache_mb; 0: never).
DEFAULT_CACHE_MB = 1024
RENDER_BLOCK = 64  # items rendered together on a cache miss (0.7 ms per face at 64 px, not 1.7 alone)


class RenderCache:
    """A rendered source read through its batched renderer and kept in memory.

    grain's DataLoader reads one record at a time, and a procedural face rendered alone costs 2.4x its
    share of a rendered block; an epoch of the tiny config's 20,000 faces took 135 ms per batch of 64,
    longer than the training step. On a miss the block of RENDER_BLOCK consecutive items around the
    index is rendered in one call and every item is kept, so each face is rendered once per process and
    later epochs (and later evaluations of a split) read memory. Records are exactly the source's: the
    renderer draws every item from its own seed. Cached images are read-only, so an operation that
    changed one in place would fail instead of corrupting the next epoch.
    """

    def __init__(self, source, block: int = RENDER_BLOCK):
        self.source = source
        self.block = max(1, int(block))
        self._records: list = [None] * len(source)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index):
        index = int(index)
        record = self._records[index]
        if record is None:
            with self._lock:  # several reader threads may miss the same block
                record = self._records[index]
                if record is None:
                    start = index - index % self.block
                    stop = min(start + self.block, len(self._records))
                    for offset, item in enumerate(self.source._getitems(range(start, stop))):
                        for value in item.values():
                            if isinstance(value, np.ndarray):
                                value.flags.writeable = False
                        self._records[start + offset] = item
                    record = self._records[index]
        return record

    def __getstate__(self):  # a worker process starts with an empty cache of its own
        return {"source": self.source, "block": self.block}

    def __setstate__(self, state):
        self.__init__(state["source"], state["block"])

    def __repr__(self) -> str:
        return f"RenderCache({self.source!r})"


def split_cache_bytes(source, image_size: int) -> int:
    """Bytes a RenderCache of `source` would hold (uint8 RGB images dominate)."""
    resolution = int(getattr(source, "resolution", image_size))
    return len(source) * resolution * resolution * 3


@dataclasses.dataclass
class LoaderSpec:
    batch_size: int  # global
    image_size: int
    seed: int = 0
    train: bool = True
    worker_count: int = 0
    strict: bool = False
    max_skip_fraction: float = DEFAULT_MAX_SKIP_FRACTION
    what: str = "the data"  # names the split in errors
    augment: Any = None  # a grain transform applied after resizing (training only)
    read_threads: int = FILE_READ_THREADS  # grain's reader threads per process
    cache_mb: float = 0  # keep a rendered split in memory when it fits (RenderCache); 0: never
    crop: str = "resize"  # CROP_MODES
    patch_grid: int = DEFAULT_PATCH_GRID  # evaluation patches per side in 'patches' mode


class GlobalBatchSampler:
    """grain sampler whose global batches are the same for any number of processes (module docstring).

    grain hands process p the sampler indices l*P + p for its local indices l = 0, 1, ...; with W reader
    workers, worker w reads the local indices l = w (mod W) and batches them, and the loader yields the
    workers' batches in turn. So local index l is slot s of the q-th batch of worker w, which is global
    batch start_batch + q*W + w; its record is the one at position g = batch*B + p*b + s of the split's
    order (b = B/P). Training orders every epoch by a seeded shuffle (grain's own IndexSampler over the
    whole split, whose per-record augmentation seed then depends on g alone); evaluation reads the split
    in order, and positions past its end are padding (the record key len(source), see PaddedSource).
    """

    def __init__(self, num_records: int, batch_size: int, *, train: bool, seed: int, start_batch: int = 0,
                 process_index: int = 0, process_count: int = 1, workers: int = 0):
        self.num_records, self.batch_size, self.train = int(num_records), int(batch_size), bool(train)
        self.seed, self.start_batch = int(seed), int(start_batch)
        self.process_index, self.process_count = int(process_index), int(process_count)
        self.workers = max(1, int(workers))
        self.per_process = self.batch_size // self.process_count
        self._order = grain.samplers.IndexSampler(self.num_records, shuffle=True, num_epochs=None,
                                                  seed=self.seed) if self.train else None
        # Evaluation: whole rounds of the workers' batches up to the split's last global batch.
        remaining = max(0, math.ceil(self.num_records / self.batch_size) - self.start_batch)
        self.local_length = math.ceil(remaining / self.workers) * self.workers * self.per_process

    def __len__(self) -> int:
        return sys.maxsize if self.train else self.local_length * self.process_count

    def position(self, index: int) -> int:
        """The split position g read for grain's sampler index (see the class docstring)."""
        local, process = divmod(int(index), self.process_count)
        n, worker = divmod(local, self.workers)
        q, slot = divmod(n, self.per_process)
        batch = self.start_batch + q * self.workers + worker
        return batch * self.batch_size + process * self.per_process + slot

    def __getitem__(self, index: int):
        if index < 0 or index >= len(self):
            raise IndexError(f"sampler index {index} outside [0, {len(self)})")
        g = self.position(index)
        if self.train:
            return self._order[g]
        key = g if g < self.num_records else self.num_records  # past the end: padding
        return grain.RecordMetadata(index=g, record_key=key)

    def __repr__(self) -> str:
        return (f"GlobalBatchSampler(num_records={self.num_records}, batch_size={self.batch_size}, "
                f"train={self.train}, seed={self.seed}, start_batch={self.start_batch}, "
                f"process={self.process_index}/{self.process_count}, workers={self.workers})")


class PaddedSource:
    """An evaluation source one record longer: index len(source) is padding (a copy of record 0 marked
    `_pad`, so it decodes and batches like the rest and comes out with `valid` False)."""

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source) + 1

    def __getitem__(self, index):
        index = int(index)
        if index == len(self.source):
            return dict(self.source[0], _pad=True)
        return dict(self.source[index], _pad=False)

    def __repr__(self) -> str:
        return f"PaddedSource({self.source!r})"


class Loader:
    """One split's records, decoding and batching: grain DataLoaders that start at any global batch."""

    def __init__(self, source, spec: LoaderSpec):
        if len(source) == 0:
            raise DataConfigError("the dataset is empty: no records to read")
        self.spec = spec
        self.num_records = len(source)
        # Each grain worker process holds a cache of its own: the budget covers all of them.
        copies = max(1, spec.worker_count)
        if (spec.cache_mb > 0 and hasattr(source, "_getitems")
                and split_cache_bytes(source, spec.image_size) * copies <= spec.cache_mb * 2**20):
            source = RenderCache(source)
        self.records = source  # as read: a RenderCache when cached
        self.source = source if spec.train else PaddedSource(source)
        self.num_batches = None if spec.train else math.ceil(self.num_records / spec.batch_size)

    def dataloader(self, start_batch: int = 0) -> grain.DataLoader:
        spec = self.spec
        per_process = spec.batch_size // jax.process_count()
        sampler = GlobalBatchSampler(self.num_records, spec.batch_size, train=spec.train, seed=spec.seed,
                                     start_batch=start_batch, process_index=jax.process_index(),
                                     process_count=jax.process_count(), workers=spec.worker_count)
        shard = grain.sharding.ShardOptions(shard_index=jax.process_index(), shard_count=jax.process_count())
        decode = DecodeAndResize(spec.image_size, spec.strict, max_skip_fraction=spec.max_skip_fraction,
                                 min_reads=min(SKIP_CHECK_READS, self.num_records), what=spec.what,
                                 crop=spec.crop, patch_grid=spec.patch_grid, train=spec.train)
        ops: list = [decode, DropBad(), StripFlags()]
        if spec.train and spec.crop == "patches":
            ops.append(RandomPatch(spec.image_size))
        if spec.train and spec.augment is not None:
            ops.append(spec.augment)
        ops.append(grain.transforms.Batch(per_process, drop_remainder=spec.train))
        return grain.DataLoader(
            data_source=self.source, sampler=sampler, operations=ops, worker_count=spec.worker_count,
            shard_options=shard,
            read_options=grain.ReadOptions(num_threads=spec.read_threads, prefetch_buffer_size=500),
        )


def make_loader(source, spec: LoaderSpec) -> Loader:
    """This process's share of each global batch of `source` (see Loader and GlobalBatchSampler)."""
    return Loader(source, spec)


@functools.partial(jax.jit, static_argnums=())
def _images_to_float(images):
    return images.astype(jnp.float32) / 255.0


class ShardedBatches:
    """Iterates global, mesh-sharded batches: images float32 in [0, 1], plus a `valid` mask.

    Evaluation batches are padded to the full batch size (with `valid` False on the padding) so every
    step has one static shape that splits over the devices, and a pass is `loader.num_batches` batches
    long in every process: a process whose share lost records to unreadable files fills the rest with
    padding batches. `position` counts the global batches consumed since the split's start; `seek(k)`
    (or set_state) continues from global batch k, whatever the process count that got there.
    """

    def __init__(self, loader: Loader, mesh, batch_size: int):
        self.loader = loader
        self.mesh = mesh
        self.per_process = parallel.check_batch_size(batch_size, mesh)
        self._template = None  # a host batch's fields, for padding batches
        self.seek(0)

    def seek(self, position: int) -> None:
        self.position = int(position)
        self._iter = iter(self.loader.dataloader(self.position))

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        total = self.loader.num_batches
        if total is not None and self.position >= total:
            raise StopIteration
        try:
            host = next(self._iter)
        except StopIteration:
            if self._template is None:
                raise
            host = dict(self._template)  # peers may still have batches: take part, with padding only
        else:
            if self._template is None:
                self._template = {k: np.asarray(v)[:0] for k, v in host.items()}
        self.position += 1
        return self.to_global(host)

    def to_global(self, host: dict) -> dict:
        host = {k: np.asarray(v) for k, v in host.items()}
        n = len(host["image"])
        host["valid"] = np.asarray(host["valid"], bool) if "valid" in host else np.ones(n, bool)
        if n < self.per_process:
            pad = self.per_process - n
            host = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)]) for k, v in host.items()}
        batch = parallel.host_to_global(host, self.mesh)
        batch["image"] = _images_to_float(batch["image"])
        return batch

    def get_state(self) -> bytes:
        return json.dumps({"global_batches": self.position}).encode()

    def set_state(self, state: bytes) -> None:
        self.seek(int(json.loads(state)["global_batches"]))


def loader_spec_from_config(config, split: str, training: bool | None = None) -> LoaderSpec:
    """training (default: split == 'train') means shuffled, endless, drop-remainder batches."""
    data = config.data
    rendered = option(data, "source", "synthfaces") in RENDERED_SOURCES
    read_threads = option(data, "read_threads", None)
    read_threads = (1 if rendered else FILE_READ_THREADS) if read_threads is None else int(read_threads)
    if read_threads < 1:
        raise DataConfigError(f"data.read_threads must be a positive integer, got {read_threads}")
    cache_mb = float(option(data, "cache_mb", DEFAULT_CACHE_MB))
    if cache_mb < 0:
        raise DataConfigError(f"data.cache_mb must be 0 (no cache) or a positive size in MiB, got {cache_mb:g}")
    train = split == "train" if training is None else training
    batch = int(option(config, "eval_batch_size", config.batch_size)) if not train else int(config.batch_size)
    return LoaderSpec(
        batch_size=batch,
        image_size=int(data.image_size),
        seed=int(config.seed),
        train=train,
        worker_count=int(option(data, "worker_count", 0)),
        strict=bool(option(data, "strict", False)),
        max_skip_fraction=float(option(data, "max_skip_fraction", DEFAULT_MAX_SKIP_FRACTION)),
        what=f"the {split} split of data.source={option(data, 'source', 'synthfaces')!r}",
        read_threads=read_threads,
        cache_mb=cache_mb if rendered else 0,
        crop=check_crop(option(data, "crop", "resize")),
        patch_grid=int(option(data, "patch_grid", DEFAULT_PATCH_GRID)),
    )


def batches(config, split: str, mesh, *, source=None, augment=None, training: bool | None = None) -> ShardedBatches:
    """Sharded batches of one split (training: endless and shuffled; otherwise one ordered pass)."""
    source = build_source(config.data, split) if source is None else source
    if len(source) == 0:
        raise DataConfigError(
            f"the {split} split of data.source={option(config.data, 'source', 'synthfaces')!r} is empty"
        )
    spec = loader_spec_from_config(config, split, training)
    spec.augment = augment
    return ShardedBatches(make_loader(source, spec), mesh, spec.batch_size)


def predictions(config, split: str, mesh, predict, state, *, source) -> dict:
    """predict(state, batch) over one ordered pass of `source` -> host numpy outputs of its readable
    records (every process's rows); an error when none could be read."""
    outputs = parallel.gather_outputs(predict, state, batches(config, split, mesh, source=source, training=False))
    if not outputs:
        raise DataConfigError(f"the {split} split yielded no readable image")
    return outputs


def attribute_table(source) -> tuple[np.ndarray, np.ndarray]:
    """All labels of an attribute source, (N, K) attributes and mask, without decoding images."""
    if hasattr(source, "sample_attributes"):
        attrs = np.asarray(source.sample_attributes(np.arange(len(source))), np.float32)
        return attrs, np.ones_like(attrs, bool)
    if hasattr(source, "attribute_table"):
        return source.attribute_table()
    rows = [source[i] for i in range(len(source))]
    return (
        np.stack([r["attributes"] for r in rows]).astype(np.float32),
        np.stack([r["attribute_mask"] for r in rows]).astype(bool),
    )


def positive_rates(attributes: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-attribute fraction positive among labelled images, and the fraction labelled."""
    labelled = mask.sum(0)
    rates = np.where(labelled > 0, (attributes * mask).sum(0) / np.maximum(labelled, 1), np.nan)
    return rates, labelled / max(len(mask), 1)
