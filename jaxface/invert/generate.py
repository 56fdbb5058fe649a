"""`jaxface generate`: faces from attribute sets (cGMM or joint targets + feature inversion), the
class-visualisation baseline, reconstructions of real images, and sweeps, with quality metrics.

    generate_command(W, attributes="Male, Black Hair", num=8, mode="sample", model="joint")
    generate_command(W, reconstruct="face.png")
    generate_command(W, sweep="sweep.json")

Everything comes from W/cgmm/ (written by `jaxface fit-cgmm`): the target models, the layer, the
classifier's location and the inversion settings (W/cgmm/config.json). Outputs go to
W/generate/<name>/.

Randomness: image i of a run with --seed=S has its own seed S + i. That seed alone fixes its initial
noise, its jitter at every step (the render loop folds the seed into its PRNG key as the item id) and,
for mode=sample, its target sample, so an image does not depend on the other images of its batch, and
the same seed gives the same image.

A sweep is a JSON list of entries
    {"attributes": "Male, Smiling", "seeds": [0, 1, 2]}            (or "num": 3 [, "seed": 0])
    {"attributes": ["Bald"], "num": 4, "mode": "sample", "model": "joint", "method": "invert",
     "steps": 300, "settings": {"lr": 0.03, "jitter": 1}, "label": "bald-joint"}
Entries whose static inversion settings are equal (targets, modes and models may differ: those are
data) run together, in batched, compiled calls of at most invert.max_batch images.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import io
import json
import math
import pathlib
import re
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxface import files
from jaxface.cgmm import fit as fit_lib
from jaxface.cgmm import store as store_lib
from jaxface.cgmm import targets as targets_lib
from jaxface.evaluate import generation as metrics
from jaxface.invert import param as param_lib
from jaxface.invert import render

METHODS = ("invert", "classvis")
PARAMS = param_lib.PARAM_KINDS
GENERATE_DIR = "generate"
DEFAULT_NUM = 8
MAX_SEED = 2**32 - 1
# Fixed base key: per-image randomness comes from the image's seed, folded in as its item id.
_RENDER_KEY = 0
_TARGET_STREAM = 1  # fold_in tag of the target-sampling stream (kept apart from init/jitter)
SWEEP_KEYS = ("attributes", "seeds", "num", "seed", "mode", "model", "method", "strength", "steps", "settings",
              "label")


class GenerateError(ValueError):
    """A generate request that cannot run (bad names, options, files or a missing fitted model)."""


# ------------------------------------------------------------------------------------- settings
@dataclasses.dataclass(frozen=True)
class Settings:
    """Static settings of one inversion (hashable: equal settings share a batched, compiled call)."""

    steps: int = 200
    lr: float = 0.05
    optimizer: str = "adam"
    momentum: float = 0.9
    param: str = "fft"
    pixel_mode: str = "sigmoid"
    decay_power: float = 1.0
    init: str = "noise"
    noise_std: float = 0.05
    jitter: int = 2
    pad: int = 0
    scales: tuple = ()
    rotate_degrees: float = 0.0
    blur_every: int = 4
    blur_sigma: float = 0.5
    tv_weight: float = 0.05
    l2_weight: float = 0.0
    range_weight: float = 0.0
    prior_weight: float = 0.0  # param='pca': weight of the Gaussian prior on the coefficients
    head_mode: str = "log_prob"
    loop: str = "auto"
    chunk: int = 0
    max_batch: int = 32

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, overrides: dict | None, where: str = "settings") -> "Settings":
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - set(self.names()))
        if unknown:
            raise GenerateError(
                f"unknown {where} key(s) {', '.join(map(repr, unknown))}; valid: {', '.join(self.names())}")
        values = dataclasses.asdict(self)
        for key, value in overrides.items():
            default = values[key]
            try:
                if isinstance(default, bool):
                    value = bool(value)
                elif isinstance(default, int):
                    if float(value) != int(float(value)):
                        raise ValueError("not an integer")
                    value = int(float(value))
                elif isinstance(default, float):
                    value = float(value)
                elif isinstance(default, tuple):
                    value = tuple(float(v) for v in (value or ()))
                else:
                    value = str(value)
            except (TypeError, ValueError):
                raise GenerateError(f"{where} {key}={value!r}: expected a {type(default).__name__}") from None
            values[key] = value
        out = Settings(**values)
        out.validate(where)
        return out

    def validate(self, where: str = "settings") -> None:
        if self.steps < 1:
            raise GenerateError(f"{where}: steps must be at least 1, got {self.steps}")
        if not self.lr > 0:
            raise GenerateError(f"{where}: lr must be > 0, got {self.lr}")
        if self.init not in ("noise", "mean"):
            raise GenerateError(f"{where}: init={self.init!r}; valid: noise, mean")
        if self.max_batch < 1:
            raise GenerateError(f"{where}: max_batch must be at least 1, got {self.max_batch}")
        if self.noise_std < 0:
            raise GenerateError(f"{where}: noise_std must be >= 0, got {self.noise_std}")
        if self.param not in PARAMS:
            raise GenerateError(f"{where}: param={self.param!r}; valid: {', '.join(PARAMS)}")
        if self.prior_weight < 0 or (self.prior_weight > 0 and self.param != "pca"):
            raise GenerateError(f"{where}: prior_weight={self.prior_weight} needs param='pca' and must be >= 0")

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["scales"] = list(self.scales)
        return d


def _config_dict(section) -> dict:
    if section is None:
        return {}
    return section.to_dict() if hasattr(section, "to_dict") else dict(section)


def settings_from_config(config, method: str) -> Settings:
    """invert section, plus the classvis section's overrides for method='classvis'."""
    base = Settings().replace(_config_dict(config.get("invert")), "config invert")
    if method == "classvis":
        base = base.replace(_config_dict(config.get("classvis")), "config classvis")
    return base


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

    path = pathlib.Path(path).absolute()
    key = (str(path), fit_lib.checkpoint_step(path), layer)
    if key in _CLASSIFIERS:
        _CLASSIFIERS.move_to_end(key)
        return _CLASSIFIERS[key]
    try:
        setup = fit_lib.load_classifier(path)
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


