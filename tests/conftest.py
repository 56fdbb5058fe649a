"""Test-wide set-up: 8 simulated CPU devices, fixed before JAX initialises, so sharding paths run."""
import os

# Once: pytest-xdist's workers inherit the controller's environment and import this file again.
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the session and the CLI subprocesses it starts: most tests build
# the same tiny models, and recompiling their identical programs was most of the suite's CPU time.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxface-tests-xla-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import pathlib  # noqa: E402

import pytest  # noqa: E402

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    """Tests that take ../shared/data carry the shared_data marker, so `-m` can select them."""
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.shared_data)


@pytest.fixture
def shared_data():
    """Path to ../shared/data; skips the test where a fresh clone does not have it."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def cgmm_workdir(tmp_path_factory):
    """(workdir, fit result): a classifier trained 3 steps (32 px, width 1/16) and its W/cgmm/, shared
    by every test of the session that needs one.

    min_count=30 of 256 training images excludes the rarest attribute (Gray Hair), so the excluded
    paths have something to refuse.
    """
    from cgmm_test_utils import classifier_config, gen_config
    from jaxface.cgmm import fit
    from jaxface.train import trainer

    workdir = tmp_path_factory.mktemp("cgmm_shared_classifier")
    cfg = classifier_config()
    (workdir / "config.json").write_text(cfg.to_json())
    trainer.train(cfg, workdir)
    return workdir, fit.fit_cgmm_command(gen_config(), workdir)
