"""Benchmark of the compiled feature-inversion loop on VGG-16 (VGG-Face topology) up to conv5_3.

For every configuration and loop form ('python': a jitted single step called from a Python loop,
'unrolled': one jit per chunk of k unrolled steps, 'scan': one jit per chunk with lax.scan; each in the
chunks `generate` uses, render.DEFAULT_CHUNK, unless --chunk says) it measures image-steps per second
of the real inversion step (jitter, blur projection, TV, Adam), the achieved GFLOP/s (XLA's cost
analysis of one compiled step, with XLA's direct convolution: layers that run the Winograd algorithm do
fewer multiply-adds than counted, so their rate can pass the matmul peak) against this machine's
float32 matmul GFLOP/s (measured first, in the same run), compile time, and the speed-up over the
Python loop measured in the same run. Loop forms are timed round-robin, so that load from other
processes hits them alike; every number is a median over repeats after a warm-up chunk. On a shared
machine wall-clock numbers swing with the load (recorded as `load_average`); the CPU-second figures
(`cpu_ms_per_step`, `image_steps_per_cpu_s`, `gflops_per_cpu_s`, `cpu_fraction_of_peak` against the
matmul's GFLOP per CPU-second) are much steadier and show the efficiency of the code itself.

    python -m jaxface.bench.inversion_bench --out=inversion.json            # tiny, full64, full112
    python -m jaxface.bench.inversion_bench --out=quick.json --quick        # tiny only, short
    python -m jaxface.bench.inversion_bench --out=flags.json --configs=full64 \\
        --xla-variants="--xla_cpu_use_onednn=true;--xla_cpu_multi_thread_eigen=false"

`--xla-variants` re-runs the benchmark in a subprocess per XLA_FLAGS variant (flags are read when
JAX starts) and concatenates the records; every record carries the flags it ran with.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Sequence

import jax

import jax.numpy as jnp
import numpy as np

from jaxface.bench.common import (
    BenchError, check_torch_python, compiled_flops, environment, load_average, matmul_peak,
)
from jaxface.invert import render as render_lib
from jaxface.kernels import onednn

SUITE = "inversion"
LOOP_FORMS = ("python", "unrolled", "scan")


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    width: float
    resolution: int
    batch: int
    layer: str = "conv5_3"


CONFIGS = {
    "tiny": Config("tiny", 0.25, 64, 8),
    "full64": Config("full64", 1.0, 64, 8),
    "full112": Config("full112", 1.0, 112, 4),
}
# The smallest case, for `jaxface bench --size=smoke` (not part of a default run).
SMOKE = Config("smoke", 0.0625, 32, 8)


# ------------------------------------------------------------------------------------ environment
# ------------------------------------------------------------------------------------------ setup
_VGG16_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))
_VGGFACE_MEAN_RGB = (129.1863, 104.7624, 93.5940)


@dataclasses.dataclass(frozen=True)
class BuiltinVGG16:
    """apply(params, images) -> activations of `layer`: a plain VGG-16 conv stack, VGG-Face topology and
    preprocessing, in NHWC or NCHW, without jaxface.models.vggface's fc layers: for layout experiments."""

    layer: str = "conv5_3"
    layout: str = "NHWC"

    def init(self, width: float, key: jax.Array) -> list:
        params, cin = [], 3
        for _, n_conv, base in _VGG16_BLOCKS:
            cout = max(1, int(round(base * width)))
            for _ in range(n_conv):
                key, k = jax.random.split(key)
                w = jax.random.normal(k, (3, 3, cin, cout), jnp.float32) * np.sqrt(2.0 / (9 * cin))
                params.append((w, jnp.zeros((cout,), jnp.float32)))
                cin = cout
        return params

    def __call__(self, params: list, images: jax.Array) -> jax.Array:
        x = images * 255.0 - jnp.asarray(_VGGFACE_MEAN_RGB, jnp.float32)
        if self.layout == "NCHW":
            x = jnp.transpose(x, (0, 3, 1, 2))
        dims = (self.layout, "HWIO", self.layout)
        window = (1, 2, 2, 1) if self.layout == "NHWC" else (1, 1, 2, 2)
        index = 0
        for block, n_conv, _ in _VGG16_BLOCKS:
            for i in range(1, n_conv + 1):
                w, b = params[index]
                index += 1
                x = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dims)
                x = jax.nn.relu(x + (b if self.layout == "NHWC" else b[:, None, None]))
                if f"conv{block}_{i}" == self.layer:
                    return x if self.layout == "NHWC" else jnp.transpose(x, (0, 2, 3, 1))
            x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, window, "VALID")
        raise ValueError(f"BuiltinVGG16 has no conv layer {self.layer!r}")