# -------------------------------------------------------------------------------------- context
@dataclasses.dataclass
class Context:
    workdir: pathlib.Path
    config: Any
    store: store_lib.CGMMStore
    clf: Classifier
    mean_image: np.ndarray  # (S, S, 3) float32


def load_context(workdir) -> Context:
    workdir = pathlib.Path(workdir)
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


def _check_choice(what: str, value: str, valid: Sequence[str]) -> str:
    if value not in valid:
        raise GenerateError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")
    return value


def _seeds(seeds, num, seed, where: str) -> list[int]:
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
def item_targets(ctx: Context, items: Sequence[Item]) -> np.ndarray:
    """(B, D) target activations, each from its item's own seed (independent of the batch)."""
    store = ctx.store
    out = np.zeros((len(items), store.dim), np.float32)
    groups = collections.defaultdict(list)
    for row, item in enumerate(items):
        groups[(item.model, item.mode)].append(row)
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
    if np.any(strength != 1.0):
        out = amplify(out, store.overall_mean, strength)
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


def _strength(value, where: str) -> float:
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


# ------------------------------------------------------------------------------------ rendering
def _render_kwargs(ctx: Context, settings: Settings, seeds: Sequence[int], progress) -> dict:
    init_image = ctx.mean_image if settings.init == "mean" else None
    if settings.param == "pca" and ctx.store.image_prior is None:
        raise GenerateError(
            f"param='pca' needs the image prior, which the fitted model in {ctx.workdir / fit_lib.CGMM_DIR} "
            "lacks: rerun fit-cgmm with generate.prior_components > 0, or choose param 'fft' or 'pixels'")
    return dict(
        key=jax.random.key(_RENDER_KEY), steps=settings.steps, size=ctx.clf.input_size,
        param=settings.param, pixel_mode=settings.pixel_mode if settings.param == "pixels" else "sigmoid",
        decay_power=settings.decay_power, init_image=init_image, noise_std=settings.noise_std,
        image_prior=ctx.store.image_prior if settings.param == "pca" else None,
        prior_weight=settings.prior_weight,
        item_ids=np.asarray(seeds, np.uint32), lr=settings.lr, optimizer=settings.optimizer,
        momentum=settings.momentum, jitter=settings.jitter, pad=settings.pad,
        scales=settings.scales or None, rotate_degrees=settings.rotate_degrees,
        blur_every=settings.blur_every, blur_sigma=settings.blur_sigma,
        tv_weight=settings.tv_weight, l2_weight=settings.l2_weight, range_weight=settings.range_weight,
        loop=settings.loop, chunk=settings.chunk or None, mesh=ctx.clf.setup.mesh, progress=progress,
    )


