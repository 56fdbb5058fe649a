"""`jaxface fit-cgmm`: stream a trained classifier's activations over a dataset and fit the target models.

Three passes over data, each one batch at a time on the mesh (nothing larger than a batch of
activations is ever held):
  1. the statistics split (train): per-attribute diagonal Gaussians (stats.py), the joint
     linear-Gaussian model (joint.py), the dataset mean image (the class-visualisation start) and
     the image prior of param='pca' (the principal subspace of the first `prior_examples` images);
  2. the same split again: the small per-image data of equation (3) (weights.py), which needs the
     attribute means from pass 1 (P = X mu^T is N x K, not N x D);
  3. the held-out split (val): the same per-image data, on which lambda is chosen; also the held-out
     error of the joint model's prediction, so both target models are compared on the same images.
The SGD grid (the report's procedure, vmapped over lambdas and learning rates, one compiled call) and
the exact ridge solution are both computed; their gap is reported.

Writes WORKDIR/cgmm/: cgmm.npz + cgmm.json (store.py; the metadata carries layer, shape, schema,
checkpoint, counts, exclusions, the chosen lambda and the fit losses), config.json (the
config, whose inversion settings `jaxface generate` uses), mean_image.png and fit_summary.txt.
"""
from __future__ import annotations

import collections
import functools
import json
import math
import pathlib
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxface import faults, files, parallel
from jaxface.cgmm import joint as joint_lib
from jaxface.cgmm import stats as stats_lib
from jaxface.cgmm import store as store_lib
from jaxface.cgmm import weights as weights_lib
from jaxface.cgmm import image_prior as image_prior_lib

CGMM_DIR = "cgmm"
CONFIG_FILE = "config.json"
MEAN_IMAGE_FILE = "mean_image.png"
SUMMARY_FILE = "fit_summary.txt"
WEIGHT_CHOICES = ("exact", "sgd")


class FitConfigError(ValueError):
    """A fit-cgmm config or workdir that cannot produce a fitted model."""


# ------------------------------------------------------------------------------------ classifier
def classifier_workdir(config, workdir) -> pathlib.Path:
    """generate.classifier_workdir, or the workdir itself when it is empty."""
    path = str(config.generate.get("classifier_workdir", "") or "")
    return files.as_path(path) if path else files.as_path(workdir)


_SETUPS: "collections.OrderedDict[tuple, Any]" = collections.OrderedDict()


def load_classifier(path: pathlib.Path, *, local: bool = False):
    """trainer.Setup of the latest checkpoint in `path`; a clear error when there is none. local: on this
    process's devices only (parallel.local_mesh), for work that each process does on its own share.

    The last two are cached per (directory, checkpoint step): building and restoring the model costs
    seconds, and the jitted functions built on a cached model are reused by later calls.
    """
    path = files.as_path(path)
    path = path.absolute() if files.is_local(path) else path
    key = (str(path), checkpoint_step(path), bool(local))
    if key[1] is not None and key in _SETUPS:
        _SETUPS.move_to_end(key)
        return _SETUPS[key]
    setup = _load_classifier(path, local)
    if key[1] is not None:
        _SETUPS[key] = setup
        while len(_SETUPS) > 2:
            _SETUPS.popitem(last=False)
    return setup


def _load_classifier(path: pathlib.Path, local: bool = False):
    from jaxface.train import checkpoint, trainer

    if not (path / "config.json").is_file():
        raise FitConfigError(
            f"no trained classifier in {path}: {path / 'config.json'} is missing. Train one first "
            "(`jaxface train --config=configs/attributes/synthfaces_tiny.py --workdir=W`) or set "
            "--config.generate.classifier_workdir"
        )
    try:
        setup = trainer.load_for_inference(path, mesh=parallel.local_mesh() if local else None)
    except checkpoint.CheckpointError as e:
        raise FitConfigError(f"cannot load the classifier in {path}: {e}") from None
    if getattr(setup.task, "schema", None) is None or not hasattr(setup.model, "activations"):
        raise FitConfigError(
            f"{path} holds a {setup.config.get('task', '?')!r} model; the cGMM needs an attribute "
            "classifier with named activations (task 'attributes', model vggface)"
        )
    return setup