def _feature_model(config: Config, model: str = "auto", layout: str = "NHWC"):
    """(apply_fn, state, model name) of VGG-16 up to config.layer, random weights (speed does not
    depend on them): jaxface.models.vggface.VGGFace when it accepts the size, else BuiltinVGG16."""
    if model in ("auto", "vggface") and layout == "NHWC":
        from flax import nnx

        from jaxface.invert.render import nnx_model_fn
        from jaxface.models.vggface import VGGFace

        try:
            vgg = VGGFace(head_sizes=None, width=config.width, input_size=config.resolution, rngs=nnx.Rngs(0))
        except ValueError:
            if model == "vggface":
                raise
        else:
            layer = config.layer

            def features(module, images):
                return module.activations(images, [layer])[layer]

            return (*nnx_model_fn(vgg, features), "vggface")
    builtin = BuiltinVGG16(config.layer, layout)
    return builtin, builtin.init(config.width, jax.random.key(0)), f"builtin-vgg16-{layout}"


@dataclasses.dataclass
class Problem:
    spec: Any
    state: Any
    inputs: Any
    flops_per_step: float
    single_step_compile_s: float
    model: str
    convolution: str  # "onednn" or "xla": what the compiled step calls


def build_problem(
    config: Config, *, steps_budget: int, jitter: int = 4, blur_every: int = 4, model: str = "auto",
    layout: str = "NHWC",
) -> Problem:
    """The inversion step of `jaxface.invert.render` for `config`, with its inputs ready on device."""
    from jaxface.invert import objectives, param, render, transforms

    apply_fn, model_state, model_name = _feature_model(config, model, layout)
    images = jax.random.uniform(jax.random.key(1), (config.batch, config.resolution, config.resolution, 3))
    targets = jax.jit(apply_fn)(model_state, images)
    objective = objectives.feature_match() + objectives.regularizers(tv_weight=0.05)
    params, image_param = param.make_param("pixels", config.batch, config.resolution, jax.random.key(2))
    spec = render.StepSpec(
        apply_fn=apply_fn,
        objective=objective,
        image_param=image_param,
        transform=transforms.make_transform_config(jitter=jitter),
        optimizer=render.make_optimizer_spec("adam", 0.05),
        blur_every=blur_every,
        blur_sigma=0.5,
    )
    state, draws = render.start_state(
        params, jax.random.key(3), jnp.arange(config.batch), optimizer=spec.optimizer,
        transform=spec.transform, steps=steps_budget,
    )
    inputs = render.Inputs(model_state, {"features": targets}, draws)
    lowered = render.single_step.lower(state, inputs, spec=spec)
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    convolution = "onednn" if onednn.CALL_MARKER in lowered.as_text() else "xla"
    flops = compiled_flops(render.single_step, state, inputs, spec=spec)
    return Problem(spec, state, inputs, float("nan") if flops is None else flops, compile_s, model_name,
                   convolution)


def _runner(problem: Problem, loop: str, chunk: int, scan_unroll: int):
    """run(state) -> state advancing `chunk` steps in loop form `loop`; and its compile seconds."""
    from jaxface.invert import render

    spec, inputs = problem.spec, problem.inputs
    if loop == "python":
        compiled = render.single_step.lower(problem.state, inputs, spec=spec)
    elif loop == "unrolled":
        compiled = render.unrolled_chunk.lower(problem.state, inputs, spec=spec, length=chunk)
    else:
        compiled = render.scan_chunk.lower(problem.state, inputs, spec=spec, length=chunk, unroll=scan_unroll)
    start = time.perf_counter()
    compiled = compiled.compile()
    compile_s = time.perf_counter() - start
    if loop == "python":
        compile_s = problem.single_step_compile_s  # compiled (and cached) by build_problem

    if loop == "python":
        def run(state):
            for _ in range(chunk):
                state, _ = compiled(state, inputs)
            return state
    else:
        def run(state):
            return compiled(state, inputs)[0]

    return run, compile_s