def _progress_printer(label: str, total: int, verbose: bool):
    if not verbose:
        return None
    start = time.perf_counter()

    def report(step: int, values: dict) -> None:
        obj = np.asarray(values["objective"])
        print(f"  {label}: step {step}/{total} objective mean {float(np.mean(obj)):.4f} "
              f"({time.perf_counter() - start:.0f}s)", flush=True)

    return report


def render_items(ctx: Context, items: Sequence[Item], *, verbose: bool = True, label: str = "") -> dict:
    """Run items that share method and settings, in chunks of max_batch; -> images, objective, error."""
    settings, method = items[0].settings, items[0].method
    assert all(i.settings == settings and i.method == method for i in items)
    images, objective, feature_error, targets = [], [], [], []
    for start in range(0, len(items), settings.max_batch):
        chunk = list(items[start : start + settings.max_batch])
        seeds = [i.seed for i in chunk]
        tag = f"{label or method} [{start + 1}-{start + len(chunk)} of {len(items)}]"
        kwargs = _render_kwargs(ctx, settings, seeds, _progress_printer(tag, settings.steps, verbose))
        t = item_targets(ctx, chunk)
        try:
            if method == "invert":
                result = render.invert(ctx.clf.feature_model, jnp.asarray(t), **kwargs)
            else:
                schema = ctx.store.schema
                heads = np.stack([head_targets(schema, i.indices) for i in chunk])
                result = render.class_visualize(ctx.clf.heads_model, heads, head_mode=settings.head_mode, **kwargs)
        except (render.RenderError, ValueError) as e:
            raise GenerateError(f"cannot run the inversion with these settings: {e}") from None
        images.append(result.images)
        objective.append(result.objective)
        targets.append(t)
    return dict(images=np.concatenate(images), objective=np.concatenate(objective), targets=np.concatenate(targets))


def evaluate_items(ctx: Context, items: Sequence[Item], rendered: dict) -> list[dict]:
    """One results.json record per image (see the module docstring of jaxface.evaluate.generation)."""
    feats, probs, detected = classify_images(ctx.clf, rendered["images"])
    errors = metrics.feature_errors(feats, rendered["targets"])
    hits = metrics.hit_rates(detected, [i.indices for i in items])
    target_probs, _ = classify_targets(ctx.clf, rendered["targets"])
    names = ctx.store.schema.attribute_names
    records = []
    for row, item in enumerate(items):
        settings = dict(method=item.method, model=item.model, mode=item.mode, strength=item.strength,
                        layer=ctx.store.layer, **item.settings.as_dict())
        if item.method == "classvis":
            settings["feature_error_reference"] = f"mean target of the {item.model} model"
        records.append(dict(
            set=item.set_index,
            attributes=item.names,
            seed=item.seed,
            settings=settings,
            objective=float(rendered["objective"][row]),
            feature_error=float(errors[row]),
            attribute_probs={names[i]: float(probs[row, i]) for i in item.indices},
            detected={names[i]: bool(detected[row, i]) for i in item.indices},
            hit_rate=float(hits[row]),
            target_attribute_probs={names[i]: float(target_probs[row, i]) for i in item.indices},
        ))
    return records


# --------------------------------------------------------------------------------------- output
def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "set"


def _check_name(name: str) -> str:
    if not name or name in (".", "..") or not re.fullmatch(r"[A-Za-z0-9._\-]+", name):
        raise GenerateError(f"--name={name!r}: use letters, digits, '.', '_' or '-' (one directory name)")
    return name


def _write_images(directory: pathlib.Path, images: np.ndarray, cols: int | None = None) -> list[pathlib.Path]:
    outputs = [files.save_image(directory / "grid.png", files.image_grid(images, cols=cols))]
    for i, image in enumerate(images):
        outputs.append(files.save_image(directory / "images" / f"{i:03d}.png", image))
    return outputs


