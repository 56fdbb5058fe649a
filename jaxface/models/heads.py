"""Grouped softmax heads (the report's fc8 layers) and their masked loss.

One `nnx.Linear` per head reads the shared feature vector (fc7). Every head is a softmax: an exclusive
attribute group has one class per attribute (plus "none" where the schema allows it) and a singleton
attribute is a two-class head (absent, present), see `jaxface.data.schema`.

Targets travel as int32 (B, H) with -1 where an example has no label for that head
(`Schema.head_targets`).

Loss normalisation (`grouped_softmax_loss`): for each head, the cross-entropy is averaged over the
examples of the batch that carry a label for that head; the per-head means are then summed over heads.
A head with no labelled example in the batch contributes exactly 0 (and a zero gradient), never NaN.
Summing rather than averaging over heads keeps each head's gradient scale independent of how many
heads the schema has, as in the report (one softmax loss per head, added up).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx

MISSING_LABEL = -1


class GroupedHeads(nnx.Module):
    """One linear classifier per head on a shared feature vector; returns a list of logits."""

    def __init__(
        self,
        in_features: int,
        head_sizes: Sequence[int],
        *,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        head_sizes = tuple(int(n) for n in head_sizes)
        if not head_sizes:
            raise ValueError("GroupedHeads needs at least one head; got head_sizes=()")
        bad = [n for n in head_sizes if n < 2]
        if bad:
            raise ValueError(
                f"every head is a softmax over at least 2 classes (a binary attribute is absent/present); "
                f"got head sizes {list(head_sizes)}"
            )
        self.in_features = int(in_features)
        self.head_sizes = head_sizes
        # Small initial logits: every head starts close to uniform, so the summed loss starts near
        # sum(log n_h) whatever the feature scale of a pretrained fc7.
        init = nnx.initializers.variance_scaling(0.1, "fan_in", "normal")
        self.heads = nnx.List(
            [
                nnx.Linear(
                    self.in_features,
                    n,
                    kernel_init=init,
                    dtype=dtype,
                    param_dtype=param_dtype,
                    rngs=rngs,
                )
                for n in head_sizes
            ]
        )

    @property
    def num_heads(self) -> int:
        return len(self.head_sizes)

    def __call__(self, features: jax.Array) -> list[jax.Array]:
        if features.shape[-1] != self.in_features:
            raise ValueError(
                f"GroupedHeads expects features with last dimension {self.in_features}, "
                f"got shape {tuple(features.shape)}"
            )
        return [head(features) for head in self.heads]


def _check_heads(head_logits: Sequence[jax.Array], head_targets: jax.Array) -> None:
    if head_targets.ndim != 2 or head_targets.shape[1] != len(head_logits):
        raise ValueError(
            f"head_targets must have shape (batch, {len(head_logits)}) for {len(head_logits)} heads, "
            f"got {tuple(head_targets.shape)}"
        )
    for h, logits in enumerate(head_logits):
        if logits.ndim != 2 or logits.shape[0] != head_targets.shape[0]:
            raise ValueError(
                f"head {h} logits must have shape (batch={head_targets.shape[0]}, classes), "
                f"got {tuple(logits.shape)}"
            )


def per_example_head_losses(head_logits: Sequence[jax.Array], head_targets: jax.Array):
    """Cross-entropy per example and head, (B, H) float32, and the label mask (B, H) bool."""
    _check_heads(head_logits, head_targets)
    head_targets = head_targets.astype(jnp.int32)
    mask = head_targets >= 0
    losses = []
    for h, logits in enumerate(head_logits):
        # Missing labels (-1) are replaced by class 0 so the gather is valid; the mask zeroes them.
        safe = jnp.where(mask[:, h], head_targets[:, h], 0)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
        losses.append(jnp.where(mask[:, h], ce, 0.0))
    return jnp.stack(losses, axis=1), mask


def grouped_softmax_loss(
    head_logits: Sequence[jax.Array], head_targets: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Sum over heads of the masked mean softmax cross-entropy.

    Args:
      head_logits: H arrays, head h of shape (B, n_h).
      head_targets: int (B, H), class index per head, -1 where the label is missing.

    Returns:
      (loss, per_head_loss): a float32 scalar and the (H,) per-head means. A head without any
      labelled example in the batch has per-head loss 0.
    """
    losses, mask = per_example_head_losses(head_logits, head_targets)
    counts = jnp.sum(mask, axis=0).astype(jnp.float32)
    per_head = jnp.sum(losses, axis=0) / jnp.maximum(counts, 1.0)
    return jnp.sum(per_head), per_head


def head_predictions(head_logits: Sequence[jax.Array]) -> jax.Array:
    """Predicted class per head, int32 (B, H)."""
    return jnp.stack([jnp.argmax(logits, axis=-1).astype(jnp.int32) for logits in head_logits], axis=1)


def head_correct(head_logits: Sequence[jax.Array], head_targets: jax.Array):
    """(correct, mask): float32 (B, H) 1 where the predicted class equals a present label; bool mask."""
    _check_heads(head_logits, head_targets)
    mask = head_targets >= 0
    correct = (head_predictions(head_logits) == head_targets) & mask
    return correct.astype(jnp.float32), mask


def head_accuracy(head_logits: Sequence[jax.Array], head_targets: jax.Array):
    """(mean_accuracy, per_head_accuracy (H,), per_head_count (H,)) over labelled examples.

    A head without labels in the batch gets accuracy 0 and count 0; `mean_accuracy` averages over heads
    with at least one label (0 when none has any). Accumulate counts across batches for exact totals.
    """
    correct, mask = head_correct(head_logits, head_targets)
    counts = jnp.sum(mask, axis=0).astype(jnp.float32)
    per_head = jnp.sum(correct, axis=0) / jnp.maximum(counts, 1.0)
    labelled = counts > 0
    mean = jnp.sum(jnp.where(labelled, per_head, 0.0)) / jnp.maximum(jnp.sum(labelled), 1)
    return mean, per_head, counts


class GroupedLogits(nnx.Module):
    """A backbone whose one output layer holds every head's classes, its logits split into one array per
    head: any detector backbone as an attribute classifier (a second, independent one: the judge)."""

    def __init__(self, backbone: nnx.Module, head_sizes: Sequence[int]):
        self.backbone = backbone
        self.head_sizes = tuple(int(h) for h in head_sizes)
        self.input_size = getattr(backbone, "input_size", None)

    def __call__(self, x, *, train: bool = False) -> list:
        logits = self.backbone(x, train=train)
        bounds = [sum(self.head_sizes[: i + 1]) for i in range(len(self.head_sizes) - 1)]
        return list(jnp.split(logits, bounds, axis=-1))

    def features(self, x, *, train: bool = False):
        """The penultimate features (the backbone's pooled vector): what KID compares."""
        return self.backbone.features(x, train=train)
