"""`jaxface bench --suite=serve` at a tiny size: the records' shape, never the speed."""
import pytest

from jaxface.bench import common, serve_bench, suites

pytestmark = pytest.mark.slow

TINY = serve_bench.SMOKE_CASES


def test_serve_suite_records_latency_and_throughput_with_and_without_batching():
    assert "serve" in suites.SUITES and "serve" in suites.SUITE_NAMES
    records = serve_bench.run(cases=TINY, clients=(1, 4), latency_requests=6, throughput_requests=8)
    assert [r["name"] for r in records] == [
        "tiny_spectrum_batched_single", "tiny_spectrum_batched_c1", "tiny_spectrum_batched_c4",
        "tiny_spectrum_unbatched_single", "tiny_spectrum_unbatched_c1", "tiny_spectrum_unbatched_c4"]
    for r in records:
        assert r["suite"] == "serve" and r["model"] == "spectrum" and r["input_size"] == 32
        assert r["errors"] == 0 and r["throughput_rps"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"]
        assert {"jax_version", "cpu_model", "backend", "devices", "weights"} <= set(r)
        r = common.complete(r)  # what `jaxface bench` writes: the common record shape
        assert set(common.RECORD_KEYS) <= set(r) and r["throughput"] == r["throughput_rps"]
        assert r["throughput_unit"] == "requests/s" and r["step_ms"] == r["p50_ms"] and r["resolution"] == 32
        assert r["micro_batching"] == ("unbatched" not in r["name"])
    c4 = [r for r in records if r["clients"] == 4]
    assert all(r["measure"] == "throughput" and r["requests"] == 16 and r["vs_one_client"] > 0 for r in c4)
