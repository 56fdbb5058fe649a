"""The `jaxface` command as a user runs it: help, the data command, and one-line user errors."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # every test runs `python -m jaxface` in a subprocess


REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "jaxface", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_help_lists_every_command():
    out = _run("--help")
    assert out.returncode == 0
    for command in ("data", "train", "evaluate", "fit-cgmm", "generate", "predict", "convert-weights", "bench", "demo",
                    "serve"):
        assert f"  {command} " in out.stdout


def test_unknown_command_is_one_line():
    out = _run("trian")
    assert out.returncode == 2
    assert out.stderr.strip() == ("error: unknown command 'trian'; valid commands: "
                                  "data, train, evaluate, fit-cgmm, generate, predict, export-model, convert-weights, bench, demo, "
                                  "serve")


def test_no_command_is_a_usage_error_and_command_help_lists_its_flags():
    bare = _run()
    assert bare.returncode == 2 and "usage: jaxface <command>" in bare.stderr
    for flag in ("--help", "-h"):
        helped = _run("predict", flag)
        assert helped.returncode == 0, helped.stderr
        assert "usage: jaxface predict" in helped.stdout
        for name in ("--workdir", "--output", "--overwrite", "--batch_size"):
            assert f"  {name}:" in helped.stdout


def test_misspelt_config_key_is_one_line_with_the_suggestion(tmp_path):
    out = _run("train", "--config=configs/attributes/synthfaces_tiny.py", f"--workdir={tmp_path / 'w'}",
               "--config.num_trian_steps=5")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        "error: unknown config key: 'num_trian_steps' Did you mean \"num_train_steps\" instead of "
        "\"num_trian_steps\"?"]
    assert not (tmp_path / "w").exists()


def test_data_command_writes_config_summary_and_plots(tmp_path):
    out = _run("data", "--config=configs/attributes/synthfaces_tiny.py", f"--workdir={tmp_path}",
               "--config.data.num_train=300", "--config.data.num_val=20", "--config.data.num_test=40",
               "--config.data.image_size=48", cwd=tmp_path)  # config path resolved from any directory
    assert out.returncode == 0, out.stderr
    assert "train 300, val 20, test 40" in out.stdout
    assert "Black Hair" in out.stdout
    for name in ("config.json", "data/preview.png", "data/attribute_rates.png", "data/summary.json"):
        assert f"wrote {tmp_path / name}" in out.stdout
        assert (tmp_path / name).stat().st_size > 0
    resolved = json.loads((tmp_path / "config.json").read_text())
    assert resolved["data"]["image_size"] == 48 and resolved["data"]["num_train"] == 300


def test_user_errors_are_one_clear_line(tmp_path):
    missing = _run("data", "--config=configs/attributes/missing.py", f"--workdir={tmp_path}")
    assert missing.returncode == 2 and "config file 'configs/attributes/missing.py' not found" in missing.stderr
    bad_source = _run("data", "--config=configs/attributes/synthfaces_tiny.py", f"--workdir={tmp_path}",
                      "--config.data.source=imagenet")
    assert bad_source.returncode == 2
    assert "error: unknown data.source 'imagenet'; valid sources: synthfaces" in bad_source.stderr
    assert "Traceback" not in bad_source.stderr
    no_root = _run("data", "--config=configs/attributes/synthfaces_tiny.py", f"--workdir={tmp_path}",
                   "--config.data.source=celeba", f"--config.data.root={tmp_path / 'nowhere'}")
    assert no_root.returncode == 2 and "nowhere" in no_root.stderr and "Traceback" not in no_root.stderr
    no_ckpt = _run("evaluate", f"--workdir={tmp_path}")
    assert no_ckpt.returncode == 2 and "run `jaxface train` first" in no_ckpt.stderr
    suite = _run("bench", "--suite=bogus")
    assert suite.returncode == 2 and "unknown --suite='bogus'; valid: train, inversion" in suite.stderr
    torch = _run("bench", "--suite=inversion", f"--torch_python={tmp_path / 'python'}")
    assert torch.returncode == 2 and "is not an executable Python interpreter" in torch.stderr
    assert "Traceback" not in suite.stderr + torch.stderr
    fresh = tmp_path / "conv"
    for variable, value, valid in (("JAXFACE_CONV", "mkl", "auto, xla, onednn"),
                                   ("JAXFACE_WINOGRAD", "fast", "auto, always, off")):
        bad = subprocess.run([sys.executable, "-m", "jaxface", "data", f"--workdir={fresh}"], cwd=REPO,
                             capture_output=True, text=True, timeout=300, env={**os.environ, variable: value})
        assert bad.returncode == 2 and "Traceback" not in bad.stderr
        assert f"error: {variable}='{value}' is not a valid setting; valid: {valid}" in bad.stderr
        assert not fresh.exists()


def test_vgg_commands_add_their_cpu_xla_flag_once_and_users_win():
    import jaxlib

    from jaxface import parallel

    flag = parallel.VGG_CPU_XLA_FLAGS[0]
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    added = parallel.apply_vgg_cpu_xla_flags(env)
    if not jaxlib.__version__.startswith(parallel._VGG_FLAG_JAXLIBS):
        assert not added and env == {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
        return
    assert added and env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=8 {flag}"
    assert not parallel.apply_vgg_cpu_xla_flags(env)  # once
    mine = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot"}
    assert not parallel.apply_vgg_cpu_xla_flags(mine) and mine["XLA_FLAGS"].endswith("=dot")
    off = {"JAXFACE_XLA_DEFAULTS": "0"}
    assert not parallel.apply_vgg_cpu_xla_flags(off) and "XLA_FLAGS" not in off
    empty = {}
    assert parallel.apply_vgg_cpu_xla_flags(empty) and empty["XLA_FLAGS"] == flag


def test_pytorch_reference_under_a_python_without_torch_is_a_clear_error():
    import pytest

    from jaxface.bench import common, inversion_bench

    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("this Python has torch: the reference would run")
    with pytest.raises(common.BenchError, match=r"PyTorch reference failed under .*No module named 'torch'"):
        inversion_bench.torch_reference(sys.executable, ["tiny"], steps=1, repeats=1)
    not_torch = r"PyTorch reference failed under .*\(torch_train.py: .*No module named 'torch'"
    with pytest.raises(common.BenchError, match=not_torch):
        common.run_torch_script(sys.executable, "torch_train.py", {"cases": []})


def test_training_on_an_unreadable_folder_stops_at_once_and_leaves_no_workdir(tmp_path):
    for label in ("real", "fake"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(12):
            (tmp_path / "data" / label / f"{i}.jpg").write_bytes(b"not a jpeg")
    workdir = tmp_path / "run"
    out = _run("train", "--config=configs/detect/realfake_resnet18.py", f"--workdir={workdir}",
               f"--config.data.root={tmp_path / 'data'}", "--config.model.width=0.125",
               "--config.model.input_size=32", "--config.data.image_size=32", "--config.batch_size=8")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    import re

    assert re.search(r"error: the train split of data\.source='realfake': (\d+) of the first \1 images could "
                     r"not be read", out.stderr), out.stderr
    assert "not a recognised image format" in out.stderr
    assert not workdir.exists()


def test_a_workdir_path_with_spaces_and_non_ascii_characters(tmp_path):
    workdir = tmp_path / "my runs" / "visages été 顔"
    out = _run("train", "--config=configs/attributes/synthfaces_tiny.py", f"--workdir={workdir}",
               "--config.model.width=0.0625", "--config.model.input_size=32", "--config.data.image_size=32",
               "--config.batch_size=16", "--config.num_train_steps=2", "--config.eval_every_steps=0",
               "--config.checkpoint_every_steps=2", "--config.data.num_train=64", "--config.data.num_val=16",
               "--config.data.num_test=32")
    assert out.returncode == 0, out.stderr
    assert f"wrote {workdir / 'config.json'}" in out.stdout
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]
    assert json.loads((workdir / "config.json").read_text())["model"]["norm"] == "batch"  # the default


def test_a_second_command_reuses_the_compiled_programs(tmp_path):
    # The suite's own cache (JAX_COMPILATION_CACHE_DIR, JAX's setting, which wins) is left out here.
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    cache = tmp_path / "xdg" / "jaxface" / "xla"

    def train(workdir, **extra_env):
        args = [sys.executable, "-m", "jaxface", "train", "--config=configs/attributes/synthfaces_tiny.py",
                f"--workdir={workdir}", "--config.model.width=0.0625", "--config.model.input_size=32",
                "--config.data.image_size=32", "--config.batch_size=16", "--config.num_train_steps=2",
                "--config.eval_every_steps=0", "--config.data.num_train=64", "--config.data.num_val=16",
                "--config.data.num_test=16"]
        out = subprocess.run(args, cwd=REPO, env={**env, **extra_env}, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return {p.name: p.stat().st_mtime_ns for p in cache.glob("*-cache")} if cache.is_dir() else {}

    first = train(tmp_path / "a")
    assert any(name.startswith("jit_step") for name in first), first  # the training step was stored
    # The same programs again: every one stored is read back (a recompile would rewrite its entry). A
    # program whose compile time is near the threshold may be stored by one run and not the other.
    second = train(tmp_path / "b")
    assert {name: second.get(name) for name in first} == first


def test_the_compilation_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    from jaxface import parallel

    home = os.path.expanduser("~")
    assert parallel.compilation_cache_dir({}) == os.path.join(home, ".cache", "jaxface", "xla")
    assert parallel.compilation_cache_dir({"XDG_CACHE_HOME": "/c"}) == "/c/jaxface/xla"
    assert parallel.compilation_cache_dir({"JAXFACE_COMPILATION_CACHE": "~/x"}) == os.path.join(home, "x")
    for off in ("off", "OFF", "0", "none"):
        assert parallel.compilation_cache_dir({"JAXFACE_COMPILATION_CACHE": off}) is None
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("JAXFACE_COMPILATION_CACHE", "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert parallel.enable_compilation_cache() is None and not any(tmp_path.iterdir())
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))  # JAX's own setting wins
    assert parallel.enable_compilation_cache() == str(tmp_path / "jax")