def _fresh_state(problem: Problem):
    # Every run donates its state; give each loop form its own copy.
    return jax.tree.map(lambda x: x.copy(), problem.state)


def bench_config(
    config: Config,
    *,
    loops: Sequence[str] = LOOP_FORMS,
    chunks: dict[str, int],
    scan_unroll: int = 1,
    repeats: int,
    peak_gflops: float,
    peak_gflops_per_cpu_s: float,
    env: dict,
    model: str = "auto",
    layout: str = "NHWC",
    log=print,
) -> list[dict]:
    """Records for one configuration, one per loop form, each run in chunks of chunks[loop] steps."""
    steps_budget = max(chunks[loop] for loop in loops) * (repeats + 1)
    problem = build_problem(config, steps_budget=steps_budget, model=model, layout=layout)
    runners, states, compile_s = {}, {}, {}
    times, cpu_times = {loop: [] for loop in loops}, {loop: [] for loop in loops}
    for loop in loops:
        runners[loop], compile_s[loop] = _runner(problem, loop, chunks[loop], scan_unroll)
        states[loop] = jax.block_until_ready(runners[loop](_fresh_state(problem)))  # warm-up chunk
    load_before = load_average()
    for _ in range(repeats):
        for loop in loops:  # round-robin: load from other processes hits every form alike
            start, cpu_start = time.perf_counter(), time.process_time()
            states[loop] = jax.block_until_ready(runners[loop](states[loop]))
            times[loop].append((time.perf_counter() - start) / chunks[loop])
            cpu_times[loop].append((time.process_time() - cpu_start) / chunks[loop])
    step_s = {loop: statistics.median(t) for loop, t in times.items()}
    python_s = step_s.get("python")
    records = []
    for loop in loops:
        gflops = problem.flops_per_step / step_s[loop] / 1e9
        cpu_s = statistics.median(cpu_times[loop])
        gflops_per_cpu_s = problem.flops_per_step / cpu_s / 1e9
        record = dict(
            suite=SUITE,
            name=config.name,
            loop=loop,
            backend=jax.default_backend(),
            devices=1,
            resolution=config.resolution,
            batch=config.batch,
            width=config.width,
            layer=config.layer,
            model=problem.model,
            convolution=problem.convolution,
            steps=chunks[loop] * repeats,
            chunk=chunks[loop],
            step_ms=round(step_s[loop] * 1e3, 2),
            step_ms_min=round(min(times[loop]) * 1e3, 2),
            # CPU seconds of this process per step (all threads): less sensitive than wall time
            # to other processes sharing the cores.
            cpu_ms_per_step=round(cpu_s * 1e3, 2),
            image_steps_per_cpu_s=round(config.batch / cpu_s, 2),
            image_steps_per_s=round(config.batch / step_s[loop], 2),
            throughput=round(config.batch / step_s[loop], 2),
            throughput_unit="image-steps/s",
            gflop_per_step=round(problem.flops_per_step / 1e9, 3),
            gflops_per_s=round(gflops, 2),
            peak_gflops_per_s=round(peak_gflops, 2),
            fraction_of_peak=round(gflops / peak_gflops, 3),
            gflops_per_cpu_s=round(gflops_per_cpu_s, 2),
            peak_gflops_per_cpu_s=round(peak_gflops_per_cpu_s, 2),
            cpu_fraction_of_peak=round(gflops_per_cpu_s / peak_gflops_per_cpu_s, 3),
            compile_s=round(compile_s[loop], 2),
            speedup_vs_python_loop=None if python_s is None else round(python_s / step_s[loop], 3),
            load_average=load_before,
        )
        records.append({**env, **record})  # this record's own backend/devices/load win
        log(_row(records[-1]))
    return records


