"""`jaxface bench --suite=...`: runs benchmark suites and writes their records as one JSON list.

Every suite is a function returning records (dicts), so the demo report and CI-free benchmark runs can
reuse the numbers rather than parse printed text.
"""
from __future__ import annotations

from typing import Callable

SUITE_NAMES = ("train", "inversion", "cgmm", "data", "predict", "serve", "startup", "scaling")
SIZES = ("full", "quick", "smoke")  # smoke: the smallest cases, seconds each (the test suite runs them)


def _train(size: str, torch_python: str | None = None) -> list[dict]:
    from jaxface.bench import train_bench

    if size == "smoke":
        case = train_bench.Case("smoke_vggface", 0.0625, 32, 8, torch=True)
        return train_bench.run((case,), steps=1, repeats=1, torch_python=torch_python)
    names = train_bench.QUICK if size == "quick" else tuple(train_bench.CASES)
    return train_bench.run(names, steps=3 if size == "quick" else 5, torch_python=torch_python)


def _inversion(size: str, torch_python: str | None = None) -> list[dict]:
    from jaxface.bench import inversion_bench

    if size == "smoke":
        return inversion_bench.run(["smoke"], loops=("python",), chunk=1, repeats=1, torch_python=torch_python)
    return inversion_bench.run(quick=size == "quick", torch_python=torch_python)


def _cgmm(size: str, torch_python: str | None = None) -> list[dict]:
    from jaxface.bench import cgmm_bench

    if size == "smoke":
        return cgmm_bench.run(num=1000, dim=64, K=6, batch=250, sgd_steps=20, repeats=1)
    return cgmm_bench.run(num=4000, dim=1024) if size == "quick" else cgmm_bench.run()


def _data(size: str, torch_python: str | None = None) -> list[dict]:
    from jaxface.bench import synthfaces_speed
    from jaxface.data import augment

    smoke = size == "smoke"
    repeats = 1 if smoke else 3 if size == "quick" else 5
    records = []
    for r in synthfaces_speed.run(resolutions=(32,) if smoke else (64, 128), repeats=repeats, verbose=False,
                                  batch_size=16 if smoke else 256, items_per_repeat=8 if smoke else 200,
                                  include_fakes=not smoke):
        name = f"synthfaces_{r['path'].replace(' ', '_')}_{r['resolution']}"
        if r["source"] != "SynthFaces":
            name = f"synthfakes_{r['path'].replace(' ', '_')}_{r['resolution']}"
        records.append(dict(r, suite="data", name=name, batch=r["batch_size"], throughput=r["images_per_second"],
                            throughput_unit="images/s", step_ms=round(1e3 / r["images_per_second"], 4)))
    for side in (32,) if smoke else (64, 160):
        r = augment.measure_throughput(size=side, n=8 if smoke else 100 if size == "quick" else 300)
        records.append({"suite": "data", "name": f"augment_{side}", "resolution": side, "batch": 1,
                        "images_per_second": r["images_per_s"], "throughput": r["images_per_s"],
                        "throughput_unit": "images/s", "step_ms": round(1e3 / r["images_per_s"], 4)})
    return records


def _predict(size: str, torch_python: str | None = None) -> list[dict]:
    from jaxface.bench import predict_bench

    if size == "smoke":
        return predict_bench.run(num_images=4, batch=8, repeats=1, torch_python=torch_python)
    return predict_bench.run(num_images=64 if size == "quick" else 256, torch_python=torch_python)


def _serve(size: str, torch_python: str | None = None) -> list[dict]:
    from jaxface.bench import serve_bench

    if size == "smoke":
        records = serve_bench.run(cases=serve_bench.SMOKE_CASES, clients=(2,), latency_requests=3,
                                  throughput_requests=4)
    else:
        records = serve_bench.run(quick=size == "quick")
    serve_bench.summary(records)
    return records


def _startup(size: str, torch_python: str | None = None) -> list[dict]:
    from jaxface.bench import startup_bench

    return startup_bench.run(size)


def _scaling(size: str, torch_python: str | None = None) -> list[dict]:
    from jaxface.bench import scaling_bench

    return scaling_bench.run(size)


# Each suite takes (size, torch_python); all but data, serve, startup and scaling time a PyTorch eager reference with it.
SUITES: dict[str, Callable[..., list[dict]]] = {
    "train": _train, "inversion": _inversion, "cgmm": _cgmm, "data": _data, "predict": _predict, "serve": _serve,
    "startup": _startup, "scaling": _scaling,
}


def run(suite: str, quick: bool = False, torch_python: str | None = None, size: str | None = None) -> list[dict]:
    """Records of `suite` (or every suite for 'all'), each with common.RECORD_KEYS."""
    from jaxface.bench import common

    if suite != "all" and suite not in SUITES:
        raise common.BenchError(f"unknown --suite={suite!r}; valid: {', '.join(SUITE_NAMES)}, all")
    size = size or ("quick" if quick else "full")
    if size not in SIZES:
        raise common.BenchError(f"unknown benchmark size {size!r}; valid: {', '.join(SIZES)}")
    common.check_torch_python(torch_python)
    names = SUITE_NAMES if suite == "all" else (suite,)
    records = []
    for name in names:
        print(f"--- bench suite: {name}", flush=True)
        records += [common.complete(r) for r in SUITES[name](size, torch_python)]
    return records
