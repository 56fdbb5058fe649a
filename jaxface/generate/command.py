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

from typing import Sequence

import jax
import numpy as np

from jaxface import files, parallel
from jaxface.cgmm import targets as targets_lib
from jaxface.evaluate import generation as metrics
from jaxface.generate import reconstruct as reconstruct_lib
from jaxface.generate.output import GENERATE_DIR, check_name, set_line, slug, write_images
from jaxface.generate.rendering import chunk_plan, render_shared
from jaxface.generate.settings import GenerateError, MAX_SEED, METHODS, settings_from_config
from jaxface.generate.sweep import run_sweep
from jaxface.generate import starts
from jaxface.generate.targets import (
    MODES, Context, Item, check_choice, check_strength, default_strength, load_context, resolve_set, seeds_for,
)


def generate_set(ctx: Context, attributes, num, mode, model, method, steps, seed, name, strength, verbose,
                 judge=None) -> dict:
    check_choice("mode", mode, MODES)
    check_choice("model", model, targets_lib.MODELS)
    check_choice("method", method, METHODS)
    names, indices = resolve_set(ctx.store, attributes)
    if model == "joint" and ctx.store.joint is None:
        raise GenerateError("this fitted model has no joint model; use --model=cgmm or rerun fit-cgmm")
    seeds = seeds_for(None, num, seed, "generate")
    settings = settings_from_config(ctx.config, method)
    if steps is not None:
        settings = settings.replace({"steps": steps}, "--steps")
    settings = starts.item_settings(settings, mode, None if steps is None else {"steps": steps})
    strength = default_strength(ctx) if strength is None else check_strength(strength, "--strength")
    items = [Item(0, names, indices, s, mode, model, method, settings, strength) for s in seeds]
    default = f"{slug('-'.join(names))}_{method}" + (f"_{model}_{mode}" if method == "invert" else "") + f"_s{seed}"
    directory = ctx.workdir / GENERATE_DIR / check_name(name or default)
    results = render_shared(ctx, items, chunk_plan(items, [range(len(items))]), verbose=verbose)
    images = np.stack([results[i][0] for i in range(len(items))])
    records = [results[i][1] for i in range(len(items))]
    for i, r in enumerate(records):
        r["image"] = f"images/{i:03d}.png"
    outputs = write_images(directory, images, cols=min(len(items), 8))
    summary = dict(attributes=names, method=method, model=model, mode=mode, strength=strength, seeds=seeds,
                   **metrics.summarize_set(records, images))
    if judge is not None:  # a second classifier that no objective used (generate/judge.py)
        from jaxface.generate import judge as judge_lib

        summary.update(judge_lib.judge_set(judge, images, indices), judge_workdir=str(judge.workdir))
    outputs.append(files.write_json(directory / "results.json", records))
    outputs.append(files.write_json(directory / "summary.json", summary))
    text = set_line(summary, f"{', '.join(names)} ({method}" + (f", {model}, {mode})" if method == "invert" else ")"))
    return dict(text=text, outputs=outputs, records=records, summary=summary, directory=directory)


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
    compare: str | None = None,
    name: str | None = None,
    strength: float | None = None,
    layers: str | Sequence[str] | None = None,
    verbose: bool = True,
    judge_workdir: str | None = None,
    detector_workdir: str | None = None,
) -> dict:
    """`jaxface generate`: returns {'text', 'outputs', 'records', 'directory', ...}.

    Exactly one of attributes / reconstruct / sweep. num: images (default 8; 1 for reconstruct).
    steps overrides the configured number of optimisation steps; strength (default: the config's
    targets.strength) scales the target's departure from the mean activation (see `amplify`).
    layers (reconstruct only): the taps whose true activations are inverted (default: the fitted layer).
    compare: a JSON file of methods, sets and seeds run side by side with reference rows (generate/compare.py);
    detector_workdir (compare only): a deepfake detector whose catch rate each row gets.
    judge_workdir (an attribute set, a sweep or a compare): a second attribute classifier whose hit rate, KID and diversity
    the summary adds (generate/judge.py).
    """
    chosen = [k for k, v in (("attributes", attributes), ("reconstruct", reconstruct), ("sweep", sweep),
                             ("compare", compare)) if v is not None]
    if len(chosen) > 1:
        raise GenerateError(f"give one of --attributes, --reconstruct, --sweep, --compare (got {', '.join(chosen)})")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1):
        raise GenerateError(f"--steps must be a positive integer, got {steps!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise GenerateError(f"--seed must be an integer in [0, {MAX_SEED}], got {seed!r}")
    if name is not None:
        check_name(name)
    if detector_workdir and compare is None:
        raise GenerateError("--detector_workdir applies to --compare")
    if judge_workdir and reconstruct is not None:
        raise GenerateError("--judge_workdir applies to --attributes, --sweep and --compare, not to --reconstruct")
    if layers is not None and reconstruct is None:
        raise GenerateError("--layers applies to --reconstruct only (generation uses the fitted layer)")
    ctx = load_context(workdir)
    with jax.set_mesh(ctx.clf.setup.mesh):
        if reconstruct is not None:
            result = reconstruct_lib.reconstruct(ctx, reconstruct, num, steps, seed, name, verbose, layers)
        else:
            judge = None
            if judge_workdir:
                from jaxface.generate import judge as judge_lib

                judge = judge_lib.load_judge(judge_workdir, ctx.store.schema)
            if compare is not None:
                from jaxface.generate.compare import load_detector, run_compare

                detector = load_detector(detector_workdir) if detector_workdir else None
                result = run_compare(ctx, compare, steps, name, verbose, judge, detector)
            elif sweep is not None:
                result = run_sweep(ctx, sweep, seed, steps, name, verbose, judge)
            else:
                result = generate_set(ctx, attributes, num, mode, model, method, steps, seed, name, strength,
                                      verbose, judge)
    parallel.barrier("generate written")
    return result
