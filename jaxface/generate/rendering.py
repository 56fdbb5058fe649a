"""Rendering items through the inversion library and scoring the images with the classifier."""
from __future__ import annotations

import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxface import parallel
from jaxface.cgmm import fit as fit_lib
from jaxface.evaluate import generation as metrics
from jaxface.generate import starts
from jaxface.generate.classifier import classify_images, classify_targets
from jaxface.generate.settings import GenerateError, Settings
from jaxface.generate.targets import Context, Item, head_targets, item_targets
from jaxface.invert import objectives as obj_lib
from jaxface.invert import render


# Fixed base key: per-image randomness comes from the image's seed, folded in as its item id.
_RENDER_KEY = 0


# ------------------------------------------------------------------------------------ rendering
def render_kwargs(ctx: Context, settings: Settings, seeds: Sequence[int], progress) -> dict:
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


def progress_printer(label: str, total: int, verbose: bool):
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
    images, objective, targets = [], [], []
    for start in range(0, len(items), settings.max_batch):
        chunk = list(items[start : start + settings.max_batch])
        seeds = [i.seed for i in chunk]
        tag = f"{label or method} [{start + 1}-{start + len(chunk)} of {len(items)}]"
        kwargs = render_kwargs(ctx, settings, seeds, progress_printer(tag, settings.steps, verbose))
        start_images, prior_targets = starts.item_starts(ctx, settings, chunk)
        if start_images is not None:
            kwargs["init_image"] = start_images
        extra = {}
        if prior_targets:  # a per-item centre (the conditional prior, an edit's exemplar) replaces the global one
            kwargs["prior_weight"] = 0.0
            extra = dict(extra_objective=settings.prior_weight * obj_lib.coefficient_prior(
                mean_key="prior_mean", std_key="prior_std"), extra_targets=prior_targets)
        edit_feats = None
        if any(i.mode == "edit" for i in chunk):
            edit_feats = classify_images(ctx.clf, start_images)[0]
        t = item_targets(ctx, chunk, edit_feats)
        try:
            if method == "invert":
                result = render.invert(ctx.clf.feature_model, jnp.asarray(t), **kwargs, **extra)
                if settings.refine_steps:
                    result = render.invert(ctx.clf.feature_model, jnp.asarray(t), **{
                        **kwargs, "param": "pixels", "pixel_mode": "sigmoid", "image_prior": None, "prior_weight": 0.0,
                        "init_image": result.images, "noise_std": 0.0, "steps": settings.refine_steps})
            elif extra:
                raise GenerateError("a per-item coefficient prior (prior='conditional', or mode 'edit' with "
                                    "param='pca') is for method 'invert'; classvis takes prior 'global'")
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


def chunk_plan(items: Sequence[Item], groups: Sequence[Sequence[int]]) -> list[tuple[int, list[int]]]:
    """(group, rows) per batched call: a group's rows cut into chunks of at most invert.max_batch images,
    and of at most 1/P of the group in a run of P processes, so that every process gets work."""
    count = jax.process_count()
    chunks = []
    for g, rows in enumerate(groups):
        rows = list(rows)
        if rows:
            size = max(1, min(items[rows[0]].settings.max_batch, -(-len(rows) // count)))
            chunks += [(g, rows[i:i + size]) for i in range(0, len(rows), size)]
    return chunks


def render_shared(ctx: Context, items: Sequence[Item], chunks: Sequence[tuple[int, list[int]]], *,
                  verbose: bool = True, on_round=None) -> dict:
    """Renders and scores the chunks of chunk_plan(), split over the processes of a multi-process run:
    -> {row: (image, record)} in every process.

    Chunk c runs in process c mod P on that process's own devices. After each round of P chunks every
    process's images and records are gathered, and on_round(results) runs in every process (a sweep
    keeps them for a resumed run). An image depends only on its own item (its seed fixes its noise,
    jitter and target sample), so how the items are split does not change what is rendered.
    """
    count, me = jax.process_count(), jax.process_index()
    results: dict = {}
    for first in range(0, len(chunks), count):
        mine = chunks[first:first + count]
        local = []
        if me < len(mine):
            g, rows = mine[me]
            chunk_items = [items[r] for r in rows]
            label = (f"group {g + 1} ({chunk_items[0].method}), call {first + me + 1} of {len(chunks)}"
                     if len(chunks) > 1 else ", ".join(chunk_items[0].names))
            rendered = render_items(ctx, chunk_items, verbose=verbose, label=label)
            local = [(r, rendered["images"][j], rec)
                     for j, (r, rec) in enumerate(zip(rows, evaluate_items(ctx, chunk_items, rendered)))]
        done = [entry for part in parallel.gather_objects(local) for entry in part]
        results.update({r: (image, rec) for r, image, rec in done})
        if on_round is not None:
            on_round(done)
    return results