def run(
    configs: Sequence[str] | None = None,
    *,
    quick: bool = False,
    loops: Sequence[str] = LOOP_FORMS,
    chunk: int | None = None,
    scan_unroll: int = 1,
    repeats: int | None = None,
    model: str = "auto",
    layout: str = "NHWC",
    torch_python: str | None = None,
    log=print,
) -> list[dict]:
    """Benchmark records (a list of dicts) for the named configurations (default: all).

    model: 'auto' (jaxface.models.vggface.VGGFace where it accepts the resolution, else the built-in
    VGG-16 stack), 'vggface' or 'builtin'; layout: 'NHWC' or 'NCHW' (built-in stack only).
    torch_python: a Python interpreter with torch; the PyTorch eager reference of the same step
    (jaxface/bench/torch_inversion.py) then runs right after, and every JAX record gets
    `speedup_vs_torch` (its image-steps/s over torch's, measured in this run).
    """
    check_torch_python(torch_python)
    if model not in ("auto", "vggface", "builtin"):
        raise BenchError(f"unknown model {model!r}; valid: auto, vggface, builtin")
    if layout not in ("NHWC", "NCHW"):
        raise BenchError(f"unknown layout {layout!r}; valid: NHWC, NCHW")
    names = list(configs or (["tiny"] if quick else list(CONFIGS)))
    known = {**CONFIGS, SMOKE.name: SMOKE}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise BenchError(f"unknown inversion bench config(s) {unknown}; valid: {', '.join(CONFIGS)}")
    bad_loops = [lp for lp in loops if lp not in LOOP_FORMS]
    if bad_loops:
        raise BenchError(f"unknown loop form(s) {bad_loops}; valid: {', '.join(LOOP_FORMS)}")
    repeats = repeats or (2 if quick else 8)
    # Each loop form in the chunks `generate` runs it in (render.DEFAULT_CHUNK), unless one is given.
    chunks = {loop: int(chunk or render_lib.DEFAULT_CHUNK[loop]) for loop in loops}
    env = environment()
    peak, peak_per_cpu_s = matmul_peak()
    log(f"float32 matmul peak: {peak:.1f} GFLOP/s, {peak_per_cpu_s:.1f} GFLOP per CPU-second  "
        f"({env['cpu_model']}, {env['cpu_count']} cores, "
        f"jax {env['jax_version']}, XLA_FLAGS={env['xla_flags']!r}, load {load_average()})")
    log(_header())
    records = []
    for name in names:
        records += bench_config(
            known[name], loops=loops, chunks=chunks, scan_unroll=scan_unroll, repeats=repeats,
            peak_gflops=peak, peak_gflops_per_cpu_s=peak_per_cpu_s, env=env, model=model, layout=layout,
            log=log,
        )
    if torch_python is not None:
        reference = torch_reference(torch_python, names, int(chunk or render_lib.DEFAULT_CHUNK["python"]),
                                    repeats)
        for r in reference:
            r.update(backend="cpu", devices=1, model="torch-eager", speedup_vs_torch=1.0,
                     cpu_model=env["cpu_model"], cpu_count=env["cpu_count"], suite=SUITE,
                     throughput=r["image_steps_per_s"], throughput_unit="image-steps/s",
                     torch_throughput=r["image_steps_per_s"])
            log(_row(r))
        torch_rate = {r["name"]: r["image_steps_per_s"] for r in reference}
        for r in records:
            r["torch_throughput"] = torch_rate[r["name"]]
            r["speedup_vs_torch"] = round(r["image_steps_per_s"] / torch_rate[r["name"]], 3)
            log(f"  {r['name']} {r['loop']}: {r['image_steps_per_s']} image-steps/s = "
                f"{r['speedup_vs_torch']}x PyTorch eager ({torch_rate[r['name']]})")
        records += reference
    return records


def torch_reference(torch_python: str, names: Sequence[str], steps: int, repeats: int) -> list[dict]:
    """Records of the PyTorch eager reference (torch_inversion.py, run by `torch_python`)."""
    from jaxface.bench.common import run_torch_script

    return run_torch_script(torch_python, "torch_inversion.py",
                            args=(f"--configs={','.join(names)}", f"--steps={steps}", f"--repeats={repeats}"))


