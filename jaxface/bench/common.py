"""What every benchmark suite shares: the machine's description, its measured matmul peak, timing."""
from __future__ import annotations

import os
import platform
import statistics
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
        cost = lowered.compile().cost_analysis()
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
