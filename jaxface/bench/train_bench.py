"""Training throughput of the attribute trainer's jitted step: images/s and achieved GFLOP/s.

Records: the tiny synthfaces config and full-width VGG-Face at 64, 112 and 224 px. Each times the same
`trainer.make_train_step` the trainer runs (donated state, grouped heads, AdamW), on synthetic batches,
so it measures the step, not the input pipeline (the data suite measures that).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxface import config as config_lib
from jaxface import parallel
from jaxface.bench import common
from jaxface.train import optim, trainer

SUITE = "train"


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    width: float
    resolution: int
    batch: int


CASES = {
    "tiny": Case("tiny", 0.125, 64, 64),  # configs/attributes/synthfaces_tiny.py
    "tiny_w025": Case("tiny_w025", 0.25, 64, 64),
    "full64": Case("full64", 1.0, 64, 16),
    "full112": Case("full112", 1.0, 112, 8),
    "full224": Case("full224", 1.0, 224, 4),
}


def _batch(cfg, mesh, schema, batch: int, resolution: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    host = {
        "image": rng.integers(0, 256, (batch, resolution, resolution, 3), dtype=np.uint8),
        "attributes": (rng.random((batch, schema.num_attributes)) < 0.3).astype(np.float32),
        "attribute_mask": np.ones((batch, schema.num_attributes), bool),
        "valid": np.ones(batch, bool),
    }
    out = parallel.host_to_global(host, mesh)
    out["image"] = out["image"].astype(jnp.float32) / 255.0
    return out


def bench_case(case: Case, *, steps: int = 5, peak: float | None = None) -> dict:
    cfg = config_lib.load_config("configs/attributes/synthfaces_tiny.py", {
        "model.width": case.width, "model.input_size": case.resolution,
        "data.image_size": case.resolution, "batch_size": case.batch, "model.dropout": 0.5})
    setup = trainer.build(cfg)
    task, mesh = setup.task, setup.mesh
    trainable = optim.trainable_filter("", task.layer_of, task.layer_index)
    optimizer = nnx.Optimizer(setup.model, optim.build_optimizer(cfg.optimizer, 1000), wrt=trainable)
    opt_def, opt_state = nnx.split(optimizer)
    model_def, model_state = nnx.split(setup.model)
    shardings = (jax.tree.map(lambda x: x.sharding, model_state), jax.tree.map(lambda x: x.sharding, opt_state))
    step = trainer.make_train_step(task, model_def, opt_def, trainable, shardings)
    batch = _batch(cfg, mesh, task.schema, case.batch, case.resolution)
    flops = common.compiled_flops(step, model_state, opt_state, batch)
    state = {"m": model_state, "o": opt_state}

    def run_once():
        state["m"], state["o"], metrics = step(state["m"], state["o"], batch)
        jax.block_until_ready(metrics["loss"])

    compile_s, median_s, _ = common.timed(run_once, steps)
    gflops = flops / median_s / 1e9 if flops else None
    return {
        "suite": SUITE, "name": case.name, "backend": jax.default_backend(), "devices": jax.device_count(),
        "resolution": case.resolution, "batch": case.batch, "width": case.width, "steps": steps,
        "images_per_s": case.batch / median_s, "step_s": median_s, "gflops_per_step": (flops or 0) / 1e9,
        "gflops_per_s": gflops, "peak_gflops_per_s": peak,
        "fraction_of_peak": (gflops / peak) if (gflops and peak) else None, "compile_s": compile_s,
    }


def run(names=("tiny", "tiny_w025", "full64", "full112", "full224"), steps: int = 5) -> list[dict]:
    peak, _ = common.measure_matmul_peak()
    env = common.environment()
    records = []
    for name in names:
        record = bench_case(CASES[name], steps=steps, peak=peak)
        record.update(env)
        records.append(record)
        print(f"  {name}: {record['images_per_s']:.4g} images/s", flush=True)  # progress; table below
    common.print_table(records, COLUMNS)
    return records


COLUMNS = ("name", "resolution", "batch", "width", "images_per_s", "gflops_per_s", "peak_gflops_per_s",
           "fraction_of_peak", "compile_s")
