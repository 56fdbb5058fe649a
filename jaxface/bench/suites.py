"""`jaxface bench --suite=...`: runs benchmark suites and writes their records as one JSON list.

Every suite is a function returning records (dicts), so the demo report and CI-free benchmark runs can
reuse the numbers rather than parse printed text.
"""
from __future__ import annotations

from typing import Callable

SUITE_NAMES = ("train", "inversion", "cgmm", "data", "serve")


def _train(quick: bool, torch_python: str | None = None) -> list[dict]:
    from jaxface.bench import train_bench

    return train_bench.run(("tiny", "full64") if quick else tuple(train_bench.CASES), steps=3 if quick else 5)


def _inversion(quick: bool, torch_python: str | None = None) -> list[dict]:
    from jaxface.bench import inversion_bench

    return inversion_bench.run(quick=quick, torch_python=torch_python)


def _cgmm(quick: bool, torch_python: str | None = None) -> list[dict]:
    from jaxface.bench import cgmm_bench

    return cgmm_bench.run(num=4000, dim=1024) if quick else cgmm_bench.run()


def _data(quick: bool, torch_python: str | None = None) -> list[dict]:
    from jaxface.bench import common, synthfaces_speed
    from jaxface.data import augment

    records = [dict(r, suite="data", name=f"synthfaces_{r.get('path', 'render')}_{r['resolution']}")
               for r in synthfaces_speed.run(repeats=3 if quick else 5, verbose=False)]
    for size in (64, 160):
        r = augment.measure_throughput(size=size, n=100 if quick else 300)
        records.append({"suite": "data", "name": f"augment_{size}", "resolution": size,
                        "images_per_second": r["images_per_s"]})
    env = common.environment()
    return [dict(r, **env) for r in records]


def _serve(quick: bool, torch_python: str | None = None) -> list[dict]:
    from jaxface.bench import serve_bench

    records = serve_bench.run(quick=quick)
    serve_bench.summary(records)
    return records


# Each suite takes (quick, torch_python); only the inversion suite has a PyTorch reference.
SUITES: dict[str, Callable[..., list[dict]]] = {
    "train": _train, "inversion": _inversion, "cgmm": _cgmm, "data": _data, "serve": _serve,
}


def run(suite: str, quick: bool = False, torch_python: str | None = None) -> list[dict]:
    if suite != "all" and suite not in SUITES:
        from jaxface.bench.common import BenchError

        raise BenchError(f"unknown --suite={suite!r}; valid: {', '.join(SUITE_NAMES)}, all")
    names = SUITE_NAMES if suite == "all" else (suite,)
    records = []
    for name in names:
        print(f"--- bench suite: {name}", flush=True)
        records += SUITES[name](quick, torch_python)
    return records
