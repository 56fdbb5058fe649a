"""The grain pipeline: decode, skip bad files, shard over 8 devices, resume exactly."""
import numpy as np
import pytest
from PIL import Image

import jax

from jaxface import parallel
from jaxface.data import pipeline


class PathSource:
    """Attribute records pointing at image files (some of them broken)."""

    def __init__(self, paths, k=3):
        self.paths = [str(p) for p in paths]
        self.k = k

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        rng = np.random.default_rng(i)
        return {"path": self.paths[i], "crop_box": np.full(4, np.nan, np.float32),
                "attributes": (rng.random(self.k) > 0.5).astype(np.float32),
                "attribute_mask": np.ones(self.k, bool), "index": np.int64(i)}


def _write_images(tmp_path, n, bad=()):
    paths = []
    for i in range(n):
        p = tmp_path / f"img_{i:03d}.png"
        if i in bad:
            p.write_bytes(b"not an image")
        else:
            arr = np.full((20, 30, 3), i * 3 % 255, np.uint8)
            Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


def test_batches_are_sharded_over_8_devices(tmp_path):
    mesh = parallel.make_mesh()
    assert mesh.shape["data"] == 8
    source = PathSource(_write_images(tmp_path, 40))
    spec = pipeline.LoaderSpec(batch_size=16, image_size=8, seed=0, train=True)
    it = pipeline.ShardedBatches(pipeline.make_loader(source, spec), mesh, 16)
    batch = next(it)
    assert batch["image"].shape == (16, 8, 8, 3)
    assert batch["image"].dtype == np.float32
    assert float(batch["image"].max()) <= 1.0
    assert len(batch["image"].sharding.device_set) == 8
    assert batch["image"].sharding.spec[0] == "data"


def test_bad_files_are_skipped_and_counted(tmp_path, caplog):
    source = PathSource(_write_images(tmp_path, 12, bad={2, 5}))
    spec = pipeline.LoaderSpec(batch_size=8, image_size=8, seed=0, train=False)
    it = pipeline.ShardedBatches(pipeline.make_loader(source, spec), parallel.make_mesh(), 8)
    seen = []
    for batch in it:
        valid = np.asarray(batch["valid"])
        seen += list(np.asarray(batch["index"])[valid])
    assert sorted(seen) == [i for i in range(12) if i not in (2, 5)]


def test_an_unreadable_training_split_stops_instead_of_looping(tmp_path):
    # Every file broken: the endless training sampler would read epoch after epoch for ever.
    source = PathSource(_write_images(tmp_path, 6, bad=set(range(6))))
    spec = pipeline.LoaderSpec(batch_size=8, image_size=8, seed=0, train=True, what="the train split")
    batches = pipeline.ShardedBatches(pipeline.make_loader(source, spec), parallel.make_mesh(), 8)
    with pytest.raises(pipeline.UnreadableDataError,
                       match=r"the train split: 6 of the first 6 images could not be read .*first reasons: "):
        next(batches)


def test_a_skip_rate_above_the_limit_is_an_error_below_it_a_warning(tmp_path):
    paths = _write_images(tmp_path, 16, bad={0, 3, 6, 9, 12, 15})  # 6 of 16 unreadable
    for fraction, fails in ((0.25, True), (0.5, False)):
        spec = pipeline.LoaderSpec(batch_size=8, image_size=8, seed=0, train=False, max_skip_fraction=fraction)
        batches = pipeline.ShardedBatches(pipeline.make_loader(PathSource(paths), spec), parallel.make_mesh(), 8)
        if fails:
            with pytest.raises(pipeline.UnreadableDataError, match="max_skip_fraction=0.25"):
                list(batches)
        else:
            assert sum(int(np.asarray(b["valid"]).sum()) for b in batches) == 10


def test_strict_mode_raises_on_a_bad_file(tmp_path):
    from jaxface.data.imageio import ImageDecodeError

    source = PathSource(_write_images(tmp_path, 4, bad={1}))
    spec = pipeline.LoaderSpec(batch_size=8, image_size=8, seed=0, train=False, strict=True)
    with pytest.raises(ImageDecodeError):
        list(pipeline.ShardedBatches(pipeline.make_loader(source, spec), parallel.make_mesh(), 8))


def test_eval_batches_are_padded_and_cover_every_record_once(tmp_path):
    source = PathSource(_write_images(tmp_path, 21))
    spec = pipeline.LoaderSpec(batch_size=8, image_size=8, train=False)
    batches = list(pipeline.ShardedBatches(pipeline.make_loader(source, spec), parallel.make_mesh(), 8))
    assert [b["image"].shape[0] for b in batches] == [8, 8, 8]
    indices = np.concatenate([np.asarray(b["index"])[np.asarray(b["valid"])] for b in batches])
    assert sorted(indices) == list(range(21))


