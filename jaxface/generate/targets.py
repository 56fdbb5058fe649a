"""What to generate: the context loaded from W/cgmm/, items (attribute set, seed, mode, model, method,
settings, strength) and their target activations."""
from __future__ import annotations

import collections
import dataclasses
import math
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxface import files
from jaxface.cgmm import fit as fit_lib
from jaxface.cgmm import store as store_lib
from jaxface.cgmm import targets as targets_lib
from jaxface.generate.classifier import Classifier, load_classifier
from jaxface.generate.settings import DEFAULT_NUM, GenerateError, MAX_SEED, Settings


_TARGET_STREAM = 1  # fold_in tag of the target-sampling stream (kept apart from init/jitter)
# mean / sample: the target model's mean or a draw (cgmm/targets.py); edit: a real exemplar's own
# activation plus the requested attributes' direction (item_targets), starting from that exemplar (starts.py).
MODES = targets_lib.MODES + ("edit",)


# -------------------------------------------------------------------------------------- context
@dataclasses.dataclass
class Context:
    workdir: pathlib.Path
    config: Any
    store: store_lib.CGMMStore
    clf: Classifier
    mean_image: np.ndarray  # (S, S, 3) float32
    exemplars: dict = dataclasses.field(default_factory=dict)  # attribute indices -> real faces (starts.py)


def load_context(workdir) -> Context:
    workdir = files.as_path(workdir)
    directory = workdir / fit_lib.CGMM_DIR
    try:
        config = fit_lib.load_generate_config(workdir)
        store = store_lib.load_cgmm(directory)
    except store_lib.CGMMStoreError as e:
        raise GenerateError(str(e)) from None
    cls_dir = fit_lib.classifier_workdir(config, workdir)
    clf = load_classifier(cls_dir, store.layer)
    expected = tuple(int(s) for s in clf.setup.model.layer_output_shape(store.layer))
    if expected != tuple(store.layer_shape) or clf.setup.task.schema.attribute_names != store.schema.attribute_names:
        raise GenerateError(
            f"the fitted cGMM in {directory} ({store.layer} {tuple(store.layer_shape)}, schema "
            f"{store.schema.name}) does not match the classifier in {cls_dir} ({store.layer} {expected}, "
            f"schema {clf.setup.task.schema.name}); rerun fit-cgmm")
    mean_path = directory / fit_lib.MEAN_IMAGE_FILE
    size = clf.input_size
    if mean_path.is_file():
        from jaxface.data import imageio

        mean = imageio.center_crop_resize(imageio.decode_image(str(mean_path)), size)
        mean_image = mean.astype(np.float32) / 255.0
    else:  # mid-grey, the neutral start
        mean_image = np.full((size, size, 3), 0.5, np.float32)
    return Context(workdir, config, store, clf, mean_image)


# ----------------------------------------------------------------------------------------- items
@dataclasses.dataclass
class Item:
    set_index: int
    names: list[str]  # canonical attribute names, in the order given
    indices: list[int]
    seed: int
    mode: str
    model: str
    method: str
    settings: Settings
    strength: float = 1.0


def resolve_set(store: store_lib.CGMMStore, attributes) -> tuple[list[str], list[int]]:
    """User attribute names -> (canonical names, indices); clear errors for every bad request."""
    if attributes is None:
        raise GenerateError("no attributes given: pass --attributes=\"Male, Smiling\" (or --reconstruct / "
                            "--sweep); valid names: " + ", ".join(store.valid_attribute_names))
    if isinstance(attributes, str):
        given = [t.strip() for t in attributes.split(",") if t.strip()]
    elif isinstance(attributes, (list, tuple)) and all(isinstance(a, str) for a in attributes):
        given = [a.strip() for a in attributes if a.strip()]
    else:
        raise GenerateError(f"attributes must be a comma-separated string or a list of names, got {attributes!r}")
    try:
        indices = targets_lib.resolve_attributes(store, given)
    except targets_lib.TargetSpecError as e:
        raise GenerateError(str(e)) from None
    schema = store.schema
    by_head = collections.defaultdict(list)
    for i in indices:
        by_head[int(schema.attribute_head[i])].append(i)
    for head, members in by_head.items():
        if len(members) > 1:
            raise GenerateError(
                f"{' and '.join(schema.attribute_names[i] for i in members)} are mutually exclusive "
                f"(one {schema.groups[head].name!r}); request at most one of them")
    ordered = []
    for name in given:
        i = schema.index(name)
        if i not in ordered:
            ordered.append(i)
    return [schema.attribute_names[i] for i in ordered], ordered


def check_choice(what: str, value: str, valid: Sequence[str]) -> str:
    if value not in valid:
        raise GenerateError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")
    return value


