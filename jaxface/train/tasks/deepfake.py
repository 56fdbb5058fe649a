"""The deepfake-detection task for the one trainer: a registry backbone with one real/fake logit.

    jaxface train    --config=configs/detect/synthfakes_mobilenet.py --workdir=W
    jaxface evaluate --workdir=W          # W/eval/metrics.json, confusion/ROC/robustness plots

Loss: sigmoid binary cross-entropy on the logit (label 1 = fake), padding rows masked out through
batch['valid']. Class balance (config.data.balance):
  'loss' (default)  every example is weighted by N / (2 * N_class) of the training split (the
                    `sources.class_balance_weights` sampling weights, rescaled to mean 1). In expectation
                    this is the gradient of balanced sampling, needs no second data path through the
                    trainer, keeps the trainer's exact-resume data order, and never repeats files.
  'none'            plain mean.
Augmentation: `augment(config)` returns `augment.AugmentTransform` of config.data.augment (minus its
`enabled` switch) when config.data.augment.enabled is true; it runs on the host in the grain pipeline
after the resize to data.image_size.

The frequency baseline (model.name='spectrum') trains through the same trainer (its standardisation
follows the data in train mode, the linear layer is fitted by gradient steps), or in closed form:
`train.spectrum_fit.fit_spectrum(config, workdir)` / `python -m jaxface.train.spectrum_fit --config=...
--workdir=W` solves the
L2-regularised logistic regression by Newton steps and writes an ordinary checkpoint, so `jaxface
evaluate` and `jaxface predict` use it like any trained detector.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxface.config import option
from jaxface.data import augment as augment_lib
from jaxface.data import pipeline, sources
from jaxface.evaluate import metrics as metrics_lib
from jaxface.models import registry
from jaxface.train.tasks.base import Task, TaskConfigError

BALANCE_MODES = ("loss", "none")



def augment_settings(config) -> dict | None:
    """config.data.augment without its `enabled` switch (what `augment.Augmenter` accepts), or None
    when augmentation is off."""
    aug = option(config.data, "augment")
    if aug is None:
        return None
    settings = aug.to_dict() if hasattr(aug, "to_dict") else dict(aug)
    enabled = settings.pop("enabled", True)
    return settings if enabled else None


class DeepfakeTask(Task):
    """Real/fake classification with any backbone of models.registry."""

    name = "deepfake"
    headline_metric = "auc"

    def __init__(self, config):
        self.config = config
        m = config.model
        self.model_name = option(m, "name", "mobilenetv3_small")
        if self.model_name not in registry.DETECTORS:
            raise TaskConfigError(
                f"model.name={self.model_name!r} is not a detector; valid detectors: "
                f"{', '.join(registry.detector_names())}")
        self.input_size = int(option(m, "input_size", config.data.image_size))
        if int(config.data.image_size) != self.input_size:
            raise TaskConfigError(
                f"data.image_size={config.data.image_size} differs from model.input_size={self.input_size}; "
                "the pipeline resizes images to data.image_size, so set both to the same size")
        options = option(m, "options", {})
        self.model_options = options.to_dict() if hasattr(options, "to_dict") else dict(options)
        self.balance = option(config.data, "balance", "loss")
        if self.balance not in BALANCE_MODES:
            raise TaskConfigError(
                f"data.balance={self.balance!r}; valid: {', '.join(BALANCE_MODES)}")
        self._class_weights = None
        self._generator_names = None

    # ---------------------------------------------------------------------------------- model
    def _model_kwargs(self) -> dict:
        m = self.config.model
        return dict(input_size=self.input_size, width=float(option(m, "width", 1.0)),
                    input_transform=str(option(m, "input_transform", "none")),
                    depth=float(option(m, "depth", 1.0)), dropout=float(option(m, "dropout", 0.2)),
                    **self.model_options)

    def build_model(self, rngs):
        model = registry.build_detector(self.model_name, num_outputs=1, rngs=rngs, **self._model_kwargs())
        # Layer order for freeze_below, read while the attributes are still in construction (= forward)
        # order; a module that went through split/merge lists them sorted.
        self._layers = _top_level_layers(model)
        return model

    # ---------------------------------------------------------------------------- data facts
    @property
    def generator_names(self) -> tuple[str, ...]:
        """'real' then the generators of the configured dataset (ids index into it)."""
        if self._generator_names is None:
            try:
                source = pipeline.build_source(self.config.data, "test")
                self._generator_names = tuple(source.generator_names)
            except ValueError:  # data not readable here: generic names
                self._generator_names = ("real",)
        return self._generator_names

    def class_weights(self) -> np.ndarray:
        """(2,) loss weights of real and fake; mean weight 1 over the training split."""
        if self._class_weights is None:
            weights = np.ones(2, np.float32)
            if self.balance == "loss":
                source = pipeline.build_source(self.config.data, "train")
                labels = getattr(source, "labels", None)
                if labels is None or len(labels) != len(source):
                    labels = [int(source[i]["label"]) for i in range(len(source))]
                labels = np.asarray(labels, np.int64)
                per_example = sources.class_balance_weights(labels) * len(labels)
                for k in (0, 1):
                    if (labels == k).any():
                        weights[k] = per_example[labels == k][0]
            self._class_weights = weights
        return self._class_weights

    # ------------------------------------------------------------------------------ training
    def loss(self, model, batch, train):
        logits = model(batch["image"], train=train)[:, 0].astype(jnp.float32)
        labels = batch["label"].astype(jnp.int32)
        valid = batch["valid"].astype(jnp.float32)
        real_weight, fake_weight = (float(w) for w in self.class_weights())
        weights = valid * jnp.where(labels == 1, fake_weight, real_weight)  # a select, not a gather:
        # gathers from an unsharded table trip sharding-in-types under jax.set_mesh
        per_example = optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32))
        loss = jnp.sum(weights * per_example) / jnp.maximum(jnp.sum(weights), 1e-6)
        correct = ((logits >= 0).astype(jnp.int32) == labels).astype(jnp.float32)
        accuracy = jnp.sum(valid * correct) / jnp.maximum(jnp.sum(valid), 1.0)
        return loss, {"loss": loss, "accuracy": accuracy}

    def predict(self, model, batch):
        logits = model(batch["image"], train=False)[:, 0].astype(jnp.float32)
        return {"logit": logits, "label": batch["label"], "generator_id": batch["generator_id"],
                "index": batch["index"]}

    # ---------------------------------------------------------------------------- evaluation
    def summarize(self, outputs):
        """Metrics at p = 0.5 (training-time validation); `report` recomputes them at the threshold
        calibrated on the validation split (jaxface.evaluate.detection)."""
        metrics = metrics_lib.detection_metrics(outputs["label"], outputs["logit"], 0.0,
                                              outputs["generator_id"], self.generator_names)
        metrics["threshold_method"] = "fixed"
        return metrics

    # ----------------------------------------------------------------------- freezing, init_from
    def _layer_order(self) -> list[str]:
        if getattr(self, "_layers", None) is None:
            nnx.eval_shape(lambda: self.build_model(nnx.Rngs(0)))
        return self._layers

    def layer_of(self, path) -> str:
        keys = [getattr(p, "key", getattr(p, "name", getattr(p, "idx", p))) for p in path]
        if len(keys) > 1 and (isinstance(keys[1], int) or str(keys[1]).isdigit()):
            return f"{keys[0]}/{int(keys[1])}"
        return str(keys[0])

    def layer_index(self, name: str) -> int:
        order = self._layer_order()
        if name not in order:
            raise TaskConfigError(
                f"unknown layer {name!r} for {self.model_name}; valid layers are: {', '.join(order)}")
        return order.index(name)

    def init_skip_prefixes(self):
        return ("head",)  # the fresh real/fake layer; ImageNet checkpoints hold a 1000-class one

    def augment(self, config):
        settings = augment_settings(config)
        if settings is None:
            return None
        return augment_lib.AugmentTransform(settings)


def _top_level_layers(model) -> list[str]:
    """Child modules in attribute order; list children as NAME/INDEX."""
    names = []
    for attr, value in vars(model).items():
        if attr.startswith("_"):
            continue
        if isinstance(value, nnx.List):
            names += [f"{attr}/{i}" for i in range(len(value))]
        elif isinstance(value, (nnx.Module, nnx.Variable)):
            names.append(attr)
    return names



