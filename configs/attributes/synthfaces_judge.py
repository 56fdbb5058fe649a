r"""The judge: a second attribute classifier on the embedded synthetic faces, of another architecture
(ResNet-18 at width 1/4) and another seed than the VGG-Face the generator inverts. It is never used in any
generation objective, so its reading of a generated face is evidence the optimised-against classifier
cannot give (`jaxface generate --judge_workdir=W`; `make demo` trains one).

    jaxface train --config=configs/attributes/synthfaces_judge.py --workdir=runs/judge
"""
import pathlib

from jaxface import config as config_lib


def get_config():
    config = config_lib.load_config(pathlib.Path(__file__).with_name("synthfaces_tiny.py"))
    config.seed = 1
    config.model.name = "resnet18"
    config.model.width = 0.25
    config.model.depth = 1.0
    config.model.dropout = 0.0
    for vgg_only in ("preprocess", "norm", "fc6_input", "init_from"):
        del config.model[vgg_only]
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 2e-3
    config.optimizer.weight_decay = 1e-4
    # 3,000 steps (8 min on 2 cores): test accuracy 0.964, Smiling 0.888. At 600 steps (0.904, Smiling
    # 0.61) it read the requested attributes in only 0.70 of real faces, too weak to judge by. `make demo`
    # trains it 500 steps to fit its time budget.
    config.num_train_steps = 3000
    config.eval_every_steps = 0
    config.checkpoint_every_steps = 1000
    return config