def checkpoint_step(path: pathlib.Path) -> int | None:
    """The latest checkpoint step in WORKDIR/checkpoints (None when there is none), from the directory
    names alone (opening an orbax manager here would be slow and may tidy the directory)."""
    directory = files.as_path(path) / "checkpoints"
    steps = [int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit()] \
        if directory.is_dir() else []
    return max(steps) if steps else None


def check_layer_name(layer: str) -> None:
    """'heads' and unknown names are refused with the list of valid layers."""
    from jaxface.models import vggface

    valid = [n for n in vggface.LAYER_NAMES if n != "heads"]
    if layer not in valid:
        raise FitConfigError(f"unknown or unusable layer {layer!r} for the cGMM; valid: {', '.join(valid)}")


def check_layer(model, layer: str) -> tuple[int, ...]:
    """Per-example shape of a tap (after check_layer_name)."""
    check_layer_name(layer)
    return tuple(int(s) for s in model.layer_output_shape(layer))


def make_tap(model, layers: tuple[str, ...]):
    """Jitted (state, images) -> {layer: (B, D) flattened activations, 'heads': [...] if asked}.

    Returns (fn, state); the state is an argument (not baked into the program as constants). Cached
    per model and layers, so a cached classifier keeps its compiled tap.
    """
    return _make_tap(model, tuple(layers))


@functools.lru_cache(maxsize=8)
def _make_tap(model, layers: tuple[str, ...]):
    graphdef, state = nnx.split(model)

    @jax.jit
    def tap(state, images):
        out = nnx.merge(graphdef, state).activations(images, layers)
        return {k: (v if k == "heads" else v.reshape(v.shape[0], -1)) for k, v in out.items()}

    return tap, state


# ------------------------------------------------------------------------------------------- data
class FirstN:
    """The first `n` records of a random-access source (quick fits on part of a split)."""

    def __init__(self, source, n: int):
        self.source = source
        self.n = min(int(n), len(source))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index):
        index = int(index)
        if not -self.n <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} records")
        return self.source[index % self.n]

    def _getitems(self, indices):
        if hasattr(self.source, "_getitems"):
            return self.source._getitems(indices)
        return [self.source[int(i)] for i in indices]


def split_source(data_cfg, split: str, max_examples: int):
    from jaxface.data import pipeline

    source = pipeline.build_source(data_cfg, split)
    if max_examples and max_examples > 0 and max_examples < len(source):
        source = FirstN(source, max_examples)
    if len(source) == 0:
        raise FitConfigError(f"the {split!r} split is empty: nothing to fit on")
    return source


def labels_of(data_cfg, split: str, source) -> tuple[np.ndarray, np.ndarray]:
    from jaxface.data import pipeline

    if isinstance(source, FirstN):
        attrs, mask = pipeline.attribute_table(source.source)
        return attrs[: len(source)], mask[: len(source)]
    return pipeline.attribute_table(source)


def batch_config(classifier_config, batch_size: int):
    cfg = ml_collections.ConfigDict(classifier_config.to_dict())
    cfg.eval_batch_size = int(batch_size)
    return cfg


def activation_batches(setup, cfg, split: str, source, tap, tap_state, layer: str) -> Iterator[dict]:
    """One ordered pass: dicts with acts (B, D), attributes, attribute_mask, valid, index, image."""
    from jaxface.data import pipeline

    for batch in pipeline.batches(cfg, split, setup.mesh, source=source, training=False):
        out = tap(tap_state, batch["image"])
        yield dict(
            acts=out[layer], attributes=batch["attributes"], attribute_mask=batch["attribute_mask"],
            valid=batch["valid"], index=batch.get("index"), image=batch["image"],
        )
        faults.hit("fit_batch")


