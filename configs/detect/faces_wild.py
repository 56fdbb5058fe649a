r"""A trace detector for face photos (experimental): generator traces, not framing.

    jaxface train    --config=configs/detect/faces_wild.py --workdir=runs/faces_wild \
                     --config.data.root=../shared/data/realfake
    jaxface evaluate --workdir=runs/faces_wild     # per-generator AUC, robustness suite, calibration

Recipe: NPR residuals (each pixel minus the top-left pixel of its 2x2 block, Tan et al. 2024) into a
quarter-width ResNet-18 trained from scratch on native-resolution 96 px patches at even offsets (no
resizing, which would smear upsampling traces); an image is scored as the mean logit of a 3x3 grid of
patches, so how a face is framed carries no label. Training data: ROOT/real and ROOT/fake plus, made from
each real photo, one self-made fake per kind (`jaxface.data.selfmade`: halved and brought back by nearest,
bilinear and a fixed transposed-convolution upsampling). Augmentation keeps the 2x2 pixel grid intact:
flips and lossless quarter turns; JPEG is available but off (see the README's detector table).
`configs/detect/faces_unseen.py` is the same recipe without one StyleGAN2 image (the unseen-generator test).

Measured on ../shared/data/realfake (README, "Detecting deepfakes in face photos"): test AUC 0.913, with
StyleGAN2 against real photos at only 0.692 (realfake_resnet18.py reaches 0.997 there, largely from
framing); robust to quarter turns (0.921), not to blur, downscaling or the suite's crop (which resamples).
"""
import pathlib

import ml_collections

from jaxface import config as config_lib


def get_config():
    # The realfake ResNet-18 recipe (optimizer, mesh, schedule, evaluation) with traces instead of framing.
    config = config_lib.load_config(pathlib.Path(__file__).with_name("realfake_resnet18.py"))
    config.data.image_size = 96  # the patch side
    config.data.crop = "patches"
    config.data.patch_grid = 3
    config.data.self_made = ("reup_nearest", "reup_bilinear", "reup_tconv")
    config.data.unseen_generators = ()
    config.data.augment = ml_collections.ConfigDict()
    config.data.augment.enabled = True
    config.data.augment.hflip = dict(prob=0.5)
    config.data.augment.rot90 = dict(prob=0.5)
    config.data.augment.jpeg = dict(prob=0.0, min_quality=70, max_quality=95)

    config.model.input_transform = "npr"
    config.model.input_size = 96

    config.evaluate.robustness_max_examples = 300
    config.eval_batch_size = 32
    config.num_train_steps = 1500
    return config
