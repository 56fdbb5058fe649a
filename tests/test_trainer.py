"""The one trainer: learning, freezing, sharding equivalence, checkpoints, resume, failures."""
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx

from jaxface.evaluate import evaluators
from jaxface.train import checkpoint, trainer

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from trainer_utils import tiny_config  # noqa: E402

pytestmark = pytest.mark.slow  # trains models and runs the CLI in subprocesses

REPO = pathlib.Path(__file__).resolve().parents[1]


def _params(state):
    pure = checkpoint.keys_to_data(state.to_pure_dict())
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(pure)[0]}


def test_overfits_a_tiny_batch(tmp_path):
    cfg = tiny_config(**{"data.num_train": 16, "num_train_steps": 60, "checkpoint_every_steps": 60,
                         "log_every_steps": 5})
    trainer.train(cfg, tmp_path)
    import json

    losses = [json.loads(l)["loss"] for l in open(tmp_path / "metrics.jsonl") if '"train"' in l]
    assert losses[-1] < 0.3 * losses[0], losses


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_frozen_layers_stay_bit_identical(tmp_path, norm):
    # With batch norm, the frozen layers' running statistics are frozen too; those above still update.
    cfg = tiny_config(freeze_below="conv5_1", num_train_steps=3, **{"model.norm": norm})
    initial = _params(trainer.build(cfg).model_state)
    final = _params(trainer.train(cfg, tmp_path)["model_state"])
    frozen = [k for k in initial if any(f"{kind}{b}_" in k for kind in ("conv", "norm") for b in (1, 2, 3, 4))]
    assert frozen
    assert any("norm" in k and "mean" in k for k in frozen) == (norm == "batch")
    for k in frozen:
        np.testing.assert_array_equal(initial[k], final[k], err_msg=k)
    trained = [k for k in initial if ("5_" in k or "fc6" in k or "heads" in k)]
    unchanged = [k for k in trained if np.array_equal(initial[k], final[k])]
    assert trained and not unchanged, unchanged


def test_unknown_freeze_layer_lists_valid_layers(tmp_path):
    with pytest.raises(ValueError, match="valid layers are: conv1_1"):
        trainer.train(tiny_config(freeze_below="conv9_9"), tmp_path)


@pytest.mark.parametrize("norm, optimizer", [("none", "adamw"), ("batch", "sgd")])
def test_step_on_8_devices_matches_1_device(tmp_path, norm, optimizer):
    # Batch norm's statistics are over the global batch whichever way the batch is sharded. The batch
    # case runs synthfaces_tiny.py's own recipe (batch norm with SGD).
    settings = {"num_train_steps": 3, "model.norm": norm, "optimizer.name": optimizer,
                "optimizer.learning_rate": 2e-3 if optimizer == "adamw" else 0.05}
    one = trainer.train(tiny_config(**{"mesh.num_devices": 1, **settings}), tmp_path / "one")
    eight = trainer.train(tiny_config(**{"mesh.num_devices": 8, **settings}), tmp_path / "eight")
    a, b = _params(one["model_state"]), _params(eight["model_state"])
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5, err_msg=k)


def _cli(workdir, steps, extra=()):
    return [sys.executable, "-m", "jaxface", "train", "--config=configs/attributes/synthfaces_tiny.py",
            f"--workdir={workdir}", "--config.model.norm=none", "--config.model.width=0.0625",
            "--config.model.input_size=32",
            "--config.data.image_size=32", "--config.batch_size=16", "--config.eval_every_steps=0",
            f"--config.num_train_steps={steps}", "--config.checkpoint_every_steps=3",
            "--config.log_every_steps=1", "--config.data.num_train=64", *extra]


