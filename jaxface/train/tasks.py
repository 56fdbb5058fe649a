"""Tasks plug into the one trainer: a task supplies the model, the loss, per-example predictions and the
evaluation report. The loop, sharding, checkpointing, logging and resumption live in trainer.py.
"""
from __future__ import annotations

import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxface import files
from jaxface.data import pipeline


class TaskConfigError(ValueError):
    """A config whose task or model cannot be built."""


class Task:
    """Interface. `loss` and `predict` are traced inside jax.jit; everything else runs on the host."""

    name = "task"

    def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
        raise NotImplementedError

    def loss(self, model, batch: dict, train: bool):
        """-> (scalar loss, dict of scalar metrics)."""
        raise NotImplementedError

    def predict(self, model, batch: dict) -> dict:
        """Per-example outputs (leading batch axis) for evaluation."""
        raise NotImplementedError

    def summarize(self, outputs: dict) -> dict:
        """Host-side metrics over a whole split (outputs hold only valid examples)."""
        raise NotImplementedError

    def report(self, outputs: dict, metrics: dict, out_dir: pathlib.Path) -> tuple[str, list]:
        """Writes the evaluation files; -> (printable table, written paths)."""
        raise NotImplementedError

    def layer_of(self, path) -> str:
        raise NotImplementedError

    def layer_index(self, name: str) -> int:
        raise NotImplementedError

    def init_skip_prefixes(self) -> tuple[str, ...]:
        """Parameters that `init_from` leaves freshly initialised (the task's own heads)."""
        return ()

    def augment(self, config):
        """A grain transform applied to training records, or None."""
        return None

    headline_metric = "loss"


