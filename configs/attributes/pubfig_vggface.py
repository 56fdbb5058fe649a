"""The seed report's fine-tuning: VGG-Face at 224 px, 73 PubFig attributes in 42 softmax heads.

Report settings (sections 3.2, 5.1, 6): learning rate 5e-6, 50 epochs, dropout after the fully connected
layers, and the two freezing settings of Table 1, selected by the config argument:

    jaxface convert-weights --format=vggface-mat vgg_face.mat weights/vggface
    jaxface train --config=configs/attributes/pubfig_vggface.py:fc6 --workdir=runs/pubfig_fc6 \
        --config.model.init_from=weights/vggface --config.data.root=PUBFIG_IMAGES \
        --config.data.attributes_file=pubfig_attributes.txt
    jaxface train --config=configs/attributes/pubfig_vggface.py:conv5_1 ...   # Table 1's conv-5 row
"""
import ml_collections
from ml_collections.config_dict import placeholder

FREEZE_SETTINGS = ("fc6", "conv5_1")
TRAIN_IMAGES = 20000  # the report's training set size; steps per epoch = TRAIN_IMAGES / batch_size


def get_config(freeze_below: str = "fc6"):
    if freeze_below not in FREEZE_SETTINGS:
        raise ValueError(f"config argument {freeze_below!r}: use one of {', '.join(FREEZE_SETTINGS)}")
    config = ml_collections.ConfigDict()
    config.task = "attributes"
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    config.data.source = "pubfig"
    config.data.schema = "pubfig73"
    config.data.image_size = 224
    config.data.seed = 0
    config.data.root = placeholder(str)  # image folder
    config.data.attributes_file = placeholder(str)  # person, imagenum, 73 scores
    config.data.bbox_file = placeholder(str)  # optional face boxes (dev_urls/eval_urls format)
    config.data.path_pattern = "{person_}/{person_}_{imagenum:04d}.jpg"
    config.data.split_fractions = (0.7, 0.0, 0.3)  # about 20k train / 8k test as in the report
    config.data.worker_count = 8
    config.data.strict = False

    config.model = ml_collections.ConfigDict()
    config.model.name = "vggface"
    config.model.width = 1.0
    config.model.input_size = 224
    config.model.dropout = 0.5
    config.model.preprocess = "vggface"  # what the converted VGG-Face weights expect
    # The published weights have no normalisation and read pool5 flattened; "batch" / "average" are for
    # training from scratch (configs/attributes/synthfaces_tiny.py), not for fine-tuning these weights.
    config.model.norm = "none"
    config.model.fc6_input = "flatten"
    config.model.init_from = placeholder(str)
    config.freeze_below = freeze_below

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 5e-6
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 5e-4
    config.optimizer.schedule = "constant"
    config.optimizer.warmup_steps = 0
    config.optimizer.grad_clip_norm = 0.0
    config.optimizer.lr_multipliers = ml_collections.ConfigDict({"heads": 10.0})

    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1
    config.mesh.model = 1
    config.mesh.num_devices = -1
    config.shard_large_params = False

    config.batch_size = 32
    config.eval_batch_size = 64
    epochs = 50
    config.num_train_steps = epochs * TRAIN_IMAGES // config.batch_size
    config.eval_every_steps = TRAIN_IMAGES // config.batch_size
    config.checkpoint_every_steps = 1000
    config.keep_checkpoints = 3
    config.log_every_steps = 100
    return config