def _set_line(summary: dict, label: str) -> str:
    err = summary["mean_feature_error"]
    div = summary["diversity"]
    return (f"{label}: hit rate {summary['mean_hit_rate']:.3f} (all detected {summary['all_detected_rate']:.2f}), "
            f"feature error {'n/a' if err is None else format(err, '.3f')}, "
            f"diversity {'n/a' if not math.isfinite(div) else format(div, '.4f')}")


def _default_strength(ctx: Context) -> float:
    return _strength(ctx.config.get("targets", {}).get("strength", 1.0), "config targets.strength")


def _generate(ctx: Context, attributes, num, mode, model, method, steps, seed, name, strength, verbose) -> dict:
    _check_choice("mode", mode, targets_lib.MODES)
    _check_choice("model", model, targets_lib.MODELS)
    _check_choice("method", method, METHODS)
    names, indices = resolve_set(ctx.store, attributes)
    if model == "joint" and ctx.store.joint is None:
        raise GenerateError("this fitted model has no joint model; use --model=cgmm or rerun fit-cgmm")
    seeds = _seeds(None, num, seed, "generate")
    settings = settings_from_config(ctx.config, method)
    if steps is not None:
        settings = settings.replace({"steps": steps}, "--steps")
    strength = _default_strength(ctx) if strength is None else _strength(strength, "--strength")
    items = [Item(0, names, indices, s, mode, model, method, settings, strength) for s in seeds]
    default = f"{_slug('-'.join(names))}_{method}" + (f"_{model}_{mode}" if method == "invert" else "") + f"_s{seed}"
    directory = ctx.workdir / GENERATE_DIR / _check_name(name or default)
    rendered = render_items(ctx, items, verbose=verbose, label=", ".join(names))
    records = evaluate_items(ctx, items, rendered)
    for i, r in enumerate(records):
        r["image"] = f"images/{i:03d}.png"
    outputs = _write_images(directory, rendered["images"], cols=min(len(items), 8))
    summary = dict(attributes=names, method=method, model=model, mode=mode, strength=strength, seeds=seeds,
                   **metrics.summarize_set(records, rendered["images"]))
    outputs.append(files.write_json(directory / "results.json", records))
    outputs.append(files.write_json(directory / "summary.json", summary))
    text = _set_line(summary, f"{', '.join(names)} ({method}" + (f", {model}, {mode})" if method == "invert" else ")"))
    return dict(text=text, outputs=outputs, records=records, summary=summary, directory=directory)


@dataclasses.dataclass(frozen=True)
class _Pick:
    """outputs[key] (hashable, so objectives built alike share compiled programs)."""

    key: str

    def __call__(self, outputs):
        return outputs[self.key]


def _features_of_layers(layers: tuple[str, ...]):
    def method(model, images):
        out = model.activations(images, layers)
        return {layer: out[layer].reshape(out[layer].shape[0], -1) for layer in layers}

    return method


def resolve_layers(ctx: Context, layers) -> tuple[str, ...]:
    """--layers for a reconstruction: comma-separated taps (default: the fitted layer), validated."""
    if layers is None or (isinstance(layers, str) and not layers.strip()):
        return (ctx.store.layer,)
    names = [n.strip() for n in (layers.split(",") if isinstance(layers, str) else layers)]
    if any(not n for n in names) or len(set(names)) != len(names):
        raise GenerateError(f"--layers={layers!r}: give distinct, comma-separated layer names")
    model = ctx.clf.setup.model
    for n in names:
        try:
            fit_lib.check_layer(model, n)
        except fit_lib.FitConfigError as e:
            raise GenerateError(f"--layers: {e}") from None
    return tuple(names)


def _layers_model(ctx: Context, layers: tuple[str, ...]):
    """(apply_fn, state) images -> {layer: (B, D_layer)}, cached so repeated calls reuse compilations."""
    models = ctx.clf.layer_models
    if layers not in models:
        models[layers] = render.nnx_model_fn(ctx.clf.setup.model, _features_of_layers(layers))
    return models[layers]


