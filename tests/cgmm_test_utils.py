"""A tiny trained classifier with a fitted cGMM, built once per test session and shared by
test_fit_cgmm.py and test_generate.py (training and compiling dominate their run time)."""
from jaxface import config as config_lib
from jaxface.cgmm import fit
from jaxface.train import trainer
from trainer_utils import tiny_config

# Few SGD steps; one jitted step in a Python loop for the inversions (the quickest to compile). Every
# inversion pads its batch to the 8 simulated devices, so runs with equal settings share one program.
GEN_OVERRIDES = {
    "generate.batch_size": 32, "generate.sgd_steps": 50, "generate.sgd_batch_size": 64,
    "generate.min_count": 30, "generate.layer": "conv5_3",
    "invert.steps": 3, "invert.loop": "python", "invert.max_batch": 8, "invert.jitter": 1,
    "invert.blur_every": 2, "invert.blur_sigma": 0.5,
}
_SHARED: dict = {}


def classifier_config():
    return tiny_config(**{"num_train_steps": 3, "checkpoint_every_steps": 3, "log_every_steps": 3})


def gen_config(**overrides):
    return config_lib.load_config("configs/generate/synthfaces_tiny.py", {**GEN_OVERRIDES, **overrides})


def fitted_workdir(tmp_path_factory):
    """(workdir, fit result): a classifier trained 3 steps (32 px, width 1/16) and its W/cgmm/.

    min_count=30 of 256 training images excludes the rarest attribute (Gray Hair), so the excluded
    paths have something to refuse.
    """
    if "workdir" not in _SHARED:
        workdir = tmp_path_factory.getbasetemp() / "cgmm_shared_classifier"
        workdir.mkdir()
        cfg = classifier_config()
        (workdir / "config.json").write_text(cfg.to_json())
        trainer.train(cfg, workdir)
        _SHARED["result"] = fit.fit_cgmm_command(gen_config(), workdir)
        _SHARED["workdir"] = workdir
    return _SHARED["workdir"], _SHARED["result"]