def _host_rows(array) -> np.ndarray:
    """A batch-sharded global array as one host numpy array (gathered across processes if needed)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(array)


@jax.jit
def _image_sum(images, valid):
    return jnp.sum(images * valid.astype(images.dtype)[:, None, None, None], axis=0), jnp.sum(valid)


@jax.jit
def _joint_sq_error(coef, bias, acts, attributes, mask, impute_rate, valid):
    filled = jnp.where(mask, attributes, impute_rate[None, :])
    pred = jnp.matmul(filled, coef, precision=stats_lib.HIGHEST) + bias
    sq = jnp.sum((acts - pred) ** 2, axis=1)
    return jnp.sum(jnp.where(valid, sq, 0.0)), jnp.sum(valid)


# ------------------------------------------------------------------------------------------ fit
def _settings(config) -> dict:
    g = config.generate
    choice = str(g.get("weights", "exact"))
    if choice not in WEIGHT_CHOICES:
        raise FitConfigError(f"generate.weights={choice!r}; valid: {', '.join(WEIGHT_CHOICES)}")
    lambdas = tuple(float(v) for v in g.get("lambdas", (0.0,)))
    if not lambdas or any(not math.isfinite(v) or v < 0 for v in lambdas):
        raise FitConfigError(f"generate.lambdas must be a non-empty list of values >= 0, got {lambdas}")
    lrs = tuple(float(v) for v in (g.get("lrs", ()) or ()))
    if any(not v > 0 for v in lrs):
        raise FitConfigError(f"generate.lrs must be positive learning rates (or empty for automatic), got {lrs}")
    for key in ("batch_size", "min_count", "sgd_steps", "sgd_batch_size"):
        if int(g.get(key)) < 1:
            raise FitConfigError(f"generate.{key} must be at least 1, got {g.get(key)}")
    if int(g.get("prior_components", 0) or 0) < 0:
        raise FitConfigError(f"generate.prior_components must be >= 0 (0: no image prior), got {g.prior_components}")
    if int(g.get("prior_components", 0) or 0) > 0 and int(g.get("prior_examples", 0) or 0) < 2:
        raise FitConfigError(
            f"generate.prior_examples must be at least 2 for an image prior, got {g.get('prior_examples')}")
    if float(g.get("joint_lam", 0.0)) < 0:
        raise FitConfigError(f"generate.joint_lam must be >= 0, got {g.joint_lam}")
    return dict(
        layer=str(g.layer), split=str(g.get("split", "train")),
        heldout_split=str(g.get("heldout_split", "val")),
        max_examples=int(g.get("max_examples", 0) or 0),
        max_heldout_examples=int(g.get("max_heldout_examples", 0) or 0),
        batch_size=int(g.batch_size), min_count=int(g.min_count),
        subset_size=int(g.get("subset_size", 0) or 0), subset_seed=int(g.get("subset_seed", 0)),
        lambdas=lambdas, lrs=lrs, sgd_steps=int(g.sgd_steps), sgd_batch_size=int(g.sgd_batch_size),
        weights=choice, joint_lam=float(g.get("joint_lam", joint_lib.DEFAULT_JOINT_LAMBDA)),
        prior_components=int(g.get("prior_components", 0) or 0),
        prior_examples=int(g.get("prior_examples", 0) or 0),
    )


def fit_cgmm(config, workdir) -> dict:
    """Fit everything (see the module docstring); returns store, mean image and a report dict."""
    s = _settings(config)
    check_layer_name(s["layer"])
    workdir = files.as_path(workdir)
    cls_dir = classifier_workdir(config, workdir)
    setup = load_classifier(cls_dir)
    try:
        parallel.check_batch_size(s["batch_size"], setup.mesh)
    except ValueError as e:
        raise FitConfigError(f"generate.batch_size: {e}") from None
    layer_shape = check_layer(setup.model, s["layer"])
    schema = setup.task.schema
    k, d = schema.num_attributes, int(math.prod(layer_shape))
    data_cfg = setup.config.data
    cfg = batch_config(setup.config, s["batch_size"])
    tap, tap_state = make_tap(setup.model, (s["layer"],))
    timings = {}

    with jax.set_mesh(setup.mesh):
        train_source = split_source(data_cfg, s["split"], s["max_examples"])
        subset = None
        if s["subset_size"] > 0:
            attrs, mask = labels_of(data_cfg, s["split"], train_source)
            subset = stats_lib.SubsetSelection.from_labels(
                attrs, mask, np.arange(len(train_source)), s["subset_size"], s["subset_seed"])

        # pass 1: statistics, joint sums, mean image
        start = time.perf_counter()
        acc = stats_lib.AttributeStats(k, d, subset=subset, mesh=setup.mesh)
        joint_acc = joint_lib.JointStats(k, d, mesh=setup.mesh)
        state, joint_state = acc.init(), joint_acc.init()
        image_sum, image_count = 0.0, 0.0
        prior_images, prior_labels, prior_masks, prior_count = [], [], [], 0
        for b in activation_batches(setup, cfg, s["split"], train_source, tap, tap_state, s["layer"]):
            if subset is not None and b["index"] is None:
                raise FitConfigError("generate.subset_size needs example indices, which this data source lacks")
            state = acc.update(state, b["acts"], b["attributes"], b["attribute_mask"],
                               example_ids=b["index"] if subset is not None else None, valid=b["valid"])
            joint_state = joint_acc.update(joint_state, b["acts"], b["attributes"], b["attribute_mask"],
                                           valid=b["valid"])
            total, count = _image_sum(b["image"], b["valid"])
            image_sum, image_count = image_sum + total, image_count + count
            if prior_count < s["prior_examples"] and s["prior_components"] > 0:
                valid, room = _host_rows(b["valid"]), s["prior_examples"] - prior_count
                prior_images.append(_host_rows(b["image"])[valid][:room])
                prior_labels.append(_host_rows(b["attributes"])[valid][:room])
                prior_masks.append(_host_rows(b["attribute_mask"])[valid][:room])
                prior_count += len(prior_images[-1])
        stats = acc.finalize(state, min_count=s["min_count"])
        joint = joint_acc.finalize(joint_state, lam=s["joint_lam"])
        mean_image = np.asarray(image_sum) / max(float(image_count), 1.0)
        timings["statistics_s"] = time.perf_counter() - start
        image_prior, prior_report, image_joint = None, None, None
        if s["prior_components"] > 0:
            start = time.perf_counter()
            try:
                images = np.concatenate(prior_images)
                image_prior, prior_report = image_prior_lib.fit_image_prior(images, s["prior_components"])
                image_joint = image_prior_lib.fit_conditional_prior(
                    image_prior, images, np.concatenate(prior_labels), np.concatenate(prior_masks),
                    lam=s["joint_lam"])
                # How much of the pixel variance in the subspace the attributes explain.
                var = np.asarray(image_prior.std, np.float64) ** 2
                prior_report["conditional_explained"] = float(1.0 - np.sum(var * image_joint.resid_var) / np.sum(var))
            except image_prior_lib.ImagePriorError as e:
                raise FitConfigError(f"cannot fit the image prior: {e}") from None
            timings["image_prior_s"] = time.perf_counter() - start
        if not stats["included"].any():
            raise FitConfigError(
                f"every attribute has fewer than min_count={s['min_count']} examples in the "
                f"{s['split']!r} split: lower generate.min_count or use more data")

        # passes 2 and 3: the per-image data of eq. (3) on both splits
        start = time.perf_counter()
        mu = jnp.asarray(stats["mean"])

        def weight_data(split, source, with_joint: bool):
            parts, joint_sq, joint_n = [], 0.0, 0.0
            for b in activation_batches(setup, cfg, split, source, tap, tap_state, s["layer"]):
                # padding rows have no attributes, so |C_i| = 0 drops them from (3)
                part = weights_lib.prepare_weight_data(
                    mu, b["acts"], b["attributes"], b["attribute_mask"], stats["included"])
                parts.append(jax.tree.map(_host_rows, part))  # every process's rows
                if with_joint:
                    sq, n = _joint_sq_error(
                        jnp.asarray(joint.coef), jnp.asarray(joint.bias), b["acts"],
                        b["attributes"], b["attribute_mask"], jnp.asarray(joint.impute_rate), b["valid"])
                    joint_sq, joint_n = joint_sq + float(sq), joint_n + float(n)
            data = weights_lib.compact(weights_lib.concat_weight_data(parts))
            return data, (joint_sq / max(joint_n, 1.0) if with_joint else None)

        train_data, _ = weight_data(s["split"], train_source, False)
        heldout_source = split_source(data_cfg, s["heldout_split"], s["max_heldout_examples"])
        heldout_data, joint_heldout = weight_data(s["heldout_split"], heldout_source, True)
        timings["weight_data_s"] = time.perf_counter() - start
        if train_data.coeff.shape[0] == 0 or heldout_data.coeff.shape[0] == 0:
            raise FitConfigError("no image has any modelled attribute: cannot fit the weights of eq. (3)")

        # the weights: SGD grid + exact ridge, lambda chosen on the held-out split
        start = time.perf_counter()
        included = stats["included"]
        mean_sq_norm = float(np.mean(np.sum(np.asarray(stats["mean"], np.float64)[included] ** 2, axis=1)))
        lambdas_abs = np.asarray(s["lambdas"], np.float64) * mean_sq_norm
        fit = weights_lib.fit_weights(
            train_data, heldout_data, lambdas_abs.astype(np.float32), s["lrs"] or None,
            steps=s["sgd_steps"], batch_size=s["sgd_batch_size"], key=int(setup.config.seed),
            prefer=s["weights"],
        )
        timings["weights_s"] = time.perf_counter() - start

    lam_index = int(np.argmin(np.abs(np.asarray(fit["lambdas"], np.float64) - fit["chosen_lambda"])))
    gap = sgd_exact_gap(fit, lam_index)
    cgmm_heldout = float(np.asarray(fit["exact_heldout_error"])[lam_index])
    heldout_norm = float(np.sum(heldout_data.sqnorm) / max(heldout_data.coeff.shape[0], 1))
    step = checkpoint_step(cls_dir)
    source_checkpoint = str((cls_dir / "checkpoints" / str(step)).absolute()) if step is not None else str(cls_dir)
    counts = {schema.attribute_names[i]: int(c) for i, c in enumerate(stats["count"])}
    extra = dict(
        classifier_workdir=str(cls_dir.absolute()),
        checkpoint_step=step,
        split=s["split"], heldout_split=s["heldout_split"],
        num_examples=int(stats["total"]), num_heldout_examples=int(heldout_data.coeff.shape[0]),
        positives={schema.attribute_names[i]: int(c) for i, c in enumerate(stats["positives"])},
        subset_size=s["subset_size"],
        lambdas_relative=list(s["lambdas"]), lambda_scale=mean_sq_norm,
        chosen_lambda_relative=float(s["lambdas"][lam_index]),
        sgd_exact_gap=gap,
        heldout_mean_sq_norm=heldout_norm,
        heldout_error=dict(cgmm=cgmm_heldout, joint=joint_heldout,
                           cgmm_relative=cgmm_heldout / heldout_norm, joint_relative=joint_heldout / heldout_norm),
        image_prior=prior_report,
        timings=timings,
    )
    store = store_lib.store_from_fit(
        layer=s["layer"], layer_shape=layer_shape, schema=schema, stats=stats, weight_fit=fit,
        joint=joint, source_checkpoint=source_checkpoint, extra=extra,
        image_prior=image_prior, image_size=int(setup.model.input_size) if image_prior is not None else None,
        image_joint=image_joint,
    )
    return dict(store=store, mean_image=mean_image.astype(np.float32), counts=counts, settings=s,
                fit=fit, extra=extra)


def sgd_exact_gap(fit: dict, lam_index: int) -> dict:
    """SGD vs the exact ridge solution at the chosen lambda (best learning rate on held-out data)."""
    sgd_w = np.asarray(fit["sgd"].weights, np.float64)  # (R, L, K)
    sgd_err = np.asarray(fit["sgd_heldout_error"], np.float64)  # (R, L)
    r = int(np.argmin(np.where(np.isfinite(sgd_err[:, lam_index]), sgd_err[:, lam_index], np.inf)))
    exact_w = np.asarray(fit["exact_weights"], np.float64)[lam_index]
    exact_err = float(np.asarray(fit["exact_heldout_error"], np.float64)[lam_index])
    w = sgd_w[r, lam_index]
    norm = float(np.linalg.norm(exact_w))
    return dict(
        lr=float(np.asarray(fit["lrs"])[r]),
        relative_weight_distance=float(np.linalg.norm(w - exact_w) / norm) if norm > 0 else None,
        heldout_error_sgd=float(sgd_err[r, lam_index]),
        heldout_error_exact=exact_err,
        relative_heldout_excess=float((sgd_err[r, lam_index] - exact_err) / exact_err) if exact_err > 0 else None,
    )


def summary_text(result: dict, directory: pathlib.Path) -> str:
    store, extra, fit = result["store"], result["extra"], result["fit"]
    names = store.schema.attribute_names
    lines = [store.summary()]
    lines.append(f"  classifier: {store.source_checkpoint}")
    lines.append(f"  images: {extra['num_examples']} ({extra['split']}), "
                 f"{extra['num_heldout_examples']} with attributes ({extra['heldout_split']}, held out)")
    lines.append("  examples per attribute: " + ", ".join(
        f"{n} {int(c)}" for n, c in zip(names, store.count)))
    if store.excluded:
        lines.append(f"  EXCLUDED (fewer than min_count={store.min_count} examples): "
                     + ", ".join(f"{n} ({int(store.count[store.schema.index(n)])})" for n in store.excluded_names))
    lam_rel = extra["lambdas_relative"]
    heldout = np.asarray(fit["exact_heldout_error"], np.float64) / extra["heldout_mean_sq_norm"]
    lines.append("  held-out error of eq. (3) / mean ||phi||^2, per lambda (in units of mean ||mu_i||^2): " + ", ".join(
        f"{l:g}: {e:.4f}" for l, e in zip(lam_rel, heldout)))
    lines.append(f"  chosen lambda: {extra['chosen_lambda_relative']:g} relative = {store.chosen_lambda:.4g} "
                 f"(weights: {fit['method']})")
    gap = extra["sgd_exact_gap"]
    if gap["relative_weight_distance"] is not None:
        lines.append(
            f"  SGD vs exact ridge at that lambda: |w_sgd - w_exact| / |w_exact| = "
            f"{gap['relative_weight_distance']:.4f}, held-out error excess "
            f"{100 * (gap['relative_heldout_excess'] or 0.0):.3f}% (lr {gap['lr']:.3g})")
    err = extra["heldout_error"]
    lines.append(f"  held-out ||phi - target||^2 / ||phi||^2: cGMM eq. (4) {err['cgmm_relative']:.4f}, "
                 f"joint model {err['joint_relative']:.4f}")
    w = store.weights[store.included]
    lines.append(f"  weights: min {w.min():.3f}, max {w.max():.3f}")
    prior = extra.get("image_prior")
    if prior:
        lines.append(f"  image prior (param='pca'): {prior['components']} components of {prior['num_images']} "
                     f"images explain {100 * prior['explained_variance']:.1f}% of the pixel variance"
                     + (f"; the attributes explain {100 * prior['conditional_explained']:.1f}% of their "
                        "subspace's pixel variance (conditional prior)" if "conditional_explained" in prior else ""))
    lines.append(f"  written to {directory}")
    return "\n".join(lines)


def fit_cgmm_command(config, workdir) -> dict:
    """`jaxface fit-cgmm`: fit and write WORKDIR/cgmm/; returns {'text', 'outputs', 'store'}."""
    if "generate" not in config:
        raise FitConfigError(
            "the config has no 'generate' section: use a generation config such as "
            "configs/generate/synthfaces_tiny.py")
    workdir = files.as_path(workdir)
    result = fit_cgmm(config, workdir)
    directory = workdir / CGMM_DIR
    outputs = []
    text = summary_text(result, directory)
    with files.ctrl_c_deferred(f"writing {directory}"):  # the store's files change together or not at all
        if parallel.is_main_process():
            written = store_lib.save_cgmm(directory, result["store"])
            outputs += [files.as_path(written["arrays"]), files.as_path(written["metadata"])]
        outputs.append(files.write_text(directory / CONFIG_FILE, config.to_json_best_effort(indent=2)))
        outputs.append(files.save_image(directory / MEAN_IMAGE_FILE, result["mean_image"]))
        outputs.append(files.write_text(directory / SUMMARY_FILE, text + "\n"))
    parallel.barrier("fit-cgmm written")  # the other processes may read the fitted model next
    return dict(text=text, outputs=outputs, store=result["store"])


def load_generate_config(workdir) -> ml_collections.ConfigDict:
    """The config saved by fit-cgmm (W/cgmm/config.json)."""
    path = files.as_path(workdir) / CGMM_DIR / CONFIG_FILE
    if not path.is_file():
        raise store_lib.CGMMStoreError(
            f"no fitted cGMM in {files.as_path(workdir)}: {path} is missing; run "
            "`jaxface fit-cgmm --config=configs/generate/synthfaces_tiny.py --workdir=W` first")
    try:
        return ml_collections.ConfigDict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError) as e:
        raise store_lib.CGMMStoreError(f"cannot read {path}: {e}; rerun fit-cgmm") from None
