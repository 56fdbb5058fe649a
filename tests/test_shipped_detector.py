"""The detector shipped inside the package: small, intact, trained by today's faces_wild config, and (on
request, about 10 minutes) reproduced bit for bit by retraining it."""
import hashlib
import json
import os

import pytest

from jaxface import config as config_lib
from jaxface.evaluate import predict
from jaxface.train import trainer


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return list(value) if isinstance(value, (list, tuple)) else value


def test_the_shipped_detector_is_small_intact_and_trained_by_the_faces_wild_config():
    folder = predict.shipped_detector()
    weights = folder / trainer.EXPORTED_WEIGHTS
    assert weights.stat().st_size < 5 * 2**20
    meta = json.loads((folder / trainer.EXPORTED_META).read_text())
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == meta["sha256"]
    calibration = json.loads((folder / "calibration.json").read_text())
    assert calibration["step"] == meta["step"] and calibration["temperature"] > 0
    assert (folder / "MODEL_CARD.md").read_text().count("AUC") >= 2
    shipped = _plain(json.loads((folder / "config.json").read_text()))
    current = _plain(config_lib.load_config("configs/detect/faces_wild.py").to_dict())
    shipped["data"].pop("root"), current["data"].pop("root")
    assert shipped == current, "configs/detect/faces_wild.py changed: retrain and re-export the shipped detector"


@pytest.mark.skipif(os.environ.get("JAXFACE_REPRODUCE") != "1",
                    reason="retrains the shipped detector (about 10 minutes): JAXFACE_REPRODUCE=1 or "
                           "`make reproduce-detector`")
def test_retraining_from_the_config_reproduces_the_shipped_weights(shared_data, tmp_path):
    from jaxface.experiments import reproduce

    result = reproduce.reproduce(shared_data / "realfake", tmp_path / "run")
    assert result["logits"]["retrained"] == result["logits"]["shipped"]
    assert result["identical_weights"], result
