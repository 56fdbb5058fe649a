"""Multi-process runs give the one-process results (issue 19): 2 processes x 4 simulated CPU devices
(gloo collectives on loopback, launched by launch/local/run.sh) against 1 process x 8 devices, through
tests/multiprocess_job.py: training of the tiny attribute classifier (batch norm) and of the MobileNetV3
detector, checkpoints resumed across topologies in both directions, fit-cgmm, a generation sweep split
over the processes, evaluation and predict over a folder; and process 1 writes nothing under the
workdirs but the per-process part of orbax's checkpoint protocol."""
import csv
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image

from serve_test_utils import face_images

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[1]
JOB = REPO / "tests" / "multiprocess_job.py"
LOCAL = str(REPO / "launch" / "local" / "run.sh")
HALF = {"attributes": 4, "detector": 2}  # the checkpoint a resumed run starts from (of 8 and 4 steps)


def _env(devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COORDINATOR")}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PATH"] = f"{pathlib.Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(cmd, devices):
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=_env(devices), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    print(f"{' '.join(map(str, cmd[-3:]))}: {time.monotonic() - start:.0f} s")
    return proc


def _cut_back(src: pathlib.Path, dst: pathlib.Path) -> None:
    """A copy of a run's training workdirs holding only the checkpoints up to half-way."""
    for model, half in HALF.items():
        shutil.copytree(src / model, dst / model, ignore=shutil.ignore_patterns("eval", "cgmm", "generate"))
        for step in (dst / model / "checkpoints").iterdir():
            if step.name.isdigit() and int(step.name) > half:
                shutil.rmtree(step)


def _losses(workdir: pathlib.Path) -> dict:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r.get("split") == "train"}  # a resumed run's entries last


def _params(workdir: pathlib.Path) -> dict:
    from jaxface.models import weights
    from jaxface.train import trainer

    setup = trainer.load_for_inference(workdir)
    return {k: np.asarray(v) for k, v in weights.flatten_state(setup.model_state.to_pure_dict()).items()
            if not jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key)}


def _assert_close_tree(a, b, path="", rel=1e-4, abs_=1e-6):
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _assert_close_tree(a[k], b[k], f"{path}/{k}", rel, abs_)
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close_tree(x, y, f"{path}[{i}]", rel, abs_)
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=rel, abs=abs_, nan_ok=True), path
    else:
        assert a == b, path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("multiprocess")
    (out / "images").mkdir()
    for i, image in enumerate(face_images(6, 48)):
        Image.fromarray(image).save(out / "images" / f"face_{i}.png")
    (out / "images" / "broken.png").write_bytes(b"not an image")
    (out / "sweep.json").write_text(json.dumps([
        {"attributes": "Male", "seeds": [0, 1, 2]},
        {"attributes": "Smiling, Mouth Open", "seeds": [4, 5], "mode": "sample", "model": "joint"}]))
    py = sys.executable
    _run([py, str(JOB), str(out), "one:all"], 8)
    _cut_back(out / "one", out / "one_to_two")
    launched = _run([LOCAL, f"--logdir={out / 'logs'}", "2", "--", py, str(JOB), str(out), "two:all",
                     "one_to_two:resume"], 4)
    _cut_back(out / "two", out / "two_to_one")
    _run([py, str(JOB), str(out), "two_to_one:resume"], 8)
    return out, launched


def test_two_processes_train_like_one_and_checkpoints_resume_across_topologies(runs):
    out, launched = runs
    assert "all 2 processes exited with status 0" in launched.stderr
    for model, steps in (("attributes", 8), ("detector", 4)):
        one = _losses(out / "one" / model)
        assert sorted(one) == list(range(1, steps + 1))
        for other in ("two", "one_to_two", "two_to_one"):
            losses = _losses(out / other / model)
            assert sorted(losses) == sorted(one), (other, model)
            # The same global batches in the same order, also after a resume in the other topology.
            np.testing.assert_allclose([losses[s] for s in one], list(one.values()), rtol=2e-5,
                                       err_msg=f"{other}/{model}")
        reference = _params(out / "one" / model)
        for other in ("two", "one_to_two", "two_to_one"):
            params = _params(out / other / model)
            assert params.keys() == reference.keys()
            for name in reference:
                np.testing.assert_allclose(params[name], reference[name], rtol=1e-4, atol=1e-5,
                                           err_msg=f"{other}/{model}: {name}")


def test_fit_cgmm_sweep_evaluate_and_predict_agree_and_process_1_writes_nothing(runs):
    out, _ = runs
    one, two = out / "one", out / "two"
    a, b = (np.load(d / "attributes" / "cgmm" / "cgmm.npz") for d in (one, two))
    assert a.files == b.files
    for key in a.files:  # statistics streamed over each process's shard and reduced across processes
        np.testing.assert_allclose(b[key], a[key], rtol=1e-4, atol=1e-4, equal_nan=True, err_msg=key)

    sweep = "attributes/generate/sweep_sweep"
    images = sorted(p.relative_to(one / sweep) for p in (one / sweep).rglob("images/*.png"))
    assert len(images) == 5
    assert images == sorted(p.relative_to(two / sweep) for p in (two / sweep).rglob("images/*.png"))
    for rel in images:  # every item rendered by one of the processes, gathered by process 0
        x, y = (np.asarray(Image.open(d / sweep / rel), np.int16) for d in (one, two))
        assert np.abs(x - y).max() <= 1, rel
    _assert_close_tree(json.loads((two / sweep / "results.json").read_text()),
                       json.loads((one / sweep / "results.json").read_text()))
    assert not (two / sweep / "partial").exists()

    _assert_close_tree(json.loads((two / "attributes/eval/metrics.json").read_text()),
                       json.loads((one / "attributes/eval/metrics.json").read_text()))
    predicted = [list(csv.DictReader((d / "detector/predictions.csv").open())) for d in (one, two)]
    assert [r["path"] for r in predicted[1]] == [r["path"] for r in predicted[0]]
    assert len(predicted[0]) == 7 and sum(r["error"] != "" for r in predicted[0]) == 1
    for r0, r1 in zip(*predicted):
        assert r0["error"] == r1["error"]
        if r0["p_fake"]:
            assert float(r1["p_fake"]) == pytest.approx(float(r0["p_fake"]), abs=1e-5)

    def tree(root):
        return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
                and "checkpoints" not in p.parts and "tensorboard" not in p.parts}

    assert tree(two) == tree(one)  # the same files, written once
    writes = json.loads((out / "writes_1.json").read_text())
    assert writes, "the audit hook saw no write at all"
    others = [w for w in writes if not ("/checkpoints/" in w[1] and "array_metadatas/process_1" in w[1])]
    assert not others, others[:5]
