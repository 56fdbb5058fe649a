"""Quality metrics of generated faces, measured with the project's attribute classifier.

- hit rate: the fraction of the requested attributes the classifier detects in an image. "Detects" is
  the classifier's own decision rule: the head's predicted class is the attribute (for a binary head
  that is probability > 0.5; in an exclusive group, e.g. hair colour, the attribute must win the
  softmax over its siblings).
- feature error: ||T - phi(x)||^2 / ||T||^2 per image, the normalised distance between the target
  activations and the activations of the generated image (0 is a perfect match).
- diversity: the mean over pairs of images of a set of their root-mean-square pixel difference (pixels
  in [0, 1]); 0 when every image of the set is the same.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxface.data.schema import Schema


def head_predictions(schema: Schema, head_logits: Sequence) -> np.ndarray:
    """Per-head logits -> (N, K) bool: the attribute is the predicted class of its head."""
    logits = [np.asarray(x, np.float32) for x in head_logits]
    n = logits[0].shape[0]
    detected = np.zeros((n, schema.num_attributes), bool)
    for g, idx, lg in zip(schema.groups, schema.head_attribute_indices, logits):
        best = np.argmax(lg, axis=-1)
        if g.is_binary:
            detected[:, idx[0]] = best == 1
        else:
            for position, attribute in enumerate(idx):
                detected[:, attribute] = best == position
    return detected


def hit_rates(detected: np.ndarray, requested: Sequence[Sequence[int]]) -> np.ndarray:
    """(N, K) detections and one list of requested attribute indices per image -> (N,) hit rates."""
    detected = np.asarray(detected, bool)
    if len(requested) != detected.shape[0]:
        raise ValueError(f"{detected.shape[0]} images but {len(requested)} requested attribute lists")
    out = np.zeros(detected.shape[0], np.float64)
    for i, idx in enumerate(requested):
        idx = list(idx)
        if not idx:
            raise ValueError(f"image {i} has no requested attributes: a hit rate needs at least one")
        out[i] = float(np.mean(detected[i, idx]))
    return out


def feature_errors(features, targets) -> np.ndarray:
    """||T - phi||^2 / ||T||^2 per image, for (N, ...) arrays (float64 on the host)."""
    f = np.asarray(features, np.float64).reshape(np.shape(features)[0], -1)
    t = np.asarray(targets, np.float64).reshape(np.shape(targets)[0], -1)
    if f.shape != t.shape:
        raise ValueError(f"features {f.shape} and targets {t.shape} differ in shape")
    norm = np.sum(t * t, axis=1)
    return np.sum((f - t) ** 2, axis=1) / np.where(norm > 0, norm, 1.0)


def diversity(images) -> float:
    """Mean pairwise root-mean-square pixel distance between images (N, H, W, C) in [0, 1].

    NaN for fewer than two images (a single image has no spread to measure).
    """
    x = np.asarray(images, np.float64).reshape(np.shape(images)[0], -1)
    n = x.shape[0]
    if n < 2:
        return float("nan")
    sq = np.sum(x * x, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0) / x.shape[1]
    upper = np.triu_indices(n, k=1)
    return float(np.mean(np.sqrt(d2[upper])))


def summarize_set(records: Sequence[dict], images) -> dict:
    """Per-set summary from its per-image records (keys hit_rate, feature_error) and images."""
    hits = np.asarray([r["hit_rate"] for r in records], np.float64)
    errors = np.asarray([np.nan if r.get("feature_error") is None else r["feature_error"] for r in records],
                        np.float64)
    probs = np.asarray([[r["attribute_probs"][a] for a in records[0]["attribute_probs"]] for r in records])
    return dict(
        num_images=len(records),
        mean_hit_rate=float(np.mean(hits)),
        all_detected_rate=float(np.mean(hits == 1.0)),
        mean_feature_error=float(np.nanmean(errors)) if np.isfinite(errors).any() else None,
        diversity=diversity(images),
        mean_attribute_probs={a: float(p) for a, p in zip(records[0]["attribute_probs"], probs.mean(axis=0))},
    )


def heads_from_layer(model, layer: str, activations):
    """The classifier's head logits for activations of a named VGGFace layer (the rest of the forward).

    Lets the target activations themselves be classified: a target the heads do not read as the
    requested attributes cannot produce an image that has them, however well it is inverted.
    activations: (N, D) flattened or (N, *layer shape). Deterministic (no dropout).
    """
    import jax

    from jaxface.models import layers as layers_lib
    from jaxface.models import vggface

    start = vggface.layer_index(layer)
    if layer == "heads":
        raise ValueError("activations of 'heads' are already head logits")
    h = activations.reshape((activations.shape[0],) + tuple(model.layer_output_shape(layer)))
    for name in vggface.LAYER_NAMES[start + 1:]:
        if name.startswith("conv"):
            h = jax.nn.relu(getattr(model, name)(h))
        elif name.startswith("pool"):
            h = layers_lib.max_pool_2x2(h)
        elif name == "fc6":
            h = jax.nn.relu(model.fc6(h.reshape(h.shape[0], -1)))
        elif name == "fc7":
            h = jax.nn.relu(model.fc7(h))
        elif name == "heads":
            h = model.heads(h)
    return h


def _poly_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def _kid_from_kernels(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    m, n = kxx.shape[0], kyy.shape[0]
    xx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    yy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(xx + yy - 2.0 * kxy.mean())


def kid(features_a, features_b) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018) between two feature sets (N, D) and (M, D):
    the unbiased squared MMD with the cubic polynomial kernel (x.y / D + 1)^3, and its standard error by
    the jackknife (each image of either set left out once). 0 in expectation for one distribution; it can
    come out slightly negative. NaN for fewer than two images on a side (three for the error)."""
    x, y = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        return float("nan"), float("nan")
    kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    value = _kid_from_kernels(kxx, kyy, kxy)
    if m < 3 or n < 3:
        return value, float("nan")
    leave_out = []
    for i in range(m):
        keep = np.arange(m) != i
        leave_out.append(_kid_from_kernels(kxx[np.ix_(keep, keep)], kyy, kxy[keep]))
    for j in range(n):
        keep = np.arange(n) != j
        leave_out.append(_kid_from_kernels(kxx, kyy[np.ix_(keep, keep)], kxy[:, keep]))
    values = np.asarray(leave_out)
    k = len(values)
    return value, float(np.sqrt((k - 1) / k * np.sum((values - values.mean()) ** 2)))


def feature_diversity(features) -> float:
    """Mean pairwise Euclidean distance between feature vectors (N, D); NaN for fewer than two."""
    f = np.asarray(features, np.float64)
    if len(f) < 2:
        return float("nan")
    sq = np.sum(f * f, axis=1)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * f @ f.T, 0.0))
    return float(d[np.triu_indices(len(f), k=1)].mean())