class AttributesTask(Task):
    """VGG-Face with one softmax head per attribute group; masked grouped cross-entropy."""

    name = "attributes"
    headline_metric = "mean_accuracy"

    def __init__(self, config):
        self.config = config
        self.schema = pipeline.schema_for(config.data)
        if config.model.get("name", "vggface") != "vggface":
            raise TaskConfigError(
                f"the attributes task uses model.name='vggface', not {config.model.name!r}"
            )

    def build_model(self, rngs):
        from jaxface.models.vggface import VGGFace

        m = self.config.model
        return VGGFace(
            head_sizes=self.schema.head_sizes, width=float(m.width), input_size=int(m.input_size),
            dropout=float(m.get("dropout", 0.5)), preprocess=m.get("preprocess", "vggface"), rngs=rngs,
        )

    def _targets(self, batch):
        targets = self.schema.head_targets(batch["attributes"], batch["attribute_mask"], xp=jnp)
        return jnp.where(batch["valid"][:, None], targets, -1)

    def loss(self, model, batch, train):
        from jaxface.models.heads import grouped_softmax_loss, head_correct

        logits = model(batch["image"], train=train)
        targets = self._targets(batch)
        loss, _ = grouped_softmax_loss(logits, targets)
        correct, labelled = head_correct(logits, targets)
        acc = jnp.sum(correct) / jnp.maximum(jnp.sum(labelled), 1)
        return loss, {"loss": loss, "head_accuracy": acc}

    def predict(self, model, batch):
        logits = model(batch["image"], train=False)
        probs = self.schema.attribute_probabilities(logits, xp=jnp)
        preds = jnp.stack([jnp.argmax(l, axis=-1) for l in logits], axis=-1).astype(jnp.int32)
        return {"attribute_probs": probs, "head_pred": preds, "head_target": self._targets(batch),
                "attributes": batch["attributes"], "attribute_mask": batch["attribute_mask"]}

    def _predicted_attributes(self, head_pred: np.ndarray) -> np.ndarray:
        """Head class predictions -> (N, K) 0/1 attribute predictions."""
        cols = []
        for h, (g, idx) in enumerate(zip(self.schema.groups, self.schema.head_attribute_indices)):
            if g.is_binary:
                cols.append((head_pred[:, h] == 1)[:, None])
            else:
                cols.append(head_pred[:, h : h + 1] == np.arange(len(idx))[None, :])
        return np.concatenate(cols, axis=1).astype(np.float32)

    def summarize(self, outputs):
        s = self.schema
        pred = self._predicted_attributes(outputs["head_pred"])
        truth = outputs["attributes"] > 0.5
        mask = s.attribute_mask_for_evaluation(outputs["attribute_mask"], outputs["head_target"])
        correct = (pred > 0.5) == truth
        counts = mask.sum(0)
        per_attr = np.where(counts > 0, (correct & mask).sum(0) / np.maximum(counts, 1), np.nan)
        head_ok = outputs["head_target"] >= 0
        head_hits = (outputs["head_pred"] == outputs["head_target"]) & head_ok
        per_head = np.where(head_ok.sum(0) > 0, head_hits.sum(0) / np.maximum(head_ok.sum(0), 1), np.nan)
        return {
            "mean_accuracy": float(np.nanmean(per_attr)),
            "per_attribute": {n: float(per_attr[k]) for k, n in enumerate(s.attribute_names)},
            "per_head": {g.name: float(per_head[h]) for h, g in enumerate(s.groups)},
            "num_examples": int(len(outputs["head_pred"])),
            "labelled_per_attribute": {n: int(counts[k]) for k, n in enumerate(s.attribute_names)},
        }

    def report(self, outputs, metrics, out_dir):
        from jaxface.evaluate import plots

        s = self.schema
        out_dir = pathlib.Path(out_dir)
        written = [files.write_json(out_dir / "metrics.json", metrics)]
        pos_rate = (outputs["attributes"] * outputs["attribute_mask"]).sum(0) / np.maximum(
            outputs["attribute_mask"].sum(0), 1)
        rows = ["attribute,accuracy,num_labelled,positive_rate"]
        for k, n in enumerate(s.attribute_names):
            rows.append(f"\"{n}\",{metrics['per_attribute'][n]:.6f},"
                        f"{metrics['labelled_per_attribute'][n]},{pos_rate[k]:.6f}")
        written.append(files.write_text(out_dir / "per_attribute.csv", "\n".join(rows) + "\n"))
        written.append(plots.bar_chart(
            out_dir / "accuracy.png", list(s.attribute_names),
            [metrics["per_attribute"][n] for n in s.attribute_names],
            title=f"Test accuracy per attribute (mean {metrics['mean_accuracy']:.3f}, "
                  f"n={metrics['num_examples']})", xlabel="accuracy"))
        for h, g in enumerate(s.groups):
            if g.is_binary:
                continue
            t, p = outputs["head_target"][:, h], outputs["head_pred"][:, h]
            ok = t >= 0
            cm = np.zeros((g.num_classes, g.num_classes), np.int64)
            np.add.at(cm, (t[ok], p[ok]), 1)
            written.append(plots.confusion_matrix(
                out_dir / f"confusion_{g.name.replace(' ', '_')}.png", cm, list(g.class_names),
                title=f"{g.name}: accuracy {metrics['per_head'][g.name]:.3f}"))
        lines = [f"{'attribute':28s} {'accuracy':>8s} {'labelled':>8s}"]
        for n in sorted(s.attribute_names, key=lambda n: -np.nan_to_num(metrics["per_attribute"][n])):
            lines.append(f"{n:28s} {metrics['per_attribute'][n]:8.3f} {metrics['labelled_per_attribute'][n]:8d}")
        lines.append(f"{'mean per-attribute accuracy':28s} {metrics['mean_accuracy']:8.3f} "
                     f"(n={metrics['num_examples']})")
        return "\n".join(lines), written

    def layer_of(self, path):
        from jaxface.models.vggface import param_layer_name

        return param_layer_name(path)

    def layer_index(self, name):
        from jaxface.models.vggface import layer_index

        return layer_index(name)

    def init_skip_prefixes(self):
        return ("heads",)


TASKS = {"attributes": AttributesTask}


def register(name: str, cls) -> None:
    TASKS[name] = cls


def get_task(config) -> Task:
    name = config.get("task", "attributes")
    if name not in TASKS:
        try:  # the detection task registers itself on import
            import jaxface.train.detection  # noqa: F401
        except ImportError:
            pass
    if name not in TASKS:
        raise TaskConfigError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name](config)
