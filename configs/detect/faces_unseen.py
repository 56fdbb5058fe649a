r"""The unseen-generator protocol: the faces_wild recipe trained without one image of the generator it is
tested on.

    jaxface train    --config=configs/detect/faces_unseen.py --workdir=runs/faces_unseen \
                     --config.data.root=../shared/data/realfake
    jaxface evaluate --workdir=runs/faces_unseen   # the `fake` row: AUC on a generator never seen

Training and validation data are the real photographs of ROOT/real and their self-made fakes only:
`data.unseen_generators=("fake",)` keeps every image of ROOT/fake (the StyleGAN2 faces) out of both splits;
the test split keeps them, and the evaluation reports AUC per generator.
"""
import pathlib

from jaxface import config as config_lib


def get_config():
    config = config_lib.load_config(pathlib.Path(__file__).with_name("faces_wild.py"))
    config.data.unseen_generators = ("fake",)
    return config
