"""`jaxface bench --suite=scaling`: the training step and a generation sweep at 1, 2 and 4 processes on
loopback (launch/local/run.sh; one CPU device per process, gloo collectives), so the cost of running as
several processes is visible.

Weak scaling: every process brings the same work (a per-process share of the global batch, the same
number of sweep images), so on a machine with a core per process the ideal is the same step time and
P times the images/s. The all-reduce share is the time of one all-reduce of a gradient-sized tree over
the processes (timed alone, on the same mesh) divided by the step time. On a machine with fewer cores
than processes (this 2-core one) the processes share the cores, and the figures show the overhead of
the multi-process path rather than a speed-up.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from jaxface.bench import common

SUITE = "scaling"
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
LAUNCHER = REPO_ROOT / "launch" / "local" / "run.sh"
SIZES = {
    "full": {"processes": (1, 2, 4), "train": "tiny", "per_process_batch": 16, "steps": 10,
             "sweep_per_process": 4, "sweep_steps": 20, "startup": "full"},
    "quick": {"processes": (1, 2, 4), "train": "tiny", "per_process_batch": 16, "steps": 5,
              "sweep_per_process": 4, "sweep_steps": 10, "startup": "full"},
    "smoke": {"processes": (1, 2), "train": "smoke", "per_process_batch": 4, "steps": 2,
              "sweep_per_process": 2, "sweep_steps": 2, "startup": "smoke"},
}


# ----------------------------------------------------------------------------------- in each process
def _allreduce_ms(params, mesh, repeats: int) -> float:
    """One all-reduce of a tree shaped like `params` over the mesh's data axis (what the step does to the
    gradients), timed alone: -> median milliseconds."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P

    from jaxface import parallel

    shards = parallel.data_parallel_size(mesh)
    local = len(jax.local_devices())
    sharded = NamedSharding(mesh, P(parallel.DATA_AXIS))
    tree = {k: jax.make_array_from_process_local_data(
        sharded, np.ones((local,) + tuple(np.shape(v)), np.float32), (shards,) + tuple(np.shape(v)))
        for k, v in params.items()}
    reduce = jax.jit(lambda t: jax.tree.map(lambda x: jnp.sum(x, axis=0), t),
                     out_shardings=NamedSharding(mesh, P()))
    _, median_s, _ = common.timed(lambda: jax.block_until_ready(reduce(tree)), repeats)
    return median_s * 1e3


def worker(out: str, spec: dict) -> None:
    """One process of a launch: times the train step and a sweep; process 0 writes OUT (JSON)."""
    import jax

    from jaxface import parallel
    from jaxface.bench import train_bench
    from jaxface.models import weights
    from jaxface.train import trainer

    parallel.maybe_initialize_distributed()
    count = jax.process_count()
    if spec["train"] == "smoke":
        case = train_bench.Case("smoke", 0.0625, 32, spec["per_process_batch"] * count)
        overrides = {"model.norm": "none"}
    else:
        base = train_bench.CASES[spec["train"]]
        case = train_bench.Case(base.name, base.width, base.resolution, spec["per_process_batch"] * count)
        overrides = {}
    train = train_bench.bench_case(case, steps=spec["steps"], overrides=overrides)
    setup = trainer.build(train_bench._load(case, overrides))
    params = {k: v for k, v in weights.flatten_state(setup.model_state.to_pure_dict()).items()
              if hasattr(v, "dtype") and jax.numpy.issubdtype(v.dtype, jax.numpy.floating)}
    allreduce_ms = _allreduce_ms(params, setup.mesh, spec["steps"])

    from jaxface.generate import command as generate

    sweep = pathlib.Path(spec["sweep_file"])
    times = []
    for run in range(2):  # the first run compiles; the second is the steady state
        start = time.perf_counter()
        generate.generate_command(spec["generator"], sweep=str(sweep), name=f"scaling_p{count}_{run}",
                                  steps=spec["sweep_steps"], verbose=False)
        times.append(time.perf_counter() - start)
    images = spec["sweep_per_process"] * count
    if jax.process_index() == 0:
        pathlib.Path(out).write_text(json.dumps({
            "processes": count, "train": train, "allreduce_ms": allreduce_ms,
            "sweep_images": images, "sweep_first_s": times[0], "sweep_s": times[1]}))


# --------------------------------------------------------------------------------------- the suite
def _launch(processes: int, spec: dict, tmp: pathlib.Path) -> dict:
    out = tmp / f"p{processes}.json"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu",
               PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    env["PATH"] = f"{pathlib.Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for key in [k for k in env if k.startswith("JAX_COORDINATOR") or k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID")]:
        del env[key]
    cmd = [str(LAUNCHER), f"--logdir={tmp / f'logs_p{processes}'}", str(processes), "--", sys.executable, "-m",
           "jaxface.bench.scaling_bench", "worker", str(out), json.dumps(spec)]
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0 or not out.exists():
        raise common.BenchError(f"the {processes}-process scaling run exited {done.returncode}:\n"
                                + (done.stderr or done.stdout)[-3000:])
    return json.loads(out.read_text())


def run(size: str = "full") -> list[dict]:
    from jaxface.bench import startup_bench

    spec = dict(SIZES[size])
    records = []
    with tempfile.TemporaryDirectory(prefix="jaxface_scaling_bench_") as tmp:
        tmp = pathlib.Path(tmp)
        generator = startup_bench.generator_workdir(spec["startup"], tmp / "generator")
        for processes in spec["processes"]:
            per = spec["sweep_per_process"] * processes
            sweep = tmp / f"sweep_p{processes}.json"
            sweep.write_text(json.dumps([{"attributes": startup_bench.ATTRIBUTES, "num": per}]))
            result = _launch(processes, dict(spec, generator=str(generator), sweep_file=str(sweep)), tmp)
            train = result["train"]
            step_s = train["step_ms"] / 1e3
            base = {"suite": SUITE, "processes": processes, "devices": processes, "resolution": train["resolution"]}
            records.append(dict(
                base, name=f"train_step_p{processes}", batch=train["batch"], step_ms=train["step_ms"],
                throughput=train["throughput"], throughput_unit="images/s",
                images_per_s_per_process=round(train["throughput"] / processes, 3),
                compile_s=train["compile_s"], gflops_per_s=train["gflops_per_s"],
                allreduce_ms=round(result["allreduce_ms"], 3),
                allreduce_share=round(result["allreduce_ms"] / 1e3 / step_s, 4) if processes > 1 else 0.0))
            images = result["sweep_images"]
            records.append(dict(
                base, name=f"inversion_sweep_p{processes}", batch=images, steps=spec["sweep_steps"],
                step_ms=round(result["sweep_s"] * 1e3 / spec["sweep_steps"], 3),
                throughput=round(images / result["sweep_s"], 4), throughput_unit="images/s",
                images_per_s_per_process=round(images / result["sweep_s"] / processes, 4),
                compile_s=round(result["sweep_first_s"] - result["sweep_s"], 3)))
            print(f"{processes} process(es): train step {train['step_ms']:.1f} ms for {train['batch']} images "
                  f"(all-reduce {result['allreduce_ms']:.1f} ms), sweep of {images} images "
                  f"{result['sweep_s']:.2f} s", flush=True)
    return records


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "worker":
        sys.exit("usage: python -m jaxface.bench.scaling_bench worker OUT.json SPEC_JSON (run by the suite)")
    worker(sys.argv[2], json.loads(sys.argv[3]))
