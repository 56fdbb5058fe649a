"""The frequency baseline (model.name='spectrum') fitted in closed form: the L2-regularised logistic
regression solved by Newton steps on the training split, saved as the trainer's ordinary checkpoint so
that `jaxface evaluate` and `jaxface predict` use it like any trained detector.

    python -m jaxface.train.spectrum_fit --config=configs/detect/realfake_spectrum.py --workdir=W
"""
from __future__ import annotations


import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from jaxface import files
from jaxface.config import option
from jaxface.data import pipeline
from jaxface.models import spectrum
from jaxface.train import checkpoint, optim, trainer
from jaxface.train.tasks.base import TaskConfigError

def fit_spectrum(config, workdir) -> dict:
    """Fits the 'spectrum' detector's logistic regression exactly on the training split (no
    augmentation) and saves it as the trainer's checkpoint at step config.num_train_steps."""
    workdir = files.as_path(workdir)
    if option(config.model, "name") != "spectrum":
        raise TaskConfigError(
            f"the closed-form fit is for model.name='spectrum', not {option(config.model, 'name')!r}")
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
            l2=float(option(config.model, "l2", 1e-2)), steps=int(option(config.model, "newton_steps", 25)))
        model.set_classifier(fit)

    # A checkpoint the trainer's format expects: model, optimiser (fresh) and data position.
    step = int(config.num_train_steps)
    tx = optim.build_optimizer(config.optimizer, step)
    trainable = optim.trainable_filter(config.get("freeze_below", ""), setup.task.layer_of,
                                       setup.task.layer_index)
    _, model_state = nnx.split(model)
    _, opt_state = trainer.create_optimizer(setup.model_def, model_state, tx, trainable, setup.mesh, config)
    mngr = checkpoint.manager(workdir, keep=int(config.get("keep_checkpoints", 3)))
    checkpoint.save(mngr, step, model_state=model_state.to_pure_dict(), opt_state=opt_state.to_pure_dict(),
                    meta={"step": step, "task": "deepfake", "seed": int(config.seed), "fit": "closed_form",
                          "data_batches": 0}, force=True)
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