def test_iterator_state_resumes_the_exact_batch_sequence(tmp_path):
    source = PathSource(_write_images(tmp_path, 30))
    spec = pipeline.LoaderSpec(batch_size=8, image_size=8, seed=3, train=True)
    mesh = parallel.make_mesh()
    a = pipeline.ShardedBatches(pipeline.make_loader(source, spec), mesh, 8)
    for _ in range(5):  # crosses an epoch boundary (30 records, 8 per batch)
        next(a)
    state = a.get_state()
    expected = [np.asarray(next(a)["index"]) for _ in range(4)]
    b = pipeline.ShardedBatches(pipeline.make_loader(source, spec), mesh, 8)
    b.set_state(state)
    got = [np.asarray(next(b)["index"]) for _ in range(4)]
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(e, g)


def test_batch_size_must_split_over_devices(tmp_path):
    source = PathSource(_write_images(tmp_path, 4))
    spec = pipeline.LoaderSpec(batch_size=6, image_size=8)
    with pytest.raises(ValueError, match="divisible by the 8"):
        pipeline.ShardedBatches(pipeline.make_loader(source, spec), parallel.make_mesh(), 6)


def test_empty_dataset_is_one_clear_error():
    with pytest.raises(pipeline.DataConfigError, match="empty"):
        pipeline.make_loader(PathSource([]), pipeline.LoaderSpec(batch_size=8, image_size=8))


def test_unknown_source_and_split_list_valid_names():
    import ml_collections

    cfg = ml_collections.ConfigDict({"source": "imagenet"})
    with pytest.raises(pipeline.DataConfigError, match="valid sources: synthfaces"):
        pipeline.build_source(cfg, "train")
    with pytest.raises(pipeline.DataConfigError, match="valid splits"):
        pipeline.build_source(cfg, "training")
    cfg = ml_collections.ConfigDict({"source": "celeba", "root": None})
    with pytest.raises(pipeline.DataConfigError, match="data.root"):
        pipeline.build_source(cfg, "train")


def test_reader_threads_default_by_source_and_are_validated():
    import ml_collections

    def spec(source, **data):
        cfg = ml_collections.ConfigDict({"seed": 0, "batch_size": 8,
                                         "data": {"source": source, "image_size": 32, **data}})
        return pipeline.loader_spec_from_config(cfg, "train")

    assert spec("synthfaces").read_threads == 1  # rendering holds the GIL: one thread is fastest
    assert spec("synthfakes").read_threads == 1
    assert spec("realfake").read_threads == 16  # file decoding releases it
    assert spec("synthfaces", read_threads=4).read_threads == 4
    with pytest.raises(pipeline.DataConfigError, match="data.read_threads must be a positive integer"):
        spec("realfake", read_threads=0)


