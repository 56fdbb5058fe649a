"""`jaxface bench --suite=serve`: `jaxface serve` in a subprocess on loopback, timed from a client.

For each detector config: the latency of one request at a time (p50/p99 of the round trip, micro-
batching on and off), and throughput with 1, 8 and 32 concurrent clients, micro-batching on (the
server's defaults: 32 images / 5 ms) and off (--max_batch=1). The detectors are freshly initialised
(step 0 checkpoints): the numbers time the service and the network's arithmetic, not its accuracy.
Every request uploads the same 256x256 JPEG face, decoded and resized by the server as in training.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from jaxface.serve import loadgen

CASES = {
    # The demo's detector (MobileNetV3-Small, 64 px) and the real-photograph detector (ResNet-18/4, 128 px).
    "synthfakes_mobilenet": ("configs/detect/synthfakes_mobilenet.py", {}),
    "realfake_resnet18": ("configs/detect/realfake_resnet18.py", {"data.root": "unused-for-timing"}),
}
# The smallest case, for `--size=smoke` and the test suite: a spectrum detector at 32 px.
SMOKE_CASES = {"tiny_spectrum": ("configs/detect/synthfakes_mobilenet.py", {
    "model.name": "spectrum", "model.input_size": 32, "data.image_size": 32, "model.dropout": 0.0})}
CLIENTS = (1, 8, 32)
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
WEIGHTS = "freshly initialised (step 0 checkpoint, timing only)"


class ServerProcess:
    """`python -m jaxface serve ARGS --port=0` with the port read from its first line; stop() = SIGTERM."""

    def __init__(self, args, *, cwd=None, env=None, ready_timeout: float = 600.0):
        env = dict(os.environ if env is None else env)
        # The subprocess imports this same jaxface tree (a worktree, or an editable install elsewhere).
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc = subprocess.Popen([sys.executable, "-m", "jaxface", "serve", "--port=0", *args], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.output: list[str] = []
        line = self.proc.stdout.readline()
        self.output.append(line)
        match = re.search(r"serving http://([^/]+):(\d+)/", line)
        if not match:
            rest = self.proc.communicate(timeout=60)[0]
            raise RuntimeError(f"jaxface serve did not start: {line}{rest}")
        self.host, self.port = match.group(1), int(match.group(2))
        self._drain_output()
        deadline = time.time() + ready_timeout
        while True:
            try:
                if loadgen.get(self.host, self.port, "/healthz").status == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError("jaxface serve did not become ready:\n" + "".join(self.output))
            time.sleep(0.25)

    def _drain_output(self):
        import threading

        def drain():
            for line in self.proc.stdout:
                self.output.append(line)

        threading.Thread(target=drain, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("VmRSS missing")

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def fresh_workdir(config_path: str, overrides: dict, workdir: pathlib.Path) -> pathlib.Path:
    """A detector workdir holding the config's freshly initialised model as a step 0 checkpoint."""
    from jaxface import config as config_lib
    from jaxface import files
    from jaxface.train import checkpoint, optim, trainer

    workdir = pathlib.Path(workdir)
    cfg = config_lib.load_config(config_path, overrides or None)
    setup = trainer.build(cfg)
    # The optimiser state a training run would save with it (checkpoints always hold one).
    trainable = optim.trainable_filter(cfg.get("freeze_below", ""), setup.task.layer_of, setup.task.layer_index)
    _, opt_state = trainer.create_optimizer(setup.model_def, setup.model_state,
                                            optim.build_optimizer(cfg.optimizer, int(cfg.num_train_steps)),
                                            trainable, setup.mesh, cfg)
    files.write_text(workdir / "config.json", cfg.to_json_best_effort(indent=2))
    mngr = checkpoint.manager(workdir)
    checkpoint.save(mngr, 0, model_state=setup.model_state.to_pure_dict(), opt_state=opt_state.to_pure_dict(),
                    meta={"step": 0, "task": setup.task.name, "seed": int(cfg.seed)}, force=True)
    mngr.wait_until_finished()
    return workdir


