"""Tiny attribute-training configs shared by the trainer tests."""
from jaxface import config as config_lib


def tiny_config(**overrides):
    base = {
        "model.width": 0.0625, "model.input_size": 32, "model.dropout": 0.0,
        "data.image_size": 32, "data.num_train": 256, "data.num_val": 32, "data.num_test": 64,
        "batch_size": 16, "eval_batch_size": 32, "num_train_steps": 4, "eval_every_steps": 0,
        "checkpoint_every_steps": 2, "log_every_steps": 2, "optimizer.warmup_steps": 0,
        # The trainer's mechanics on the published network (quicker to compile). The config's batch-norm
        # default runs in the CLI tests and in the tests parametrised over model.norm.
        "model.norm": "none",
    }
    base.update(overrides)
    return config_lib.load_config("configs/attributes/synthfaces_tiny.py", base)
