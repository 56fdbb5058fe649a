"""Every shipped config loads, and the report's settings are what the configs say."""
import pathlib

import pytest

from jaxface import config as config_lib
from jaxface.data import pipeline

CONFIGS = sorted(str(p.relative_to(config_lib.REPO_ROOT))
                 for p in (config_lib.REPO_ROOT / "configs").rglob("*.py"))


@pytest.mark.parametrize("path", CONFIGS)
def test_config_loads_with_required_fields(path):
    cfg = config_lib.load_config(path)
    if path.startswith("configs/generate/"):  # generation configs: a `generate` section, no trainer
        assert "generate" in cfg
        return
    for key in ("seed", "batch_size", "num_train_steps", "eval_every_steps", "checkpoint_every_steps",
                "model", "optimizer", "data"):
        assert key in cfg, (path, key)


def test_pubfig_config_is_the_reports_setting():
    fc6 = config_lib.load_config("configs/attributes/pubfig_vggface.py")
    assert fc6.freeze_below == "fc6" and fc6.optimizer.learning_rate == 5e-6
    assert fc6.model.input_size == 224 and pipeline.schema_for(fc6.data).num_heads == 42


def test_celeba_config_has_40_attributes():
    cfg = config_lib.load_config("configs/attributes/celeba_vggface.py")
    assert pipeline.schema_for(cfg.data).num_attributes == 40
