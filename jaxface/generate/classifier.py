"""The attribute classifier that generation inverts and judges with: its feature and head functions,
jitted once per checkpoint and layer and cached, so repeated calls (tests, sweeps, a server) reuse
compiled programs."""
from __future__ import annotations

import collections
import dataclasses
import pathlib
from typing import Any

from jax.sharding import NamedSharding, PartitionSpec as P
import jax
import numpy as np

from jaxface import files
from jaxface.cgmm import fit as fit_lib
from jaxface.evaluate import generation as metrics
from jaxface.generate.settings import GenerateError
from jaxface.invert import render


# ------------------------------------------------------------------------------------- the model
@dataclasses.dataclass
class Classifier:
    setup: Any
    layer: str
    input_size: int
    feature_model: tuple  # (apply_fn, state) images -> (B, D) activations of `layer`
    heads_model: tuple  # (apply_fn, state) images -> list of head logits
    evaluate: Any  # jitted (state, images) -> (features (B, D), [head logits])
    heads_from_layer: Any  # jitted (state, acts (B, D)) -> [head logits]
    layer_models: dict = dataclasses.field(default_factory=dict)  # layers -> (apply_fn, state)


_CLASSIFIERS: "collections.OrderedDict[tuple, Classifier]" = collections.OrderedDict()


def _features_of(layer: str):
    def method(model, images):
        out = model.activations(images, (layer,))[layer]
        return out.reshape(out.shape[0], -1)

    return method


def _heads(model, images):
    return model.activations(images, ("heads",))["heads"]


def load_classifier(path: pathlib.Path, layer: str) -> Classifier:
    """The classifier in `path` with its inversion/evaluation functions, cached per checkpoint.

    Cached so that repeated calls in one process (tests, sweeps, a server) reuse compiled programs:
    the render loop's programs are keyed by the identity of the model function.
    """
    from flax import nnx

    path = files.as_path(path)
    path = path.absolute() if files.is_local(path) else path
    # In a multi-process run each process renders its own share of the images on its own devices.
    local = jax.process_count() > 1
    key = (str(path), fit_lib.checkpoint_step(path), layer, local)
    if key in _CLASSIFIERS:
        _CLASSIFIERS.move_to_end(key)
        return _CLASSIFIERS[key]
    try:
        setup = fit_lib.load_classifier(path, local=local)
        fit_lib.check_layer(setup.model, layer)
    except fit_lib.FitConfigError as e:
        raise GenerateError(str(e)) from None
    model = setup.model
    graphdef, state = nnx.split(model)

    @jax.jit
    def evaluate(state, images):
        out = nnx.merge(graphdef, state).activations(images, (layer, "heads"))
        return out[layer].reshape(images.shape[0], -1), out["heads"]

    @jax.jit
    def heads_from_layer(state, acts):
        return metrics.heads_from_layer(nnx.merge(graphdef, state), layer, acts)

    clf = Classifier(
        setup=setup, layer=layer, input_size=int(model.input_size),
        feature_model=render.nnx_model_fn(model, _features_of(layer)),
        heads_model=render.nnx_model_fn(model, _heads),
        evaluate=evaluate, heads_from_layer=heads_from_layer,
    )
    _CLASSIFIERS[key] = clf
    while len(_CLASSIFIERS) > 2:
        _CLASSIFIERS.popitem(last=False)
    return clf


def _on_mesh(clf: Classifier, array: np.ndarray) -> tuple[jax.Array, int]:
    """Host batch -> padded, batch-sharded array on the classifier's mesh; returns (array, real size)."""
    mesh = clf.setup.mesh
    n = array.shape[0]
    shards = int(mesh.shape["data"])
    padded = -(-n // shards) * shards
    if padded != n:
        array = np.concatenate([array, np.repeat(array[-1:], padded - n, axis=0)])
    return jax.device_put(array, NamedSharding(mesh, P("data"))), n


def classify_images(clf: Classifier, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> features (N, D), attribute probabilities (N, K), detections (N, K) bool."""
    schema = clf.setup.task.schema
    x, n = _on_mesh(clf, np.asarray(images, np.float32))
    feats, heads = clf.evaluate(clf.setup.model_state, x)
    heads = [np.asarray(h)[:n] for h in heads]
    probs = np.asarray(schema.attribute_probabilities(heads))
    return np.asarray(feats)[:n], probs, metrics.head_predictions(schema, heads)


def classify_targets(clf: Classifier, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the classifier's remaining layers say about target activations: probabilities, detections."""
    schema = clf.setup.task.schema
    x, n = _on_mesh(clf, np.asarray(targets, np.float32))
    heads = [np.asarray(h)[:n] for h in clf.heads_from_layer(clf.setup.model_state, x)]
    return np.asarray(schema.attribute_probabilities(heads)), metrics.head_predictions(schema, heads)