def face_jpeg(resolution: int = 256) -> bytes:
    from jaxface.data import imageio
    from jaxface.data.synthfakes import SynthRealFake

    return imageio.encode_jpeg(np.asarray(SynthRealFake(2, resolution=resolution, seed=3)[0]["image"]), quality=90)


def _percentile_ms(seconds, q) -> float:
    return float(np.percentile(np.asarray(seconds) * 1000.0, q))


def _timed_run(server: ServerProcess, request, total: int, clients: int) -> dict:
    responses, wall = loadgen.run_sync(server.host, server.port, [request] * total, clients)
    ok = [r for r in responses if r is not None and r.status == 200]
    seconds = [r.seconds for r in ok]
    return {"requests": total, "errors": total - len(ok), "throughput_rps": len(ok) / wall,
            "p50_ms": _percentile_ms(seconds, 50) if ok else None, "p99_ms": _percentile_ms(seconds, 99) if ok else None,
            "wall_s": wall}


def run(quick: bool = False, cases: dict | None = None, clients=CLIENTS, latency_requests: int | None = None,
        throughput_requests: int | None = None, extra_args=()) -> list[dict]:
    from jaxface.bench import common

    cases = CASES if cases is None else cases
    latency_requests = latency_requests or (30 if quick else 300)
    throughput_requests = throughput_requests or (48 if quick else 640)
    body, content_type = loadgen.multipart("file", "face.jpg", face_jpeg(), "image/jpeg")
    request = loadgen.Request("POST", "/v1/detect", body, content_type)
    env = common.environment()
    records = []
    with tempfile.TemporaryDirectory(prefix="jaxface_serve_bench_") as tmp:
        for case, (config_path, overrides) in cases.items():
            workdir = fresh_workdir(config_path, overrides, pathlib.Path(tmp) / case)
            saved = json.loads((workdir / "config.json").read_text())
            base = {"suite": "serve", "case": case, "config": config_path, "model": saved["model"]["name"],
                    "input_size": saved["data"]["image_size"], "resolution": saved["data"]["image_size"],
                    "weights": WEIGHTS, "upload": "256x256 JPEG", "throughput_unit": "requests/s"}
            for batching in (True, False):
                args = [f"--workdir={workdir}", "--min_side=32", *extra_args] + ([] if batching else ["--max_batch=1"])
                server = ServerProcess(args)
                try:
                    _timed_run(server, request, 10, 1)  # warm connections and caches
                    single = _timed_run(server, request, latency_requests, 1)
                    mode = "batched" if batching else "unbatched"
                    records.append(dict(base, name=f"{case}_{mode}_single", micro_batching=batching, clients=1,
                                        measure="latency", **single, **_core(single), **env))
                    print(f"{case} {mode}: single request p50 {single['p50_ms']:.1f} ms, p99 {single['p99_ms']:.1f} ms",
                          flush=True)
                    first = None
                    for c in clients:
                        result = _timed_run(server, request, max(throughput_requests, 4 * c), c)
                        first = first or result["throughput_rps"]
                        records.append(dict(base, name=f"{case}_{mode}_c{c}", micro_batching=batching, clients=c,
                                            measure="throughput", vs_one_client=result["throughput_rps"] / first,
                                            **result, **_core(result), **env))
                        print(f"{case} {mode}: {c:2d} clients {result['throughput_rps']:.0f} req/s "
                              f"(p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms)", flush=True)
                finally:
                    code = server.stop()
                if code != 0:
                    raise RuntimeError(f"jaxface serve exited {code}:\n" + "".join(server.output[-20:]))
    return records


def _core(result: dict) -> dict:
    # The common record keys (bench.common.CORE_KEYS): requests/s, and the median round trip as the step.
    return {"throughput": result["throughput_rps"], "step_ms": result["p50_ms"]}


def summary(records) -> str:
    from jaxface.bench import common

    return common.print_table(records, ["name", "clients", "requests", "errors", "throughput_rps", "p50_ms", "p99_ms"])
