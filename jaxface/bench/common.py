"""What every benchmark suite shares: the machine's description, its measured matmul peak, timing."""
from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import subprocess
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from jaxface.kernels import onednn


class BenchError(ValueError):
    """A benchmark request that cannot run (unknown suite, case, option or reference interpreter)."""


def environment() -> dict:
    """jax/jaxlib versions, CPU model and core count, XLA flags, backend and devices."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    import jaxlib

    return dict(
        jax_version=jax.__version__, jaxlib_version=jaxlib.__version__, cpu_model=cpu,
        cpu_count=os.cpu_count(), xla_flags=os.environ.get("XLA_FLAGS", ""),
        backend=jax.default_backend(), devices=jax.device_count(), load_average=load_average(),
        convolution_backend=onednn.describe(),
    )


# Every record of every suite carries these keys (None where a figure does not apply), so one reader
# handles all of them; a suite adds its own keys beside them. `throughput` is in `throughput_unit`
# (images/s for the compute suites), medians after a warm-up; `peak_gflops_per_s` is this machine's
# float32 matmul rate measured in the same run, `fraction_of_peak` the record's GFLOP/s against it.
CORE_KEYS = (
    "suite", "name", "batch", "resolution", "step_ms", "throughput", "throughput_unit", "compile_s",
    "gflops_per_s", "peak_gflops_per_s", "fraction_of_peak", "torch_throughput", "speedup_vs_torch",
)
ENVIRONMENT_KEYS = (
    "jax_version", "jaxlib_version", "cpu_model", "cpu_count", "xla_flags", "backend", "devices",
    "load_average", "convolution_backend",
)
RECORD_KEYS = CORE_KEYS + ENVIRONMENT_KEYS


@functools.lru_cache(maxsize=None)
def matmul_peak() -> tuple[float, float]:
    """measure_matmul_peak(), measured once per process: every suite of one run shares the figure."""
    return measure_matmul_peak()


def complete(record: dict) -> dict:
    """The record with every RECORD_KEYS entry: the environment where the record has none of its own,
    the matmul peak, and the fraction of it and the speed-up over PyTorch where they can be computed."""
    for key in ("suite", "name", "throughput", "throughput_unit"):
        if record.get(key) is None:
            raise ValueError(f"benchmark record {record.get('name')!r} of suite {record.get('suite')!r} "
                             f"has no {key!r}")
    out = {**environment(), **{k: None for k in CORE_KEYS}, **record}
    if out["peak_gflops_per_s"] is None:
        out["peak_gflops_per_s"] = round(matmul_peak()[0], 2)
    if out["fraction_of_peak"] is None and out["gflops_per_s"]:
        out["fraction_of_peak"] = round(out["gflops_per_s"] / out["peak_gflops_per_s"], 3)
    if out["speedup_vs_torch"] is None and out["torch_throughput"]:
        out["speedup_vs_torch"] = round(out["throughput"] / out["torch_throughput"], 3)
    return out


def run_torch_script(torch_python: str, script: str, request: dict | None = None, args=()) -> list[dict]:
    """Records printed (as one JSON list on the last line) by `script` of this folder, run by
    `torch_python` with `args` and `request` as JSON on stdin; BenchError naming the interpreter when it
    fails."""
    check_torch_python(torch_python)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), script)
    done = subprocess.run([torch_python, path, *args], input=json.dumps(request or {}), capture_output=True,
                          text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"the PyTorch reference failed under {torch_python} ({script}: does it have torch, "
                         f"numpy and Pillow?): {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_torch_python(torch_python: str | None) -> None:
    if torch_python is not None and not (os.path.isfile(torch_python) and os.access(torch_python, os.X_OK)):
        raise BenchError(f"--torch_python={torch_python!r} is not an executable Python interpreter")


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def measure_matmul_peak(n: int = 2048, repeats: int = 9) -> tuple[float, float]:
    """float32 n x n matmul throughput: (GFLOP per wall second, GFLOP per CPU second of this process).

    Medians of `repeats` after a warm-up. The CPU-second figure is much less sensitive to other
    processes on the machine.
    """
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    matmul = jax.jit(lambda a, b: a @ b)
    matmul(a, b).block_until_ready()
    times, cpu_times = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        matmul(a, b).block_until_ready()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    flops = 2.0 * n**3
    return flops / statistics.median(times) / 1e9, flops / statistics.median(cpu_times) / 1e9


def timed(fn: Callable, repeats: int):
    """(first-call seconds, median seconds of `repeats` further calls, last result).

    fn must block until its result is ready; the first call includes compilation.
    """
    start = time.perf_counter()
    result = fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times), result


def compiled_flops(jitted, *args, **kwargs) -> float | None:
    """FLOPs of one call of a jitted function, from XLA's cost analysis (None where unavailable).

    XLA cannot see inside the oneDNN convolution calls, so a program that makes them is counted as
    XLA would run it (the same arithmetic)."""
    try:
        lowered = jitted.lower(*args, **kwargs)
        if onednn.CALL_MARKER in lowered.as_text():
            with onednn.forced("xla"):
                lowered = jitted.lower(*args, **kwargs)
        try:  # the unoptimised program's count: the same arithmetic, without a second compile
            cost = lowered.cost_analysis()
        except Exception:  # noqa: BLE001 - fall back to the compiled program's count
            cost = None
        cost = cost or lowered.compile().cost_analysis()
    except Exception:  # noqa: BLE001 - some backends do not report costs
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost.get("flops", 0.0)) if cost else None


def print_table(records: Sequence[dict], columns: Sequence[str]) -> str:
    rows = [[str(c) for c in columns]]
    for r in records:
        row = []
        for c in columns:
            v = r.get(c, "")
            row.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    text = "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows)
    print(text, flush=True)
    return text
