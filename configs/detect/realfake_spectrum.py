r"""The frequency baseline on real photographs vs StyleGAN2 faces: radial log-power spectrum + logistic
regression (Durall et al. 2020), fitted in closed form. The bar every CNN must beat on real data.

    python -m jaxface.train.spectrum_fit --config=configs/detect/realfake_spectrum.py --workdir=runs/spectrum \
        --config.data.root=../shared/data/realfake          # closed-form fit (seconds)
    jaxface evaluate --workdir=runs/spectrum
or by gradient steps through the shared trainer: jaxface train --config=configs/detect/realfake_spectrum.py ...

The profile is taken at 256 px (the folder's images are 300 px), where the generator's spectral
traces are still present; a 128 px resize would low-pass most of them away.
"""
import ml_collections
from ml_collections.config_dict import placeholder


def get_config():
    config = ml_collections.ConfigDict()
    config.task = "deepfake"
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    config.data.source = "realfake"
    config.data.root = placeholder(str)
    config.data.image_size = 256
    config.data.seed = 0
    config.data.split_fractions = (0.8, 0.1, 0.1)
    config.data.worker_count = 0
    config.data.strict = False
    config.data.balance = "loss"
    config.data.augment = ml_collections.ConfigDict()
    config.data.augment.enabled = False  # the closed-form fit sees the images as they are

    config.model = ml_collections.ConfigDict()
    config.model.name = "spectrum"
    config.model.input_size = 256
    config.model.dropout = 0.0
    config.model.options = ml_collections.ConfigDict()
    config.model.options.n_bins = 64
    config.model.l2 = 1e-2  # closed-form fit: L2 penalty of the logistic regression
    config.model.newton_steps = 25
    config.model.init_from = ""
    config.freeze_below = ""

    config.optimizer = ml_collections.ConfigDict()  # used when trained through `jaxface train`
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-2
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 0.0
    config.optimizer.schedule = "cosine"
    config.optimizer.warmup_steps = 0
    config.optimizer.grad_clip_norm = 0.0
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
    config.num_train_steps = 300
    config.eval_every_steps = 100
    config.checkpoint_every_steps = 300
    config.keep_checkpoints = 1
    config.log_every_steps = 50
    return config
