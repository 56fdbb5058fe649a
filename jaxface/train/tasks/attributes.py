"""The attributes task: VGG-Face (or any backbone of the registry) with one softmax head per attribute group."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxface.data import pipeline
from jaxface.models import heads, registry, vggface
from jaxface.train.tasks.base import Task, TaskConfigError


class AttributesTask(Task):
    """VGG-Face with one softmax head per attribute group; masked grouped cross-entropy."""

    name = "attributes"
    headline_metric = "mean_accuracy"

    def __init__(self, config):
        self.config = config
        self.schema = pipeline.schema_for(config.data)
        self.model_name = str(config.model.get("name", "vggface"))
        if self.model_name != "vggface" and self.model_name not in registry.DETECTORS:
            raise TaskConfigError(
                f"the attributes task has no model {self.model_name!r}; valid: vggface (the network the "
                f"generator inverts) or a backbone (for a second, independent classifier: a judge): "
                f"{', '.join(registry.DETECTORS)}")

    def build_model(self, rngs):
        m = self.config.model
        if self.model_name != "vggface":  # a backbone with all heads' logits in one layer, then split
            backbone = registry.build_detector(
                self.model_name, input_size=int(m.input_size), num_outputs=sum(self.schema.head_sizes),
                width=float(m.get("width", 1.0)), depth=float(m.get("depth", 1.0)),
                dropout=float(m.get("dropout", 0.0)), rngs=rngs)
            return heads.GroupedLogits(backbone, self.schema.head_sizes)
        return vggface.VGGFace(
            head_sizes=self.schema.head_sizes, width=float(m.width), input_size=int(m.input_size),
            dropout=float(m.get("dropout", 0.5)), preprocess=m.get("preprocess", "vggface"),
            norm=m.get("norm", "none"), fc6_input=m.get("fc6_input", "flatten"), rngs=rngs,
        )

    def _targets(self, batch):
        targets = self.schema.head_targets(batch["attributes"], batch["attribute_mask"], xp=jnp)
        return jnp.where(batch["valid"][:, None], targets, -1)

    def loss(self, model, batch, train):
        logits = model(batch["image"], train=train)
        targets = self._targets(batch)
        loss, _ = heads.grouped_softmax_loss(logits, targets)
        correct, labelled = heads.head_correct(logits, targets)
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

    def layer_of(self, path):
        return vggface.param_layer_name(path)

    def layer_index(self, name):
        return vggface.layer_index(name)

    def init_skip_prefixes(self):
        return ("heads",)