def _reconstruct(ctx: Context, image_path, num, steps, seed, name, verbose, layers=None) -> dict:
    """Invert the true activations of a real image at `layers` (default: the fitted layer); with
    several layers the objective is the mean of their normalised feature errors."""
    from jaxface.data import imageio
    from jaxface.invert import objectives as obj_lib

    layers = resolve_layers(ctx, layers)
    path = pathlib.Path(str(image_path))
    try:
        decoded = imageio.decode_image(str(path))
    except imageio.ImageDecodeError as e:
        raise GenerateError(f"--reconstruct: {e}") from None
    size = ctx.clf.input_size
    image = imageio.center_crop_resize(decoded, size).astype(np.float32) / 255.0
    seeds = _seeds(None, 1 if num is None else num, seed, "reconstruct")
    settings = settings_from_config(ctx.config, "invert")
    if steps is not None:
        settings = settings.replace({"steps": steps}, "--steps")
    true_feats, true_probs, true_detected = classify_images(ctx.clf, image[None])
    model = _layers_model(ctx, layers)
    true_layers = jax.tree.map(np.asarray, jax.jit(model[0])(model[1], jnp.asarray(image[None])))
    objective = obj_lib.Objective(())
    for layer in layers:
        objective = objective + (1.0 / len(layers)) * obj_lib.feature_match(
            layer, select=_Pick(layer), name=f"feature_{layer}")
    objective = objective + obj_lib.regularizers(settings.tv_weight, settings.l2_weight, settings.range_weight)
    images, objective_values, layer_errors = [], [], []
    for start in range(0, len(seeds), settings.max_batch):
        chunk = seeds[start : start + settings.max_batch]
        kwargs = _render_kwargs(ctx, settings, chunk, _progress_printer("reconstruct", settings.steps, verbose))
        for k in ("tv_weight", "l2_weight", "range_weight"):
            kwargs.pop(k)
        targets = {layer: jnp.asarray(np.repeat(true_layers[layer], len(chunk), axis=0)) for layer in layers}
        try:
            result = render.optimize(model, objective, targets, **kwargs)
        except (render.RenderError, ValueError) as e:
            raise GenerateError(f"cannot run the reconstruction with these settings: {e}") from None
        images.append(result.images)
        objective_values.append(result.objective)
        layer_errors.append(np.stack([result.terms[f"feature_{layer}"] for layer in layers], axis=1))
    objective, layer_errors = np.concatenate(objective_values), np.concatenate(layer_errors)
    images = np.concatenate(images)
    targets = np.repeat(true_feats, len(seeds), axis=0)
    feats, probs, detected = classify_images(ctx.clf, images)
    errors = metrics.feature_errors(feats, targets)
    schema = ctx.store.schema
    in_input = [i for i in range(schema.num_attributes) if true_detected[0, i]]
    directory = ctx.workdir / GENERATE_DIR / _check_name(name or f"reconstruct_{_slug(path.stem)}_s{seed}")
    records = []
    for row, s in enumerate(seeds):
        records.append(dict(
            image=f"images/{row:03d}.png", input=str(path), attributes=[schema.attribute_names[i] for i in in_input],
            seed=s, settings=dict(method="reconstruct", layer=ctx.store.layer, layers=list(layers),
                                  **settings.as_dict()),
            objective=float(objective[row]), feature_error=float(errors[row]),
            layer_feature_errors={layer: float(layer_errors[row, j]) for j, layer in enumerate(layers)},
            attribute_probs={schema.attribute_names[i]: float(probs[row, i]) for i in in_input},
            input_attribute_probs={schema.attribute_names[i]: float(true_probs[0, i]) for i in in_input},
            hit_rate=float(np.mean(detected[row, in_input])) if in_input else None,
            head_agreement=float(np.mean([
                np.array_equal(detected[row, list(idx)], true_detected[0, list(idx)])
                for idx in schema.head_attribute_indices])),
        ))
    side = np.concatenate([image[None], images])
    outputs = [files.save_image(directory / "reconstruction.png", files.image_grid(side, cols=len(side)))]
    outputs.append(files.save_image(directory / "input.png", image))
    for row, img in enumerate(images):
        outputs.append(files.save_image(directory / "images" / f"{row:03d}.png", img))
    outputs.append(files.write_json(directory / "results.json", records))
    text = (f"reconstruction of {path} from {', '.join(layers)}: feature error at {ctx.store.layer} "
            + ", ".join(f"{e:.3f}" for e in errors)
            + ("".join(f"; at {layer} " + ", ".join(f"{e:.3f}" for e in layer_errors[:, j])
                       for j, layer in enumerate(layers) if layer != ctx.store.layer))
            + f"; classifier heads agreeing with the input: "
            + ", ".join(f"{r['head_agreement']:.2f}" for r in records)
            + f"\n  side by side (input, reconstruction): {directory / 'reconstruction.png'}")
    return dict(text=text, outputs=outputs, records=records, directory=directory)


