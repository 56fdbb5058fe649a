"""Training throughput of the trainer's jitted step: images/s and achieved GFLOP/s.

Cases: the tiny synthfaces config, full-width VGG-Face at 64, 112 and 224 px, and the MobileNetV3-Small
and ResNet-18 detector configs. Each times the same `trainer.make_train_step` the trainer runs (donated
state, the config's loss and optimizer, state placed as the trainer places it) on synthetic batches, so
it measures the step, not the input pipeline (the data suite measures that). With `torch_python`, the
same network, loss and optimizer step in PyTorch eager (torch_train.py) is timed right after.
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


ATTRIBUTES_CONFIG = "configs/attributes/synthfaces_tiny.py"
DETECT_CONFIG = "configs/detect/synthfakes_mobilenet.py"


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    width: float
    resolution: int
    batch: int
    config: str = ATTRIBUTES_CONFIG
    torch: bool = False  # a PyTorch eager reference exists (torch_train.py)
    model: str | None = None  # another backbone in the config's task

    def overrides(self) -> dict:
        extra = {"model.width": self.width}
        if self.config == ATTRIBUTES_CONFIG and self.width == 1.0:
            extra["model.dropout"] = 0.5
        if self.model:
            extra["model.name"] = self.model
        return {**extra, "model.input_size": self.resolution, "data.image_size": self.resolution,
                "batch_size": self.batch}


CASES = {
    "tiny": Case("tiny", 0.125, 64, 64, torch=True),  # configs/attributes/synthfaces_tiny.py
    "tiny_w025": Case("tiny_w025", 0.25, 64, 64),
    "full64": Case("full64", 1.0, 64, 16, torch=True),
    "full112": Case("full112", 1.0, 112, 8),
    "full224": Case("full224", 1.0, 224, 4),
    # The detector backbones in the real/fake task (synthfakes_mobilenet.py's optimizer and loss).
    "mobilenetv3_small": Case("mobilenetv3_small", 1.0, 64, 64, DETECT_CONFIG, True),
    "resnet18": Case("resnet18", 1.0, 128, 32, DETECT_CONFIG, True, model="resnet18"),
}
QUICK = ("tiny", "full64", "mobilenetv3_small", "resnet18")


def _batch(task, mesh, batch: int, resolution: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    host = {"image": rng.integers(0, 256, (batch, resolution, resolution, 3), dtype=np.uint8),
            "valid": np.ones(batch, bool)}
    if hasattr(task, "schema"):  # attributes
        host["attributes"] = (rng.random((batch, task.schema.num_attributes)) < 0.3).astype(np.float32)
        host["attribute_mask"] = np.ones((batch, task.schema.num_attributes), bool)
    else:  # real/fake
        host["label"] = rng.integers(0, 2, batch).astype(np.int32)
        host["generator_id"] = np.zeros(batch, np.int32)
        host["index"] = np.arange(batch, dtype=np.int32)
    out = parallel.host_to_global(host, mesh)
    out["image"] = out["image"].astype(jnp.float32) / 255.0
    return out


def _load(case: Case, overrides: dict | None = None):
    return config_lib.load_config(case.config, {**case.overrides(), **(overrides or {})})


def bench_case(case: Case, *, steps: int = 5, overrides: dict | None = None) -> dict:
    cfg = _load(case, overrides)
    setup = trainer.build(cfg)
    task, mesh = setup.task, setup.mesh
    trainable = optim.trainable_filter("", task.layer_of, task.layer_index)
    model_def, model_state = nnx.split(setup.model)
    # As the trainer places it: every leaf on the mesh, so the step compiles once (an eagerly built
    # optimizer's step counters are uncommitted arrays, and the second call would compile again).
    opt_def, opt_state = trainer.create_optimizer(model_def, model_state, optim.build_optimizer(cfg.optimizer, 1000),
                                                  trainable, mesh, cfg)
    shardings = (jax.tree.map(lambda x: x.sharding, model_state), jax.tree.map(lambda x: x.sharding, opt_state))
    step = trainer.make_train_step(task, model_def, opt_def, trainable, shardings)
    batch = _batch(task, mesh, case.batch, case.resolution)
    flops = common.compiled_flops(step, model_state, opt_state, batch)
    state = {"m": model_state, "o": opt_state}

    def run_once():
        state["m"], state["o"], metrics = step(state["m"], state["o"], batch)
        jax.block_until_ready(metrics["loss"])

    compile_s, median_s, _ = common.timed(run_once, steps)
    return {
        "suite": SUITE, "name": case.name, "model": cfg.model.name, "backend": jax.default_backend(),
        "devices": jax.device_count(), "resolution": case.resolution, "batch": case.batch,
        "width": case.width, "steps": steps, "step_ms": round(median_s * 1e3, 3),
        "throughput": round(case.batch / median_s, 3), "throughput_unit": "images/s",
        "images_per_s": round(case.batch / median_s, 3), "gflops_per_step": round((flops or 0) / 1e9, 4),
        "gflops_per_s": round(flops / median_s / 1e9, 3) if flops else None, "compile_s": round(compile_s, 3),
    }


def torch_case(case: Case, overrides: dict | None = None) -> dict:
    """The request torch_train.py needs to run `case` as the same network, loss and optimizer."""
    cfg = _load(case, overrides)
    m = cfg.model
    spec = {"name": case.name, "kind": "train", "network": m.name, "width": case.width,
            "resolution": case.resolution, "batch": case.batch, "dropout": float(m.get("dropout", 0.0)),
            "optimizer": {k: cfg.optimizer.get(k) for k in ("name", "learning_rate", "momentum", "weight_decay",
                                                           "grad_clip_norm")}}
    if m.name == "vggface":
        from jaxface.data import schema as schema_lib

        spec.update(norm=m.get("norm", "none"), head_sizes=list(schema_lib.get_schema(cfg.data.schema).head_sizes))
    return spec


def run(names=tuple(CASES), steps: int = 5, torch_python: str | None = None, repeats: int = 5,
        overrides: dict | None = None) -> list[dict]:
    """Records of `names` (CASES keys or Case objects); with `torch_python`, the PyTorch eager step of
    every case that has one, measured right after in the same run (`torch_throughput`, `speedup_vs_torch`)."""
    common.check_torch_python(torch_python)
    unknown = [n for n in names if not isinstance(n, Case) and n not in CASES]
    if unknown:
        raise common.BenchError(f"unknown train case(s) {', '.join(unknown)}; valid: {', '.join(CASES)}")
    cases = [n if isinstance(n, Case) else CASES[n] for n in names]
    records = []
    for case in cases:
        record = bench_case(case, steps=steps, overrides=overrides)
        records.append(record)
        print(f"  {case.name}: {record['images_per_s']:.4g} images/s", flush=True)  # progress; table below
    with_torch = [c for c in cases if c.torch]
    if torch_python is not None and with_torch:
        reference = common.run_torch_script(torch_python, "torch_train.py", {
            "steps": max(1, steps // 2), "repeats": repeats, "cases": [torch_case(c, overrides) for c in with_torch]})
        rates = {r["name"]: r for r in reference}
        for record in records:
            if record["name"] in rates:
                record["torch_throughput"] = rates[record["name"]]["images_per_s"]
                record["torch_version"] = rates[record["name"]]["torch_version"]
    records = [common.complete(r) for r in records]
    common.print_table(records, COLUMNS)
    return records


COLUMNS = ("name", "resolution", "batch", "width", "images_per_s", "gflops_per_s", "peak_gflops_per_s",
           "fraction_of_peak", "compile_s", "torch_throughput", "speedup_vs_torch")
