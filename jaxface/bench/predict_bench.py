"""`jaxface bench --suite=predict`: images/s of `jaxface predict` over a folder of 300x300 JPEGs.

Times `predict.predict_command` (the code `jaxface predict` runs: decode, crop or patch grid, batched
jitted scoring, records) on the detector shipped with jaxface (or `workdir`), a median over repeats
after a warm-up pass. The images are synthetic faces written as JPEGs once per run. With
`torch_python`, the same network (random weights: throughput does not depend on them) scores the same
files with Pillow decoding, the same crop and input transform, in PyTorch eager (torch_train.py).
"""
from __future__ import annotations

import os
import pathlib
import tempfile

import jax
import numpy as np

from jaxface.bench import common
from jaxface.config import option

SUITE = "predict"
SIDE = 300


def write_jpegs(folder: pathlib.Path, count: int, side: int = SIDE, seed: int = 0) -> list[pathlib.Path]:
    from PIL import Image

    from jaxface.data.synthfaces import SynthFaces

    faces = SynthFaces(count, resolution=side, seed=seed)
    paths = []
    for i in range(count):
        path = folder / f"face_{i:04d}.jpg"
        Image.fromarray(faces[i]["image"]).save(path, quality=90)
        paths.append(path)
    return paths


def _patch_grid(data) -> int:
    from jaxface.data import pipeline

    return int(option(data, "patch_grid", pipeline.DEFAULT_PATCH_GRID))


def _flops_per_image(setup, batch: int) -> float | None:
    """XLA's count for one batch of the detector's scoring program, per image."""
    from jaxface import parallel

    data = setup.config.data
    shape = (int(data.image_size),) * 2 + (3,)
    if option(data, "crop", "resize") == "patches":
        shape = (_patch_grid(data) ** 2,) + shape
    shards = parallel.data_parallel_size(setup.mesh)
    batch = -(-batch // shards) * shards
    host = {"image": np.zeros((batch,) + shape, np.float32), "label": np.zeros(batch, np.int32),
            "generator_id": np.zeros(batch, np.int32), "index": np.arange(batch, dtype=np.int32),
            "valid": np.ones(batch, bool)}
    with jax.set_mesh(setup.mesh):
        flops = common.compiled_flops(setup.predict, setup.model_state, parallel.host_to_global(host, setup.mesh))
    return flops / batch if flops else None


def run(*, workdir=None, num_images: int = 256, batch: int = 64, repeats: int = 3,
        torch_python: str | None = None) -> list[dict]:
    from jaxface.evaluate import predict
    from jaxface.train import trainer

    common.check_torch_python(torch_python)
    workdir = predict.shipped_detector() if workdir is None else workdir
    setup = trainer.load_for_inference(workdir)
    data, model = setup.config.data, setup.config.model
    with tempfile.TemporaryDirectory(prefix="jaxface-bench-predict-") as tmp:
        folder = pathlib.Path(tmp)
        write_jpegs(folder, num_images)
        # The first pass compiles (a warm-up); the median is over the repeats after it.
        first, median, result = common.timed(
            lambda: predict.predict_command(setup, [str(folder)], batch_size=batch, faces="off"), repeats)
        failed = sum(r["error"] is not None for r in result["records"])
        if failed:
            raise common.BenchError(f"predict failed on {failed} of {num_images} benchmark images")
        flops = _flops_per_image(setup, batch)
        record = {
            "suite": SUITE, "name": f"predict_{model.name}", "model": model.name,
            "detector": os.path.basename(str(workdir).rstrip("/")), "resolution": int(data.image_size),
            "image_side": SIDE, "batch": batch, "images": num_images, "repeats": repeats,
            "crop": option(data, "crop", "resize"), "seconds": round(median, 4),
            "step_ms": round(median / num_images * 1e3, 3), "throughput": round(num_images / median, 3),
            "throughput_unit": "images/s", "images_per_s": round(num_images / median, 3),
            "compile_s": round(max(first - median, 0.0), 3),
            "gflops_per_s": round(flops * num_images / median / 1e9, 3) if flops else None,
        }
        if torch_python is not None:
            case = {"name": record["name"], "kind": "predict", "network": model.name,
                    "width": float(option(model, "width", 1.0)), "resolution": int(data.image_size), "batch": batch,
                    "crop": record["crop"], "patch_grid": _patch_grid(data),
                    "input_transform": option(model, "input_transform", "none"), "folder": str(folder)}
            reference = common.run_torch_script(torch_python, "torch_train.py",
                                                {"repeats": repeats, "cases": [case]})[0]
            record.update(torch_throughput=reference["images_per_s"], torch_version=reference["torch_version"])
    record = common.complete(record)
    print(f"  {record['name']}: {record['images_per_s']:.4g} images/s"
          + (f", {record['speedup_vs_torch']}x PyTorch eager" if record["speedup_vs_torch"] else ""), flush=True)
    return [record]