def read_sweep(ctx: Context, sweep_path, seed: int, steps: int | None) -> tuple[list[Item], list[dict]]:
    """Parse and validate every entry before anything runs."""
    path = pathlib.Path(str(sweep_path))
    try:
        entries = json.loads(path.read_text())
    except OSError as e:
        raise GenerateError(f"--sweep: cannot read {path}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GenerateError(f"--sweep: {path} is not valid JSON ({e})") from None
    if not isinstance(entries, list) or not entries:
        raise GenerateError(f"--sweep: {path} must hold a non-empty JSON list of entries like "
                            '{"attributes": "Male, Smiling", "seeds": [0, 1]}')
    items, sets = [], []
    default_strength = _default_strength(ctx)
    for n, entry in enumerate(entries):
        where = f"sweep entry {n}"
        if not isinstance(entry, dict):
            raise GenerateError(f"{where}: expected an object, got {entry!r}")
        unknown = sorted(set(entry) - set(SWEEP_KEYS))
        if unknown:
            raise GenerateError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid: {', '.join(SWEEP_KEYS)}")
        method = _check_choice("method", entry.get("method", "invert"), METHODS)
        mode = _check_choice("mode", entry.get("mode", "mean"), targets_lib.MODES)
        model = _check_choice("model", entry.get("model", "cgmm"), targets_lib.MODELS)
        if model == "joint" and ctx.store.joint is None:
            raise GenerateError(f"{where}: this fitted model has no joint model")
        try:
            names, indices = resolve_set(ctx.store, entry.get("attributes"))
        except GenerateError as e:
            raise GenerateError(f"{where}: {e}") from None
        seeds = _seeds(entry.get("seeds"), entry.get("num"), entry.get("seed", seed), where)
        settings = settings_from_config(ctx.config, method)
        overrides = dict(entry.get("settings") or {})
        if not isinstance(entry.get("settings") or {}, dict):
            raise GenerateError(f"{where}: settings must be an object of inversion settings")
        if "steps" in entry:
            overrides["steps"] = entry["steps"]
        elif steps is not None and "steps" not in overrides:
            overrides["steps"] = steps
        settings = settings.replace(overrides, f"{where} settings")
        label = str(entry.get("label") or f"{n:03d}_{_slug('-'.join(names))}_{method}"
                    + (f"_{model}_{mode}" if method == "invert" else ""))
        _check_name(label)
        strength = _strength(entry.get("strength", default_strength), where)
        sets.append(dict(index=n, label=label, attributes=names, method=method, model=model, mode=mode,
                         strength=strength, seeds=seeds, settings=settings.as_dict()))
        items += [Item(n, names, indices, s, mode, model, method, settings, strength) for s in seeds]
    labels = [s["label"] for s in sets]
    if len(set(labels)) != len(labels):
        raise GenerateError("--sweep: entry labels must be unique; got " + ", ".join(labels))
    return items, sets


def _sweep(ctx: Context, sweep_path, seed, steps, name, verbose) -> dict:
    items, sets = read_sweep(ctx, sweep_path, seed, steps)
    directory = ctx.workdir / GENERATE_DIR / _check_name(name or f"sweep_{_slug(pathlib.Path(str(sweep_path)).stem)}")
    groups = collections.OrderedDict()
    for row, item in enumerate(items):
        groups.setdefault((item.method, item.settings), []).append(row)
    images = [None] * len(items)
    records: list = [None] * len(items)
    calls = 0
    for g, ((method, settings), rows) in enumerate(groups.items()):
        group_items = [items[r] for r in rows]
        rendered = render_items(ctx, group_items, verbose=verbose, label=f"group {g + 1}/{len(groups)} ({method})")
        calls += -(-len(rows) // settings.max_batch)
        for j, (r, rec) in enumerate(zip(rows, evaluate_items(ctx, group_items, rendered))):
            images[r], records[r] = rendered["images"][j], rec
    outputs, summaries, lines = [], [], []
    for info in sets:
        rows = [r for r, item in enumerate(items) if item.set_index == info["index"]]
        set_images = np.stack([images[r] for r in rows])
        for k, r in enumerate(rows):
            records[r]["image"] = f"{info['label']}/images/{k:03d}.png"
        # only the grids are listed: a sweep writes hundreds of images (results.json names them all)
        outputs += _write_images(directory / info["label"], set_images, cols=min(len(rows), 8))[:1]
        summary = dict(label=info["label"], attributes=info["attributes"], method=info["method"],
                       model=info["model"], mode=info["mode"], strength=info["strength"], seeds=info["seeds"],
                       **metrics.summarize_set([records[r] for r in rows], set_images),
                       settings=info["settings"])
        summaries.append(summary)
        lines.append(_set_line(summary, info["label"]))
    outputs.append(files.write_json(directory / "results.json", records))
    outputs.append(files.write_json(directory / "summary.json", summaries))
    outputs.append(files.write_text(directory / "summary.csv", _summary_csv(summaries)))
    text = "\n".join([f"sweep of {len(sets)} set(s), {len(items)} image(s) in {len(groups)} settings group(s), "
                      f"{calls} batched call(s)"] + lines)
    return dict(text=text, outputs=outputs, records=records, summary=summaries, directory=directory,
                groups=len(groups), calls=calls)


def _summary_csv(summaries: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["label", "attributes", "method", "model", "mode", "num_images", "mean_hit_rate",
                     "all_detected_rate", "mean_feature_error", "diversity"])
    for s in summaries:
        writer.writerow([s["label"], "; ".join(s["attributes"]), s["method"], s["model"], s["mode"],
                         s["num_images"], f"{s['mean_hit_rate']:.4f}", f"{s['all_detected_rate']:.4f}",
                         "" if s["mean_feature_error"] is None else f"{s['mean_feature_error']:.4f}",
                         "" if not math.isfinite(s["diversity"]) else f"{s['diversity']:.5f}"])
    return buf.getvalue()


# ------------------------------------------------------------------------------------- command
def generate_command(
    workdir,
    *,
    attributes: str | None = None,
    num: int | None = None,
    mode: str = "mean",
    model: str = "cgmm",
    method: str = "invert",
    steps: int | None = None,
    seed: int = 0,
    reconstruct: str | None = None,
    sweep: str | None = None,
    name: str | None = None,
    strength: float | None = None,
    layers: str | Sequence[str] | None = None,
    verbose: bool = True,
) -> dict:
    """`jaxface generate`: returns {'text', 'outputs', 'records', 'directory', ...}.

    Exactly one of attributes / reconstruct / sweep. num: images (default 8; 1 for reconstruct).
    steps overrides the configured number of optimisation steps; strength (default: the config's
    targets.strength) scales the target's departure from the mean activation (see `amplify`).
    layers (reconstruct only): the taps whose true activations are inverted (default: the fitted layer).
    """
    chosen = [k for k, v in (("attributes", attributes), ("reconstruct", reconstruct), ("sweep", sweep))
              if v is not None]
    if len(chosen) > 1:
        raise GenerateError(f"give one of --attributes, --reconstruct, --sweep (got {', '.join(chosen)})")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1):
        raise GenerateError(f"--steps must be a positive integer, got {steps!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise GenerateError(f"--seed must be an integer in [0, {MAX_SEED}], got {seed!r}")
    if name is not None:
        _check_name(name)
    if layers is not None and reconstruct is None:
        raise GenerateError("--layers applies to --reconstruct only (generation uses the fitted layer)")
    ctx = load_context(workdir)
    with jax.set_mesh(ctx.clf.setup.mesh):
        if reconstruct is not None:
            return _reconstruct(ctx, reconstruct, num, steps, seed, name, verbose, layers)
        if sweep is not None:
            return _sweep(ctx, sweep, seed, steps, name, verbose)
        return _generate(ctx, attributes, num, mode, model, method, steps, seed, name, strength, verbose)
