"""Configs of the tiny classifier and cGMM fit that conftest's `cgmm_workdir` fixture builds once per
test session for test_fit_cgmm.py and test_generate.py (training and compiling dominate their run time)."""
from jaxface import config as config_lib
from trainer_utils import tiny_config

# Few SGD steps; one jitted step in a Python loop for the inversions (the quickest to compile). Every
# inversion pads its batch to the 8 simulated devices, so runs with equal settings share one program.
GEN_OVERRIDES = {
    "generate.batch_size": 32, "generate.sgd_steps": 50, "generate.sgd_batch_size": 64,
    "generate.min_count": 30, "generate.layer": "conv5_3",
    "invert.steps": 3, "invert.loop": "python", "invert.max_batch": 8, "invert.jitter": 1,
    "invert.blur_every": 2, "invert.blur_sigma": 0.5,
}


def classifier_config():
    return tiny_config(**{"num_train_steps": 3, "checkpoint_every_steps": 3, "log_every_steps": 3})


def gen_config(**overrides):
    return config_lib.load_config("configs/generate/synthfaces_tiny.py", {**GEN_OVERRIDES, **overrides})