def seeds_for(seeds, num, seed, where: str) -> list[int]:
    if seeds is not None:
        if num is not None:
            raise GenerateError(f"{where}: give either seeds or num, not both")
        if not isinstance(seeds, (list, tuple)) or not seeds:
            raise GenerateError(f"{where}: seeds must be a non-empty list of integers, got {seeds!r}")
        out = seeds
    else:
        num = DEFAULT_NUM if num is None else num
        if not isinstance(num, (int, np.integer)) or isinstance(num, bool) or num < 1:
            raise GenerateError(f"{where}: num must be a positive integer, got {num!r}")
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise GenerateError(f"{where}: seed must be an integer, got {seed!r}")
        out = [int(seed) + i for i in range(int(num))]
    for s in out:
        if not isinstance(s, (int, np.integer)) or isinstance(s, bool) or not 0 <= int(s) <= MAX_SEED:
            raise GenerateError(f"{where}: seeds must be integers in [0, {MAX_SEED}], got {s!r}")
    return [int(s) for s in out]


# ------------------------------------------------------------------------------------- targets
def item_targets(ctx: Context, items: Sequence[Item], exemplar_features: np.ndarray | None = None) -> np.ndarray:
    """(B, D) target activations, each from its item's own seed (independent of the batch).

    mode='edit' items need `exemplar_features`, (B, D) activations of their start images (rows of other
    items are ignored): their target is phi(exemplar) + strength (T - m), T the model's mean target and m
    the dataset mean activation, so the exemplar keeps what makes it one face and gains the attributes.
    """
    store = ctx.store
    out = np.zeros((len(items), store.dim), np.float32)
    groups = collections.defaultdict(list)
    for row, item in enumerate(items):
        groups[(item.model, "mean" if item.mode == "edit" else item.mode)].append(row)
    for (model, mode), rows in groups.items():
        keys = jnp.stack([jax.random.fold_in(jax.random.key(items[r].seed), _TARGET_STREAM) for r in rows])
        if model == "cgmm":
            ind = np.zeros((len(rows), store.num_attributes), np.float32)
            for j, r in enumerate(rows):
                ind[j, items[r].indices] = 1.0
            t = targets_lib.cgmm_targets(
                jnp.asarray(store.mean), jnp.asarray(store.var), jnp.asarray(store.weights),
                jnp.asarray(ind), keys, mode=mode)
        else:
            try:
                vectors = np.stack([targets_lib.joint_attribute_vector(store, items[r].indices) for r in rows])
            except targets_lib.TargetSpecError as e:
                raise GenerateError(str(e)) from None
            joint = store.joint
            t = targets_lib.joint_targets(
                jnp.asarray(joint.coef), jnp.asarray(joint.bias), jnp.asarray(joint.resid_var),
                jnp.asarray(vectors), keys, mode=mode)
        out[rows] = np.asarray(t)
    strength = np.asarray([item.strength for item in items], np.float32)[:, None]
    edit = np.asarray([item.mode == "edit" for item in items])
    if np.any(strength[~edit] != 1.0):
        out[~edit] = amplify(out[~edit], store.overall_mean, strength[~edit])
    if edit.any():
        if exemplar_features is None or store.overall_mean is None:
            raise GenerateError("mode='edit' needs the exemplars' activations and the dataset mean activation "
                                "(a model fitted before it existed lacks the latter: rerun fit-cgmm)")
        direction = out[edit] - np.asarray(store.overall_mean, np.float32)[None]
        out[edit] = np.maximum(np.asarray(exemplar_features, np.float32)[edit] + strength[edit] * direction, 0.0)
    if not np.all(np.isfinite(out)):
        raise GenerateError("the target activations are not finite: the fitted model is damaged; rerun fit-cgmm")
    return out


def amplify(targets: np.ndarray, center, strength) -> np.ndarray:
    """T' = m + strength (T - m): the target's departure from the dataset mean activation m, scaled.

    strength 1 is the model's own target; > 1 exaggerates what distinguishes the requested attributes
    from an average face (vector arithmetic with a gain). Every tap of the network is post-ReLU or a
    pool of one, so extrapolated targets are clipped at 0, where real activations live.
    """
    if center is None:
        raise GenerateError("strength != 1 needs the dataset mean activation, which this fitted model lacks; "
                            "rerun fit-cgmm")
    center = np.asarray(center, np.float32)[None, :]
    return np.maximum(center + strength * (targets - center), 0.0).astype(np.float32)


def check_strength(value, where: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise GenerateError(f"{where}: strength must be a positive number (1 = the model's own target)")
    return value


def head_targets(schema, indices: Sequence[int]) -> np.ndarray:
    """(H,) int: the class each requested attribute's head is pushed to, -1 for the other heads."""
    out = np.full(schema.num_heads, -1, np.int32)
    for i in indices:
        head = int(schema.attribute_head[i])
        members = schema.head_attribute_indices[head]
        out[head] = 1 if schema.groups[head].is_binary else members.index(i)
    return out


def default_strength(ctx: Context) -> float:
    return check_strength(ctx.config.get("targets", {}).get("strength", 1.0), "config targets.strength")
