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


@pytest.mark.parametrize("path", ["configs/attributes/pubfig_vggface.py", "configs/attributes/celeba_vggface.py"])
def test_configs_for_published_weights_keep_the_published_architecture(path):
    # The converter's weights load only into VGG-Face without normalisation and with a flattened fc6 input.
    cfg = config_lib.load_config(path)
    assert cfg.model.preprocess == "vggface"
    assert cfg.model.get("norm", "none") == "none" and cfg.model.get("fc6_input", "flatten") == "flatten"


def test_celeba_config_has_40_attributes():
    cfg = config_lib.load_config("configs/attributes/celeba_vggface.py")
    assert pipeline.schema_for(cfg.data).num_attributes == 40


# Where a config's data lives in ../shared/data (configs that need files the user supplies).
SHARED_ROOTS = {"celeba": "celeba32", "realfake": "realfake"}


@pytest.mark.parametrize("path", [p for p in CONFIGS if not p.startswith("configs/generate/")])
def test_config_builds_its_task_model_and_data_source(path):
    """The task and the model (shapes only, nothing allocated) of every training config, and its data
    source: rendered ones always, folder ones from ../shared/data where it is present."""
    import jax
    from flax import nnx

    from conftest import SHARED_DATA
    from jaxface.train.tasks.base import get_task

    cfg = config_lib.load_config(path)
    source = cfg.data.source
    if source in SHARED_ROOTS and (SHARED_DATA / SHARED_ROOTS[source]).is_dir():
        with cfg.unlocked():
            cfg.data.root = str(SHARED_DATA / SHARED_ROOTS[source])
    readable = source in ("synthfaces", "synthfakes") or cfg.data.get("root") is not None
    if readable:
        train = pipeline.build_source(cfg.data, "train")
        assert len(train) > 0 and ("image" in train[0] or "path" in train[0])
    elif source in ("realfake", "celeba", "pubfig"):
        with pytest.raises(pipeline.DataConfigError, match="needs --config.data"):
            pipeline.build_source(cfg.data, "train")
    task = get_task(cfg)
    model = nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0)))
    size = int(cfg.model.get("input_size", cfg.data.image_size))
    out = nnx.eval_shape(lambda m, x: m(x, train=False), model,
                         jax.ShapeDtypeStruct((2, size, size, 3), jax.numpy.float32))
    if task.name == "deepfake":
        assert out.shape == (2, 1)
    else:
        assert [o.shape[-1] for o in out] == list(task.schema.head_sizes)