# ------------------------------------------------------------------------------------------ table
_COLUMNS = (
    ("name", 8), ("model", 20), ("convolution", 7), ("loop", 9), ("resolution", 5), ("batch", 5), ("width", 5),
    ("step_ms", 9), ("cpu_ms_per_step", 9),
    ("image_steps_per_s", 10), ("gflops_per_s", 8), ("peak_gflops_per_s", 8), ("fraction_of_peak", 6),
    ("cpu_fraction_of_peak", 8), ("compile_s", 8), ("speedup_vs_python_loop", 8), ("speedup_vs_torch", 8),
    ("load_average", 6),
)
_TITLES = {
    "cpu_ms_per_step": "cpu_ms",
    "cpu_fraction_of_peak": "cpu_frac",
    "resolution": "px", "image_steps_per_s": "img-st/s", "gflops_per_s": "GFLOP/s",
    "peak_gflops_per_s": "peak", "fraction_of_peak": "frac", "compile_s": "compile",
    "speedup_vs_python_loop": "vs py", "speedup_vs_torch": "vs torch", "load_average": "load",
    "convolution": "conv",
}


def _header() -> str:
    return " ".join(f"{_TITLES.get(c, c):>{w}}" for c, w in _COLUMNS)


def _row(record: dict) -> str:
    return " ".join(f"{str(record.get(c)):>{w}}" for c, w in _COLUMNS)


def print_table(records: Sequence[dict]) -> None:
    flags = None
    for r in records:
        if r.get("xla_flags") != flags:
            flags = r.get("xla_flags")
            print(f"XLA_FLAGS={flags!r}")
            print(_header())
        print(_row(r))


# ------------------------------------------------------------------------------------------- main
def _run_variants(variants: Sequence[str], argv: Sequence[str]) -> list[dict]:
    """Re-run this module once per XLA_FLAGS variant (flags only take effect at JAX start-up)."""
    records = []
    for flags in variants:
        env = dict(os.environ, XLA_FLAGS=flags.strip())
        with_out = [a for a in argv if not a.startswith(("--out", "--xla-variants"))]
        tmp = f"/tmp/inversion_bench_{os.getpid()}_{len(records)}.json"
        print(f"=== XLA_FLAGS={flags.strip()!r}", flush=True)
        subprocess.run(
            [sys.executable, "-m", "jaxface.bench.inversion_bench", f"--out={tmp}", *with_out],
            env=env, check=True,
        )
        with open(tmp) as f:
            records += json.load(f)
        os.remove(tmp)
    return records


def main(argv: Sequence[str] | None = None) -> list[dict]:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the records as JSON to this file")
    parser.add_argument("--quick", action="store_true", help="tiny config only, fewer repeats")
    parser.add_argument("--configs", help=f"comma-separated subset of {','.join(CONFIGS)}")
    parser.add_argument("--loops", default=",".join(LOOP_FORMS), help="comma-separated loop forms")
    parser.add_argument("--chunk", type=int, default=None, help="steps per chunk for every loop form "
                        "(default: each form's own, jaxface.invert.render.DEFAULT_CHUNK)")
    parser.add_argument("--scan-unroll", type=int, default=1, help="unroll= of the scan form")
    parser.add_argument("--repeats", type=int, help="timed chunks per loop form (median reported)")
    parser.add_argument("--model", default="auto", help="auto | vggface | builtin")
    parser.add_argument("--layout", default="NHWC", help="NHWC | NCHW (builtin model only)")
    parser.add_argument("--xla-variants", help="';'-separated XLA_FLAGS values to compare (subprocesses)")
    parser.add_argument("--torch-python", help="a Python with torch: also time the PyTorch eager reference")
    args = parser.parse_args(argv)
    if args.xla_variants:
        records = _run_variants(args.xla_variants.split(";"), argv)
    else:
        records = run(
            args.configs.split(",") if args.configs else None,
            quick=args.quick,
            loops=args.loops.split(","),
            chunk=args.chunk,
            scan_unroll=args.scan_unroll,
            repeats=args.repeats,
            model=args.model,
            layout=args.layout,
            torch_python=args.torch_python,
        )
    print()
    print_table(records)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(records, f, indent=1)
        print(f"wrote {args.out}")
    return records


if __name__ == "__main__":
    main()
