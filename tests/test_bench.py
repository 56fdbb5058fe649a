"""`jaxface bench` at smoke size: every suite runs and its records have the common shape (never a speed)."""
import pytest

from jaxface.bench import common, suites

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("suite", ["train", "inversion", "cgmm", "data", "predict"])
def test_every_suite_runs_at_smoke_size_and_its_records_share_one_shape(suite):
    records = suites.run(suite, size="smoke")  # serve: tests/test_serve_bench.py
    assert records, f"suite {suite} gave no records"
    for r in records:
        missing = set(common.RECORD_KEYS) - set(r)
        assert not missing, f"{suite} record {r.get('name')} lacks {sorted(missing)}"
        assert r["suite"] == suite and isinstance(r["name"], str) and r["name"]
        assert r["throughput"] > 0 and r["throughput_unit"].endswith("/s")
        assert r["peak_gflops_per_s"] > 0 and r["cpu_count"] >= 1 and r["jax_version"]
        if r["gflops_per_s"] is not None:
            assert r["fraction_of_peak"] == pytest.approx(r["gflops_per_s"] / r["peak_gflops_per_s"], abs=1e-3)
        assert r["speedup_vs_torch"] is None and r["torch_throughput"] is None  # no --torch_python given
    if suite in ("train", "inversion"):
        assert all(r["gflops_per_s"] and r["step_ms"] > 0 and r["compile_s"] >= 0 for r in records)
    if suite == "predict":
        (r,) = records
        assert r["images"] == 4 and r["detector"] == "faces_wild" and r["throughput_unit"] == "images/s"


def test_a_record_without_its_throughput_is_refused_and_torch_figures_become_a_speedup():
    with pytest.raises(ValueError, match="has no 'throughput'"):
        common.complete({"suite": "x", "name": "y", "throughput_unit": "images/s"})
    r = common.complete({"suite": "x", "name": "y", "throughput": 30.0, "throughput_unit": "images/s",
                         "torch_throughput": 20.0, "gflops_per_s": 5.0, "backend": "mine"})
    assert r["speedup_vs_torch"] == 1.5 and r["backend"] == "mine"  # the record's own keys win
    assert r["fraction_of_peak"] == pytest.approx(5.0 / r["peak_gflops_per_s"], abs=1e-3)


def test_unknown_size_suite_or_torch_interpreter_is_one_clear_error(tmp_path):
    with pytest.raises(common.BenchError, match="unknown benchmark size 'huge'; valid: full, quick, smoke"):
        suites.run("train", size="huge")
    with pytest.raises(common.BenchError, match="valid: train, inversion, cgmm, data, predict, serve, startup, scaling, all"):
        suites.run("speed")
    with pytest.raises(common.BenchError, match="is not an executable Python interpreter"):
        suites.run("train", size="smoke", torch_python=str(tmp_path / "python"))


def test_version_says_what_a_run_will_use(capsys, monkeypatch):
    from jaxface import cli

    monkeypatch.setenv("JAXFACE_CONV", "xla")
    monkeypatch.setenv("JAXFACE_COMPILATION_CACHE", "off")
    assert cli.run(["jaxface", "--version"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("jaxface ") and "jax 0." in lines[0]
    assert lines[1].startswith("devices: 8 x cpu")  # tests/conftest.py: 8 simulated devices
    assert lines[2] == "convolution on CPU: xla (JAXFACE_CONV=xla)"
    assert lines[3].startswith("compilation cache: off")


def test_the_startup_suite_times_cold_and_warm_commands_with_their_own_caches():
    records = suites.run("startup", size="smoke")
    assert [r["name"] for r in records] == ["generate_cold", "generate_warm", "serve_cold", "serve_warm"]
    for r in records:
        assert not set(common.RECORD_KEYS) - set(r)
        assert r["suite"] == "startup" and r["seconds"] > 0 and r["step_ms"] == pytest.approx(r["seconds"] * 1e3, rel=1e-3)
        assert r["cache_entries"] > 0  # the cold run filled its cache
    for cold, warm in (records[0:2], records[2:4]):
        assert warm["warm_speedup"] == pytest.approx(cold["seconds"] / warm["seconds"], rel=1e-2)
        assert warm["new_cache_entries"] >= 0


def test_the_scaling_suite_runs_one_and_two_processes_on_loopback():
    records = suites.run("scaling", size="smoke")
    assert [r["name"] for r in records] == ["train_step_p1", "inversion_sweep_p1", "train_step_p2",
                                            "inversion_sweep_p2"]
    for r in records:
        assert not set(common.RECORD_KEYS) - set(r)
        assert r["suite"] == "scaling" and r["throughput"] > 0 and r["step_ms"] > 0
        assert r["images_per_s_per_process"] == pytest.approx(r["throughput"] / r["processes"], rel=1e-2)
    one, two = records[0], records[2]
    assert two["batch"] == 2 * one["batch"]  # weak scaling: the same share per process
    assert one["allreduce_share"] == 0.0 and two["allreduce_ms"] > 0 and two["allreduce_share"] > 0
    assert records[3]["batch"] == 2 * records[1]["batch"]
