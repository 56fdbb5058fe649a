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
`fit_spectrum(config, workdir)` / `python -m jaxface.train.detection --config=... --workdir=W` solves the
L2-regularised logistic regression by Newton steps and writes an ordinary checkpoint, so `jaxface
evaluate` and `jaxface predict` use it like any trained detector.
"""
from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxface.data import pipeline
from jaxface.train import tasks

BALANCE_MODES = ("loss", "none")


def _opt(section, key, default=None):
    if section is None:
        return default
    value = section.get(key, default)
    return default if value is None else value


def augment_settings(config) -> dict | None:
    """config.data.augment without its `enabled` switch (what `augment.Augmenter` accepts), or None
    when augmentation is off."""
    aug = _opt(config.data, "augment")
    if aug is None:
        return None
    settings = aug.to_dict() if hasattr(aug, "to_dict") else dict(aug)
    enabled = settings.pop("enabled", True)
    return settings if enabled else None


class DeepfakeTask(tasks.Task):
    """Real/fake classification with any backbone of models.registry."""

    name = "deepfake"
    headline_metric = "auc"

    def __init__(self, config):
        from jaxface.models import registry

        self.config = config
        m = config.model
        self.model_name = _opt(m, "name", "mobilenetv3_small")
        if self.model_name not in registry.DETECTORS:
            raise tasks.TaskConfigError(
                f"model.name={self.model_name!r} is not a detector; valid detectors: "
                f"{', '.join(registry.detector_names())}")
        self.input_size = int(_opt(m, "input_size", config.data.image_size))
        if int(config.data.image_size) != self.input_size:
            raise tasks.TaskConfigError(
                f"data.image_size={config.data.image_size} differs from model.input_size={self.input_size}; "
                "the pipeline resizes images to data.image_size, so set both to the same size")
        options = _opt(m, "options", {})
        self.model_options = options.to_dict() if hasattr(options, "to_dict") else dict(options)
        self.balance = _opt(config.data, "balance", "loss")
        if self.balance not in BALANCE_MODES:
            raise tasks.TaskConfigError(
                f"data.balance={self.balance!r}; valid: {', '.join(BALANCE_MODES)}")
        self._class_weights = None
        self._generator_names = None

    # ---------------------------------------------------------------------------------- model
    def _model_kwargs(self) -> dict:
        m = self.config.model
        return dict(input_size=self.input_size, width=float(_opt(m, "width", 1.0)),
                    depth=float(_opt(m, "depth", 1.0)), dropout=float(_opt(m, "dropout", 0.2)),
                    **self.model_options)

    def build_model(self, rngs):
        from jaxface.models import registry

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
                from jaxface.data import sources

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
        calibrated on the validation split."""
        from jaxface.evaluate import detection

        metrics = detection.detection_metrics(outputs["label"], outputs["logit"], 0.0,
                                              outputs["generator_id"], self.generator_names)
        metrics["threshold_method"] = "fixed"
        return metrics

    def report(self, outputs, metrics, out_dir):
        from jaxface.evaluate import detection

        return detection.task_report(self, outputs, metrics, out_dir)

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
            raise tasks.TaskConfigError(
                f"unknown layer {name!r} for {self.model_name}; valid layers are: {', '.join(order)}")
        return order.index(name)

    def init_skip_prefixes(self):
        return ("head",)  # the fresh real/fake layer; ImageNet checkpoints hold a 1000-class one

    def augment(self, config):
        settings = augment_settings(config)
        if settings is None:
            return None
        from jaxface.data import augment as augment_lib

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


tasks.register("deepfake", DeepfakeTask)


# ------------------------------------------------------------------------ closed-form spectrum fit
def fit_spectrum(config, workdir) -> dict:
    """Fits the 'spectrum' detector's logistic regression exactly on the training split (no
    augmentation) and saves it as the trainer's checkpoint at step config.num_train_steps."""
    from jax.experimental import multihost_utils

    from jaxface import files
    from jaxface.models import spectrum
    from jaxface.train import checkpoint, optim, trainer

    workdir = pathlib.Path(workdir)
    if _opt(config.model, "name") != "spectrum":
        raise tasks.TaskConfigError(
            f"the closed-form fit is for model.name='spectrum', not {_opt(config.model, 'name')!r}")
    setup = trainer.build(config)
    model = setup.model
    profile = jax.jit(model.profile)
    feats, labels = [], []
    with jax.set_mesh(setup.mesh):
        for batch in pipeline.batches(config, "train", setup.mesh, training=False):
            host = multihost_utils.process_allgather(
                {"f": profile(batch["image"]), "y": batch["label"], "v": batch["valid"]}, tiled=True)
            valid = np.asarray(host["v"], bool)
            feats.append(np.asarray(host["f"])[valid])
            labels.append(np.asarray(host["y"])[valid])
        fit = spectrum.fit_spectrum_classifier(
            np.concatenate(feats), np.concatenate(labels),
            l2=float(_opt(config.model, "l2", 1e-2)), steps=int(_opt(config.model, "newton_steps", 25)))
        model.set_classifier(fit)

    # A checkpoint the trainer's format expects: model, optimiser (fresh) and data-iterator state.
    step = int(config.num_train_steps)
    tx = optim.build_optimizer(config.optimizer, step)
    trainable = optim.trainable_filter(config.get("freeze_below", ""), setup.task.layer_of,
                                       setup.task.layer_index)
    _, model_state = nnx.split(model)
    _, opt_state = trainer.create_optimizer(setup.model_def, model_state, tx, trainable, setup.mesh, config)
    train_batches = pipeline.batches(config, "train", setup.mesh, augment=setup.task.augment(config))
    mngr = checkpoint.manager(workdir, keep=int(config.get("keep_checkpoints", 3)))
    checkpoint.save(mngr, step, model_state=model_state.to_pure_dict(), opt_state=opt_state.to_pure_dict(),
                    meta={"step": step, "task": "deepfake", "seed": int(config.seed), "fit": "closed_form"},
                    data_iterator=train_batches._iter, force=True)
    mngr.wait_until_finished()
    record = {"step": step, "split": "train", "loss": float(fit.loss), "grad_norm": float(fit.gradient_norm),
              "fit": "closed_form", "num_examples": int(sum(len(l) for l in labels))}
    files.append_jsonl(workdir / "metrics.jsonl", record)
    files.write_text(workdir / "config.json", config.to_json_best_effort(indent=2))
    return {"step": step, "loss": float(fit.loss), "gradient_norm": float(fit.gradient_norm),
            "num_examples": record["num_examples"], "outputs": [workdir / "metrics.jsonl", mngr.directory]}


def main(argv):  # pragma: no cover - thin command wrapper, exercised through fit_spectrum in tests
    from absl import flags, logging

    del argv
    logging.set_verbosity(logging.WARNING)
    result = fit_spectrum(flags.FLAGS.config, flags.FLAGS.workdir)
    print(f"closed-form spectrum fit on {result['num_examples']} training images: log-loss "
          f"{result['loss']:.4f}, max |gradient| {result['gradient_norm']:.2e}")
    for p in result["outputs"]:
        print(f"wrote {p}")


if __name__ == "__main__":  # pragma: no cover
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "A detection config with model.name='spectrum'.")
    flags.DEFINE_string("workdir", None, "Directory for the checkpoint.", required=True)
    app.run(main)
