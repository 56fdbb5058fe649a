"""Small trained models and images shared by the serve tests (built once per test session)."""
import io
import pathlib

import numpy as np
from PIL import Image

from jaxface import config as config_lib

_SHARED: dict = {}
REPO = pathlib.Path(__file__).resolve().parents[1]


def detector_workdir(tmp_path_factory) -> pathlib.Path:
    """A closed-form spectrum detector (seconds to fit) on 32 px synthetic faces, as in test_predict."""
    if "detector" not in _SHARED:
        from jaxface.train import spectrum_fit

        workdir = tmp_path_factory.getbasetemp() / "serve_detector"
        workdir.mkdir()
        cfg = config_lib.load_config("configs/detect/synthfakes_mobilenet.py", {
            "model.name": "spectrum", "model.width": 1.0, "model.depth": 1.0, "model.input_size": 32,
            "model.dropout": 0.0, "data.image_size": 32, "data.num_train": 96, "batch_size": 16,
            "eval_batch_size": 16, "num_train_steps": 1, "data.augment.enabled": False,
        })
        spectrum_fit.fit_spectrum(cfg, workdir)
        _SHARED["detector"] = workdir
    return _SHARED["detector"]


def face_images(n: int = 4, resolution: int = 96) -> list[np.ndarray]:
    """Synthetic real and fake faces, uint8 (resolution, resolution, 3)."""
    from jaxface.data.synthfakes import SynthRealFake

    data = SynthRealFake(max(n, 2), resolution=resolution, seed=11)
    return [np.asarray(data[i]["image"], np.uint8) for i in range(n)]


def encode(image: np.ndarray, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()
