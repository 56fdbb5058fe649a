"""VGG-Face on CelebA's 40 attributes (hair colour as one head with a "none" class), 224 px.

From the folder release (data.source='celeba', data.root holds list_attr_celeba.txt and
img_align_celeba/) or from TFDS prepared by you (data.source='celeba_tfds', data.tfds_data_dir):

    jaxface train --config=configs/attributes/celeba_vggface.py --workdir=runs/celeba \
        --config.data.root=/data/celeba --config.model.init_from=weights/vggface
"""
import ml_collections
from ml_collections.config_dict import placeholder


def get_config():
    config = ml_collections.ConfigDict()
    config.task = "attributes"
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    config.data.source = "celeba"  # or "celeba_tfds"
    config.data.schema = "celeba40"
    config.data.image_size = 224
    config.data.seed = 0
    config.data.root = placeholder(str)
    config.data.tfds_data_dir = placeholder(str)
    config.data.worker_count = 8
    config.data.strict = False

    config.model = ml_collections.ConfigDict()
    config.model.name = "vggface"
    config.model.width = 1.0
    config.model.input_size = 224
    config.model.dropout = 0.5
    config.model.preprocess = "vggface"
    # The published weights have no normalisation and read pool5 flattened; "batch" / "average" are for
    # training from scratch (configs/attributes/synthfaces_tiny.py), not for fine-tuning these weights.
    config.model.norm = "none"
    config.model.fc6_input = "flatten"
    config.model.init_from = ""
    config.freeze_below = "conv5_1"

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 1e-4
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 5e-4
    config.optimizer.schedule = "cosine"
    config.optimizer.warmup_steps = 500
    config.optimizer.grad_clip_norm = 0.0
    config.optimizer.lr_multipliers = ml_collections.ConfigDict({"heads": 10.0})

    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1
    config.mesh.model = 1
    config.mesh.num_devices = -1
    config.shard_large_params = False

    config.batch_size = 64
    config.eval_batch_size = 128
    config.num_train_steps = 30000
    config.eval_every_steps = 2500
    config.checkpoint_every_steps = 1000
    config.keep_checkpoints = 3
    config.log_every_steps = 100
    return config
