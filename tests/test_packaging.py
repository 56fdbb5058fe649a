"""`pip install .` (not editable) gets a working jaxface: the wheel carries the configs, the web page, the
kernel source and the shipped detector, and the installed copy finds its configs from any folder."""
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

from jaxface import config as config_lib

pytestmark = pytest.mark.slow

REPO = config_lib.REPO_ROOT
SKIP = shutil.ignore_patterns(".git", ".venv", "runs", "build", "*.egg-info", "__pycache__", ".pytest_cache")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"  # a copy: building in the checkout would leave build/ and egg-info behind
    shutil.copytree(REPO, source, ignore=SKIP)
    # Offline: the test environment's own setuptools (dev extra) builds it, nothing is downloaded.
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           str(source), "-w", str(tmp / "dist")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (path,) = (tmp / "dist").glob("jaxface-*.whl")
    return path


def test_the_wheel_ships_configs_web_page_kernel_source_and_detector_but_no_tests(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*") if p.is_file()
               and "__pycache__" not in p.parts}
    assert configs and {"jaxface/" + c for c in configs} <= names
    static = {str(p.relative_to(REPO)) for p in (REPO / "jaxface/serve/static").iterdir()}
    assert static and static <= names
    assert "jaxface/kernels/onednn_conv.cc" in names
    assert "jaxface/report/templates/report.html.j2" in names  # the demo report renders from an installed wheel
    shipped = {str(p.relative_to(REPO)) for p in (REPO / "jaxface/assets/detectors/faces_wild").iterdir()}
    assert {"jaxface/assets/detectors/faces_wild/model.safetensors"} <= shipped <= names
    assert not [n for n in names if n.startswith(("tests/", "runs/", "launch/"))]
    assert any(n.endswith("entry_points.txt") for n in names)


def test_an_installed_copy_loads_its_configs_from_any_folder(wheel, tmp_path):
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                           str(wheel)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = (
        "import jaxface, pathlib, sys\n"
        "from jaxface import config\n"
        "assert pathlib.Path(jaxface.__file__).is_relative_to(sys.argv[1]), jaxface.__file__\n"
        "c = config.load_config('configs/detect/faces_wild.py')\n"  # loads its parent config by file name
        "print(c.model.name, c.data.crop, config.config_path('configs/generate/sweeps/readme_table.json').name)\n"
        "print(config.configs_folder().is_relative_to(sys.argv[1]))\n"
    )
    run = subprocess.run([sys.executable, "-c", script, str(site)], cwd=elsewhere, capture_output=True,
                         text=True, timeout=300, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["resnet18", "patches", "readme_table.json", "True"]
    with pytest.raises(FileNotFoundError, match="config file 'configs/nope.py' not found"):
        config_lib.config_path("configs/nope.py")
