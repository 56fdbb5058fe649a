"""`jaxface generate --sweep=SWEEP.json`: many attribute sets and seeds, grouped by static settings into
batched, compiled calls."""
from __future__ import annotations

import collections
import csv
import io
import json
import math
import pathlib

import numpy as np

from jaxface import files
from jaxface.cgmm import targets as targets_lib
from jaxface.evaluate import generation as metrics
from jaxface.generate.output import GENERATE_DIR, check_name, set_line, slug, write_images
from jaxface.generate.rendering import evaluate_items, render_items
from jaxface.generate.settings import GenerateError, METHODS, settings_from_config
from jaxface.generate.targets import (
    Context, Item, check_choice, check_strength, default_strength, resolve_set, seeds_for,
)


SWEEP_KEYS = ("attributes", "seeds", "num", "seed", "mode", "model", "method", "strength", "steps", "settings",
              "label")


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
    strength_default = default_strength(ctx)
    for n, entry in enumerate(entries):
        where = f"sweep entry {n}"
        if not isinstance(entry, dict):
            raise GenerateError(f"{where}: expected an object, got {entry!r}")
        unknown = sorted(set(entry) - set(SWEEP_KEYS))
        if unknown:
            raise GenerateError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid: {', '.join(SWEEP_KEYS)}")
        method = check_choice("method", entry.get("method", "invert"), METHODS)
        mode = check_choice("mode", entry.get("mode", "mean"), targets_lib.MODES)
        model = check_choice("model", entry.get("model", "cgmm"), targets_lib.MODELS)
        if model == "joint" and ctx.store.joint is None:
            raise GenerateError(f"{where}: this fitted model has no joint model")
        try:
            names, indices = resolve_set(ctx.store, entry.get("attributes"))
        except GenerateError as e:
            raise GenerateError(f"{where}: {e}") from None
        seeds = seeds_for(entry.get("seeds"), entry.get("num"), entry.get("seed", seed), where)
        settings = settings_from_config(ctx.config, method)
        overrides = dict(entry.get("settings") or {})
        if not isinstance(entry.get("settings") or {}, dict):
            raise GenerateError(f"{where}: settings must be an object of inversion settings")
        if "steps" in entry:
            overrides["steps"] = entry["steps"]
        elif steps is not None and "steps" not in overrides:
            overrides["steps"] = steps
        settings = settings.replace(overrides, f"{where} settings")
        label = str(entry.get("label") or f"{n:03d}_{slug('-'.join(names))}_{method}"
                    + (f"_{model}_{mode}" if method == "invert" else ""))
        check_name(label)
        strength = check_strength(entry.get("strength", strength_default), where)
        sets.append(dict(index=n, label=label, attributes=names, method=method, model=model, mode=mode,
                         strength=strength, seeds=seeds, settings=settings.as_dict()))
        items += [Item(n, names, indices, s, mode, model, method, settings, strength) for s in seeds]
    labels = [s["label"] for s in sets]
    if len(set(labels)) != len(labels):
        raise GenerateError("--sweep: entry labels must be unique; got " + ", ".join(labels))
    return items, sets


def run_sweep(ctx: Context, sweep_path, seed, steps, name, verbose) -> dict:
    items, sets = read_sweep(ctx, sweep_path, seed, steps)
    directory = ctx.workdir / GENERATE_DIR / check_name(name or f"sweep_{slug(pathlib.Path(str(sweep_path)).stem)}")
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
        outputs += write_images(directory / info["label"], set_images, cols=min(len(rows), 8))[:1]
        summary = dict(label=info["label"], attributes=info["attributes"], method=info["method"],
                       model=info["model"], mode=info["mode"], strength=info["strength"], seeds=info["seeds"],
                       **metrics.summarize_set([records[r] for r in rows], set_images),
                       settings=info["settings"])
        summaries.append(summary)
        lines.append(set_line(summary, info["label"]))
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