def _final_params(workdir):
    cfg = tiny_config()
    setup = trainer.build(cfg)
    mngr = checkpoint.manager(workdir, create=False)
    restored = checkpoint.restore_latest(mngr, model_state=setup.model_state.to_pure_dict())
    pure = checkpoint.keys_to_data(restored["model"])
    return restored["step"], {jax.tree_util.keystr(p): np.asarray(v) for p, v in
                              jax.tree_util.tree_flatten_with_path(pure)[0]}


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    steps = 30
    env = dict(os.environ)
    # the uninterrupted run goes alongside the killed one (independent processes; saves wall time)
    full_log = tmp_path / "full.log"
    with open(full_log, "w") as log:
        full = subprocess.Popen(_cli(tmp_path / "full", steps), cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    proc = subprocess.Popen(_cli(tmp_path / "killed", steps), cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ckpt = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if ckpt.is_dir() and any(p.name.isdigit() for p in ckpt.iterdir()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = [int(p.name) for p in ckpt.iterdir() if p.name.isdigit()]
    assert done and max(done) < steps
    resumed = subprocess.run(_cli(tmp_path / "killed", steps), cwd=REPO, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming from checkpoint step" in resumed.stdout
    full.wait(timeout=600)
    assert full.returncode == 0, full_log.read_text()
    step_a, a = _final_params(tmp_path / "full")
    for run in ("killed",):
        step_b, b = _final_params(tmp_path / run)
        assert step_a == step_b == steps
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{run}: {k}")


def _interrupted_at(workdir, steps, sig, at_step):
    """The CLI run with the signal delivered as step AT_STEP finishes (faults.py's hook: no sleeps)."""
    env = dict(os.environ, JAXFACE_FAULTS=f"train_step@{at_step}={sig.name}")
    return subprocess.run(_cli(workdir, steps), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_sigterm_and_ctrl_c_save_a_checkpoint_and_exit_cleanly(tmp_path, sig, status):
    done = _interrupted_at(tmp_path, 30, sig, 5)
    out = done.stdout + done.stderr
    assert done.returncode == status, out
    assert "KeyboardInterrupt" not in out and "Traceback" not in out
    assert f"{sig.name}: saved checkpoint step 5 in" in out
    assert 5 in [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]


def test_a_run_that_fails_validation_leaves_config_json_as_it_was(tmp_path):
    # The CLI writes config.json from train's on_start, which runs only once the run has been checked.
    written = []
    trainer.train(tiny_config(num_train_steps=2), tmp_path, on_start=lambda: written.append("narrow"))
    with pytest.raises(checkpoint.CheckpointError, match="but the model has"):
        trainer.train(tiny_config(num_train_steps=4, **{"model.width": 0.125}), tmp_path,
                      on_start=lambda: written.append("wide"))
    assert written == ["narrow"]


def test_nan_loss_stops_with_last_good_checkpoint(tmp_path):
    cfg = tiny_config(**{"optimizer.name": "sgd", "optimizer.learning_rate": 1e30,
                         "optimizer.grad_clip_norm": 0.0, "num_train_steps": 40,
                         "checkpoint_every_steps": 1, "log_every_steps": 1})
    with pytest.raises(trainer.TrainingDiverged, match="NaN/inf.*last good checkpoint"):
        trainer.train(cfg, tmp_path)
    steps = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert steps, "the checkpoints written before divergence are kept"
    _, params = _final_params(tmp_path)
    assert all(np.all(np.isfinite(v)) for v in params.values())


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path, capsys):
    trainer.train(tiny_config(num_train_steps=4), tmp_path)
    latest = tmp_path / "checkpoints" / "4"
    for f in (latest / "model").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    result = trainer.train(tiny_config(num_train_steps=6), tmp_path)
    out = capsys.readouterr().out
    assert "step 4 is unreadable" in out and "resuming from checkpoint step 2" in out
    assert result["step"] == 6
    assert (tmp_path / "checkpoints_corrupt" / "4").is_dir()


def test_all_checkpoints_corrupt_is_an_error_not_a_fresh_start(tmp_path):
    trainer.train(tiny_config(num_train_steps=2), tmp_path)
    for f in (tmp_path / "checkpoints").rglob("*"):
        if f.is_file() and "model" in str(f):
            f.write_bytes(b"garbage")
    with pytest.raises(checkpoint.CheckpointError, match="Refusing to restart from scratch|refusing"):
        trainer.train(tiny_config(num_train_steps=4), tmp_path)


def test_checkpoint_of_another_shape_is_a_clear_error(tmp_path):
    plain = {"model.norm": "none"}
    trainer.train(tiny_config(num_train_steps=2, **plain), tmp_path)
    with pytest.raises(checkpoint.CheckpointError, match="shape .* but the model has"):
        trainer.load_for_inference(tmp_path, tiny_config(**{"model.width": 0.125, **plain}))
    # Another parameter set either way (batch norm: norm layers and no conv biases) is a clear error
    # too, and the checkpoints stay where they are: a config mismatch is not a corrupt file.
    with pytest.raises(checkpoint.CheckpointError, match="holds model entries that the model does not have"):
        trainer.load_for_inference(tmp_path, tiny_config(**{"model.norm": "batch"}))
    normed = tmp_path / "normed"
    trainer.train(tiny_config(num_train_steps=2, **{"model.norm": "batch"}), normed)
    with pytest.raises(checkpoint.CheckpointError, match="holds model entries .* such as .*norm1_1"):
        trainer.load_for_inference(normed, tiny_config(**plain))
    for workdir, cfg in ((tmp_path, tiny_config(**plain)), (normed, tiny_config(**{"model.norm": "batch"}))):
        assert not (workdir / "checkpoints_corrupt").exists()
        assert trainer.load_for_inference(workdir, cfg).step == 2


def test_evaluate_writes_report(tmp_path):
    cfg = tiny_config(num_train_steps=2)
    trainer.train(cfg, tmp_path)
    result = evaluators.evaluate_split(trainer.load_for_inference(tmp_path, cfg))
    import json

    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics) >= {"mean_accuracy", "per_attribute", "per_head", "num_examples"}
    assert metrics["num_examples"] == 64
    assert len(metrics["per_attribute"]) == 23
    assert 0.0 <= metrics["mean_accuracy"] <= 1.0
    for name in ("per_attribute.csv", "accuracy.png", "confusion_hair.png", "confusion_eyewear.png"):
        assert (tmp_path / "eval" / name).stat().st_size > 0
    assert "mean per-attribute accuracy" in result["text"]


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(tiny_config().to_json())
    with pytest.raises(checkpoint.CheckpointError, match="run `jaxface train` first"):
        trainer.load_for_inference(tmp_path)


def test_trains_on_real_celeba_sample(tmp_path, shared_data):
    cfg = tiny_config(**{"data.source": "celeba", "data.schema": "celeba40",
                         "data.root": str(shared_data / "celeba32"), "num_train_steps": 3,
                         "batch_size": 8, "eval_batch_size": 8})
    result = trainer.train(cfg, tmp_path)
    assert result["step"] == 3
    ev = evaluators.evaluate_split(trainer.load_for_inference(tmp_path, cfg), "train")
    assert ev["metrics"]["num_examples"] > 0
