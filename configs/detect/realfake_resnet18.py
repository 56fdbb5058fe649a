r"""Deepfake detector on real photographs vs StyleGAN2 faces (a ROOT/real + ROOT/fake folder), from scratch.

    jaxface train    --config=configs/detect/realfake_resnet18.py --workdir=runs/realfake \
                     --config.data.root=../shared/data/realfake
    jaxface evaluate --workdir=runs/realfake      # metrics, robustness suite (JPEG, blur, scaling, ...)

ResNet-18 at a quarter width (16-32-64-128 channels) at 128 px: on XLA's CPU backend its dense
convolutions train about 6x faster per image than MobileNetV3-Small's depthwise ones (0.29 vs 1.8
CPU-seconds per batch of 32, measured), which is what fits a from-scratch run into 15 minutes.
Stratified 80/10/10 split, class-balancing loss weights, the report's augmentation list. The real photographs are framed tighter than the generated faces, so zoom and shift
keep the detector from keying on framing; blackout positions follow the FFHQ alignment of the fakes;
blur, down-scaling and JPEG re-compression prepare for the robustness suite.
"""
import ml_collections
from ml_collections.config_dict import placeholder


def get_config():
    config = ml_collections.ConfigDict()
    config.task = "deepfake"
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    config.data.source = "realfake"
    config.data.root = placeholder(str)  # --config.data.root=../shared/data/realfake
    config.data.image_size = 128
    config.data.seed = 0
    config.data.split_fractions = (0.8, 0.1, 0.1)
    config.data.worker_count = 0
    config.data.strict = False
    config.data.balance = "loss"
    config.data.augment = ml_collections.ConfigDict()
    config.data.augment.enabled = True
    config.data.augment.blackout = dict(prob=0.2, default_landmarks="ffhq")
    config.data.augment.hflip = dict(prob=0.5)
    config.data.augment.vflip = dict(prob=0.05)
    config.data.augment.rotation = dict(prob=0.3, max_degrees=10.0)
    config.data.augment.shear = dict(prob=0.1, max_degrees=5.0)
    config.data.augment.zoom = dict(prob=0.5, min=0.85, max=1.2)
    config.data.augment.shift = dict(prob=0.5, max_fraction=0.08)
    config.data.augment.brightness = dict(prob=0.3, max_delta=0.2)
    config.data.augment.contrast = dict(prob=0.3, max_delta=0.2)
    config.data.augment.saturation = dict(prob=0.3, max_delta=0.2)
    config.data.augment.hue = dict(prob=0.1, max_delta=0.03)
    config.data.augment.downscale = dict(prob=0.2, min_factor=0.5, max_factor=0.9)
    config.data.augment.gaussian_blur = dict(prob=0.2, min_sigma=0.2, max_sigma=1.2)
    config.data.augment.gaussian_noise = dict(prob=0.1, min_std=2.0, max_std=6.0)
    config.data.augment.jpeg = dict(prob=0.3, min_quality=50, max_quality=95)

    config.model = ml_collections.ConfigDict()
    config.model.name = "resnet18"
    config.model.width = 0.25
    config.model.depth = 1.0
    config.model.input_size = 128
    config.model.dropout = 0.1
    config.model.init_from = ""
    config.freeze_below = ""

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 2e-3
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 1e-4
    config.optimizer.schedule = "cosine"
    config.optimizer.warmup_steps = 100
    config.optimizer.grad_clip_norm = 1.0
    config.optimizer.lr_multipliers = ml_collections.ConfigDict()

    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1
    config.mesh.model = 1
    config.mesh.num_devices = -1
    config.shard_large_params = False

    config.evaluate = ml_collections.ConfigDict()
    config.evaluate.threshold_method = "balanced_accuracy"
    config.evaluate.robustness = True
    config.evaluate.robustness_max_examples = 500
    config.evaluate.robustness_max_side = 512

    config.batch_size = 32
    config.eval_batch_size = 64
    config.num_train_steps = 2500
    config.eval_every_steps = 500
    config.checkpoint_every_steps = 500
    config.keep_checkpoints = 2
    config.log_every_steps = 50
    return config