def test_rendered_splits_are_cached_once_and_read_back_unchanged():
    import ml_collections

    from jaxface.data.synthfaces import SynthFaces

    class CountingFaces(SynthFaces):
        rendered = 0  # per instance: a stopped loader's prefetch thread may still render one more

        def render_batch(self, indices):
            self.rendered += len(indices)
            return super().render_batch(indices)

    mesh = parallel.make_mesh()

    def epoch_batches(faces, cache_mb, epochs=2):
        spec = pipeline.LoaderSpec(batch_size=8, image_size=16, seed=1, train=True, read_threads=1,
                                   cache_mb=cache_mb)
        it = pipeline.ShardedBatches(pipeline.make_loader(faces, spec), mesh, 8)
        return [np.asarray(next(it)["image"]) for _ in range(epochs * 100 // 8)]

    uncached = epoch_batches(CountingFaces(100, resolution=16, seed=3), 0)
    faces = CountingFaces(100, resolution=16, seed=3)
    cached = epoch_batches(faces, 1)
    assert faces.rendered == 100  # each face once, in blocks; the second epoch reads memory
    for a, b in zip(uncached, cached):
        np.testing.assert_array_equal(a, b)  # the same batches, in the same order
    cache = pipeline.RenderCache(faces)
    assert not cache[5]["image"].flags.writeable  # an in-place op fails instead of corrupting
    assert len(cache) == 100 and cache[99]["index"] == 99
    # Too big for data.cache_mb: read item by item as before.
    assert pipeline.split_cache_bytes(faces, 16) == 100 * 16 * 16 * 3
    def cached_by(source, **spec):
        loader = pipeline.make_loader(source, pipeline.LoaderSpec(batch_size=8, image_size=16, **spec))
        return isinstance(loader.records, pipeline.RenderCache)

    assert cached_by(faces, cache_mb=0.1)  # 75 KiB of images
    assert not cached_by(faces, cache_mb=0.1, worker_count=2)  # a copy per worker process: 150 KiB
    assert not cached_by(CountingFaces(100_000, resolution=64, seed=0), cache_mb=1024)  # 1.2 GB

    def spec(source, **data):
        cfg = ml_collections.ConfigDict({"seed": 0, "batch_size": 8,
                                         "data": {"source": source, "image_size": 32, **data}})
        return pipeline.loader_spec_from_config(cfg, "train")

    assert spec("synthfaces").cache_mb == pipeline.DEFAULT_CACHE_MB
    assert spec("synthfaces", cache_mb=0).cache_mb == 0
    assert spec("realfake").cache_mb == 0  # files are not cached: the OS page cache does that
    with pytest.raises(pipeline.DataConfigError, match="data.cache_mb must be 0"):
        spec("synthfaces", cache_mb=-1)


def _process_batches(source, spec, process: int, count: int, num: int, start: int = 0) -> list[dict]:
    """The host batches process `process` of `count` reads (grain's own loader, as Loader builds it)."""
    import grain

    sampler = pipeline.GlobalBatchSampler(len(source), spec.batch_size, train=spec.train, seed=spec.seed,
                                          start_batch=start, process_index=process, process_count=count,
                                          workers=spec.worker_count)
    loader = grain.DataLoader(
        data_source=source if spec.train else pipeline.PaddedSource(source), sampler=sampler,
        operations=[pipeline.DecodeAndResize(spec.image_size), pipeline.DropBad(), pipeline.StripFlags(),
                    grain.transforms.Batch(spec.batch_size // count, drop_remainder=spec.train)],
        worker_count=spec.worker_count, shard_options=grain.sharding.ShardOptions(process, count))
    it = iter(loader)
    return [next(it) for _ in range(num)]


@pytest.mark.parametrize("workers", [0, 2])
def test_global_batches_are_the_same_for_1_2_and_4_processes(workers):
    """Process p of P reads slice p of every global batch: the concatenated slices are the one-process
    batches, epoch after epoch, with grain's worker processes too; and a start position continues."""
    from absl import flags

    from jaxface.data.synthfaces import SynthFaces

    if workers and not flags.FLAGS.is_parsed():  # grain's worker processes read its absl flags
        flags.FLAGS.mark_as_parsed()
    faces = SynthFaces(40, resolution=16, seed=2)
    spec = pipeline.LoaderSpec(batch_size=8, image_size=16, seed=5, train=True, worker_count=workers)
    one = [b["index"] for b in _process_batches(faces, spec, 0, 1, 7)]  # 40 records: crosses epoch 1
    assert sorted(np.concatenate(one[:5])) == list(range(40))
    for count in (2, 4) if workers == 0 else (2,):
        parts = [_process_batches(faces, spec, p, count, 7) for p in range(count)]
        for k in range(7):
            np.testing.assert_array_equal(np.concatenate([parts[p][k]["index"] for p in range(count)]), one[k])
    later = [b["index"] for b in _process_batches(faces, spec, 0, 1, 3, start=4)]
    for a, b in zip(later, one[4:]):
        np.testing.assert_array_equal(a, b)


def test_every_process_reads_the_same_number_of_evaluation_batches(tmp_path):
    """21 records in batches of 8 over 2 processes: 3 global batches, the last one padded, every record
    once. When unreadable files cost a process whole batches, ShardedBatches still yields the pass's 3
    batches (padding only at the end), so no process waits in a collective for a batch never sent."""
    source = PathSource(_write_images(tmp_path, 21))
    spec = pipeline.LoaderSpec(batch_size=8, image_size=8, train=False)
    parts = [_process_batches(source, spec, p, 2, 3) for p in range(2)]
    for p in range(2):
        with pytest.raises(StopIteration):  # nothing beyond the 3 global batches
            _process_batches(source, spec, p, 2, 4)
    assert [list(b["index"]) for b in parts[0]] == [[0, 1, 2, 3], [8, 9, 10, 11], [16, 17, 18, 19]]
    assert [list(b["valid"]) for b in parts[1]][-1] == [True, False, False, False]  # 20, then padding
    seen = [i for part in parts for b in part for i, v in zip(b["index"], b["valid"]) if v]
    assert sorted(seen) == list(range(21))

    (tmp_path / "b").mkdir()
    broken = PathSource(_write_images(tmp_path / "b", 21, bad=set(range(8, 16))))
    batches = list(pipeline.ShardedBatches(pipeline.make_loader(broken, spec), parallel.make_mesh(), 8))
    assert len(batches) == 3
    valid = [np.asarray(b["valid"]) for b in batches]
    assert [int(v.sum()) for v in valid] == [8, 5, 0]
