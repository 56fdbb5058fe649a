"""`jaxface bench --suite=startup`: `jaxface generate` for one attribute set, and `jaxface serve` until it
answers /healthz, each timed as a user runs it (a fresh process, wall clock) with an empty compilation
cache (cold) and again with the cache the first run filled (warm).

Each command gets its own fresh cache folder (JAXFACE_COMPILATION_CACHE), so the cold run compiles
everything it needs and the warm one finds all of it. `new_cache_entries` of a warm record counts the
programs the warm run still had to compile and store: 0 means every program was cached, the oneDNN
convolution programs (XLA custom calls) included.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile
import time

from jaxface.bench import common

SUITE = "startup"
ATTRIBUTES = "Male,Smiling"
# The demo's classifier and detector at their real size; smoke: the test suite's tiny ones.
SIZES = {
    "full": {"classifier": {"num_train_steps": 1, "checkpoint_every_steps": 1, "eval_every_steps": 0,
                            "data.num_train": 256, "data.num_val": 32, "data.num_test": 32},
             "fit": {"generate.sgd_steps": 200}, "detector": ("configs/detect/synthfakes_mobilenet.py", {}),
             "num": 4, "steps": 20},
    "smoke": {"classifier": {"model.width": 0.0625, "model.input_size": 32, "data.image_size": 32,
                             "model.norm": "none", "data.num_train": 128, "data.num_val": 16, "data.num_test": 16,
                             "batch_size": 16, "eval_batch_size": 16, "num_train_steps": 1,
                             "checkpoint_every_steps": 1, "eval_every_steps": 0, "optimizer.warmup_steps": 0},
              "fit": {"generate.batch_size": 32, "generate.sgd_steps": 20, "generate.sgd_batch_size": 32,
                      "generate.min_count": 5, "generate.layer": "conv5_3", "invert.loop": "python",
                      "invert.max_batch": 8},
              "detector": ("configs/detect/synthfakes_mobilenet.py", {
                  "model.name": "spectrum", "model.input_size": 32, "data.image_size": 32, "model.dropout": 0.0}),
              "num": 2, "steps": 2},
}
SIZES["quick"] = SIZES["full"]


def generator_workdir(size: str, workdir: pathlib.Path) -> pathlib.Path:
    """A classifier trained one step and its fitted cGMM: what `jaxface generate` and `serve` load."""
    from jaxface import config as config_lib
    from jaxface import files
    from jaxface.cgmm import fit
    from jaxface.train import trainer

    spec = SIZES[size]
    cfg = config_lib.load_config("configs/attributes/synthfaces_tiny.py", spec["classifier"])
    files.write_text(workdir / "config.json", cfg.to_json_best_effort(indent=2))
    trainer.train(cfg, workdir)
    fit.fit_cgmm_command(config_lib.load_config("configs/generate/synthfaces_tiny.py", spec["fit"]), workdir)
    return workdir


def _cache_entries(cache: pathlib.Path) -> int:
    """Compiled programs in a cache folder (JAX keeps each as KEY-cache beside a KEY-atime stamp)."""
    return sum(1 for p in cache.rglob("*") if p.is_file() and not p.name.endswith(("-atime", ".lock", ".tmp")))


def _env(cache: pathlib.Path) -> dict:
    from jaxface.bench.serve_bench import REPO_ROOT

    env = dict(os.environ, JAXFACE_COMPILATION_CACHE=str(cache), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # JAX's own setting would win over ours
    return env


def _time_generate(workdir: pathlib.Path, cache: pathlib.Path, spec: dict, name: str) -> float:
    args = [sys.executable, "-m", "jaxface", "generate", f"--workdir={workdir}", f"--attributes={ATTRIBUTES}",
            f"--num={spec['num']}", f"--steps={spec['steps']}", f"--name={name}"]
    start = time.perf_counter()
    done = subprocess.run(args, env=_env(cache), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise common.BenchError(f"jaxface generate exited {done.returncode}: {(done.stderr or done.stdout)[-2000:]}")
    return seconds


def _time_serve(detector: pathlib.Path, generator: pathlib.Path, cache: pathlib.Path) -> float:
    from jaxface.bench.serve_bench import ServerProcess

    start = time.perf_counter()
    server = ServerProcess([f"--workdir={detector}", f"--generator_workdir={generator}", "--min_side=32"],
                           env=_env(cache))
    seconds = time.perf_counter() - start
    code = server.stop()
    if code != 0:
        raise common.BenchError(f"jaxface serve exited {code}:\n" + "".join(server.output[-20:]))
    return seconds


def _records(command: str, what: str, timer, cache: pathlib.Path, base: dict) -> list[dict]:
    cold = timer("cold")
    entries = _cache_entries(cache)
    warm = timer("warm")
    new = _cache_entries(cache) - entries
    out = []
    for state, seconds in (("cold", cold), ("warm", warm)):
        out.append(dict(base, suite=SUITE, name=f"{command}_{state}", command=command, measures=what,
                        cache=state, seconds=round(seconds, 3), step_ms=round(seconds * 1e3, 1),
                        throughput=round(1.0 / seconds, 4), throughput_unit="runs/s", cache_entries=entries,
                        new_cache_entries=new if state == "warm" else None,
                        warm_speedup=round(cold / warm, 3) if state == "warm" else None))
    print(f"{command} ({what}): cold {cold:.1f} s, warm {warm:.1f} s ({cold / warm:.2f}x); "
          f"{entries} programs cached, {new} more on the warm run", flush=True)
    return out


def run(size: str = "full") -> list[dict]:
    from jaxface.bench import serve_bench

    spec = SIZES[size]
    records = []
    with tempfile.TemporaryDirectory(prefix="jaxface_startup_bench_") as tmp:
        tmp = pathlib.Path(tmp)
        generator = generator_workdir(size, tmp / "generator")
        config_path, overrides = spec["detector"]
        detector = serve_bench.fresh_workdir(config_path, overrides, tmp / "detector")
        base = {"batch": spec["num"], "resolution": None, "attributes": ATTRIBUTES, "steps": spec["steps"]}
        cache = tmp / "cache_generate"
        records += _records("generate", f"--attributes={ATTRIBUTES} --num={spec['num']} --steps={spec['steps']}",
                            lambda name: _time_generate(generator, cache, spec, name), cache, base)
        cache = tmp / "cache_serve"
        records += _records("serve", "start until /healthz answers 200",
                            lambda name: _time_serve(detector, generator, cache), cache, dict(base, batch=None))
    return records
