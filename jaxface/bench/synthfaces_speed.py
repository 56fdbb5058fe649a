"""Rendering speed of the embedded synthetic data on one core.

    python -m jaxface.bench.synthfaces_speed

Measures images/s of `SynthFaces.__getitem__` (one image per call, as a plain random-access read)
and `SynthFaces.render_batch` (vectorised; what grain's batched reads use) at 64 and 128 px, and of
`SynthRealFake.__getitem__` for real and fake items. Each figure is the median over repeats after a
warm-up, as wall-clock and as process CPU time (the CPU figure is steadier on a shared machine).
"""
from __future__ import annotations

import os

# One core: the renderer is plain numpy; keep any BLAS/OpenMP pools from spreading out.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from jaxface.data.synthfaces import SynthFaces  # noqa: E402
from jaxface.data.synthfakes import SynthRealFake  # noqa: E402


def _rate(fn, count: int, repeats: int) -> tuple[float, float]:
    """Median images/s over `repeats` calls of fn() rendering `count` images: (wall, cpu)."""
    fn()  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        w1, c1 = time.perf_counter(), time.process_time()
        wall.append(count / max(w1 - w0, 1e-9))
        cpu.append(count / max(c1 - c0, 1e-9))
    return statistics.median(wall), statistics.median(cpu)


def run(
    resolutions=(64, 128),
    *,
    repeats: int = 5,
    batch_size: int = 256,
    items_per_repeat: int = 200,
    include_fakes: bool = True,
    verbose: bool = True,
) -> list[dict]:
    """Benchmark records: dict(source, path, resolution, images_per_second, cpu_images_per_second,
    batch_size, repeats)."""
    records = []

    def add(source, path, resolution, rates, batch):
        records.append({
            "source": source, "path": path, "resolution": resolution,
            "images_per_second": round(rates[0], 1), "cpu_images_per_second": round(rates[1], 1),
            "batch_size": batch, "repeats": repeats,
        })
        if verbose:
            print(f"{source:14s} {path:24s} {resolution:4d} px  {rates[0]:8.0f} images/s  "
                  f"(cpu {rates[1]:8.0f})", flush=True)

    for resolution in resolutions:
        faces = SynthFaces(1_000_000, resolution=resolution, seed=0)
        start = [0]

        def items(faces=faces):
            # Fresh, scattered indices every repeat: nothing is cached.
            base = start[0]
            start[0] += 7919 * items_per_repeat
            for k in range(items_per_repeat):
                faces[(base + 7919 * k) % len(faces)]

        def batch(faces=faces):
            base = start[0]
            start[0] += batch_size
            faces.render_batch(np.arange(base, base + batch_size) % len(faces))

        add("SynthFaces", "__getitem__", resolution, _rate(items, items_per_repeat, repeats), 1)
        add("SynthFaces", "render_batch", resolution, _rate(batch, batch_size, repeats), batch_size)

    if include_fakes:
        resolution = resolutions[0]
        data = SynthRealFake(100_000, resolution=resolution, seed=0)
        for gid, name in enumerate(data.generator_names):
            ids = np.nonzero(data.generator_ids == gid)[0][: max(10, items_per_repeat // 4)]

            def read(ids=ids):
                for i in ids:
                    data[int(i)]

            add("SynthRealFake", f"__getitem__ ({name})", resolution, _rate(read, len(ids), repeats), 1)
    return records


def main() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    run()


if __name__ == "__main__":
    main()
