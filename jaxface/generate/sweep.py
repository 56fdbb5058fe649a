"""`jaxface generate --sweep=SWEEP.json`: many attribute sets and seeds, grouped by static settings into
batched, compiled calls.

A sweep keeps every finished batch in `<sweep dir>/partial/` (one .npz per image: the float image and its
results record). Ctrl-C stops it with exit 130, and running the same command again renders only what is
missing; the folder goes once results.json and the summaries are written. An item is reused only when its
set, seed, method, model, mode, strength and settings and the fitted model and classifier checkpoint are
the same (a key hashed from all of them), so a changed sweep or refit never mixes in stale images.
"""
from __future__ import annotations

import collections
import csv
import hashlib
import io
import json
import math
import pathlib

import numpy as np

from jaxface import faults, files
from jaxface.cgmm.fit import CGMM_DIR
from jaxface.cgmm import targets as targets_lib
from jaxface.evaluate import generation as metrics
from jaxface.generate.output import GENERATE_DIR, check_name, read_json, set_line, slug, write_images
from jaxface.generate.rendering import chunk_plan, render_shared
from jaxface.generate.settings import GenerateError, METHODS, settings_from_config
from jaxface.generate import starts
from jaxface.generate.targets import (
    MODES, Context, Item, check_choice, check_strength, default_strength, resolve_set, seeds_for,
)


PARTIAL_DIR = "partial"


class SweepInterrupted(GenerateError):
    """Ctrl-C during a sweep; the finished images are kept for the next run of the same sweep."""


SWEEP_KEYS = ("attributes", "seeds", "num", "seed", "mode", "model", "method", "strength", "steps", "settings",
              "label")


def read_sweep(ctx: Context, sweep_path, seed: int, steps: int | None,
               entries: list | None = None) -> tuple[list[Item], list[dict]]:
    """Parse and validate every entry (of the file, or `entries` when given) before anything runs."""
    path = pathlib.Path(str(sweep_path))
    if entries is None:
        entries = read_json(path, "--sweep")
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
        mode = check_choice("mode", entry.get("mode", "mean"), MODES)
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
        settings = starts.item_settings(settings.replace(overrides, f"{where} settings"), mode, overrides)
        label = str(entry.get("label") or f"{n:03d}_{slug('-'.join(names))}_{method}"
                    + (f"_{model}_{mode}" if method == "invert" else ""))
        check_name(label)
        strength = check_strength(entry.get("strength", strength_default), where)
        sets.append(dict(index=n, label=label, attributes=names, method=method, model=model, mode=mode,
                         strength=strength, seeds=seeds, settings=settings.as_dict()))
        items += [Item(n, names, indices, s, mode, model, method, settings, strength) for s in seeds]
    labels = [s["label"] for s in sets]
    if PARTIAL_DIR in labels:
        raise GenerateError(f"--sweep: the label {PARTIAL_DIR!r} is reserved (the folder of an interrupted "
                            "sweep's finished images); choose another")
    if len(set(labels)) != len(labels):
        raise GenerateError("--sweep: entry labels must be unique; got " + ", ".join(labels))
    return items, sets


def _context_fingerprint(ctx: Context) -> str:
    """What every image depends on besides its own entry: the fitted model and the classifier checkpoint."""
    parts = {"checkpoint_step": int(getattr(ctx.clf.setup, "step", -1) or -1), "layer": ctx.store.layer}
    for name in ("cgmm.npz", "cgmm.json"):
        path = files.as_path(ctx.workdir / CGMM_DIR / name)
        try:
            parts[name] = hashlib.sha256(path.read_bytes()).hexdigest()  # a refit changes it
        except OSError:
            parts[name] = None
    return json.dumps(parts, sort_keys=True)


def _item_key(fingerprint: str, info: dict, item: Item) -> str:
    spec = json.dumps({"context": fingerprint, "label": info["label"], "attributes": list(item.names),
                       "seed": int(item.seed), "method": item.method, "model": item.model, "mode": item.mode,
                       "strength": float(item.strength), "settings": item.settings.as_dict()},
                      sort_keys=True, default=str)
    return hashlib.sha256(spec.encode()).hexdigest()[:24]


def _save_partial(directory, key: str, image: np.ndarray, record: dict) -> None:
    buf = io.BytesIO()
    np.savez(buf, image=np.asarray(image, np.float32), record=np.asarray(json.dumps(record)))
    files.write_bytes(directory / f"{key}.npz", buf.getvalue())  # atomic: a Ctrl-C never leaves half a file


def _load_partial(directory, key: str):
    path = files.as_path(directory / f"{key}.npz")
    try:
        with np.load(io.BytesIO(path.read_bytes())) as data:
            return np.asarray(data["image"]), json.loads(str(data["record"]))
    except Exception:  # noqa: BLE001 - an unreadable leftover is rendered again, not an error
        return None


def run_sweep(ctx: Context, sweep_path, seed, steps, name, verbose, judge=None, entries=None) -> dict:
    items, sets = read_sweep(ctx, sweep_path, seed, steps, entries)
    directory = ctx.workdir / GENERATE_DIR / check_name(name or f"sweep_{slug(pathlib.Path(str(sweep_path)).stem)}")
    partial = directory / PARTIAL_DIR
    fingerprint = _context_fingerprint(ctx)
    keys = [_item_key(fingerprint, sets[item.set_index], item) for item in items]
    groups = collections.OrderedDict()
    for row, item in enumerate(items):
        groups.setdefault((item.method, item.settings), []).append(row)
    images = [None] * len(items)
    records: list = [None] * len(items)
    partial_path = files.as_path(partial)
    saved = {p.stem for p in partial_path.glob("*.npz")} if partial_path.exists() else set()  # one listing
    for row, key in enumerate(keys):
        kept = _load_partial(partial, key) if key in saved else None
        if kept is not None:
            images[row], records[row] = kept
    reused = sum(image is not None for image in images)
    if reused and verbose:
        print(f"resuming: {reused} of {len(items)} image(s) already in {partial}", flush=True)

    def keep(done):  # after every round: all processes' images, saved by process 0 for a resumed run
        for r, image, rec in done:
            images[r], records[r] = image, rec
            _save_partial(partial, keys[r], image, rec)
        faults.hit("sweep_batch")

    chunks = chunk_plan(items, [[r for r in rows if images[r] is None] for rows in groups.values()])
    calls = len(chunks)
    try:
        render_shared(ctx, items, chunks, verbose=verbose, on_round=keep)
    except KeyboardInterrupt:
        done = sum(image is not None for image in images)
        raise SweepInterrupted(
            f"interrupted: {done} of {len(items)} image(s) are kept in {partial}; run the same command again "
            "to render the rest") from None
    outputs, summaries, lines, images_by_label = [], [], [], {}
    for info in sets:
        rows = [r for r, item in enumerate(items) if item.set_index == info["index"]]
        set_images = images_by_label[info["label"]] = np.stack([images[r] for r in rows])
        for k, r in enumerate(rows):
            records[r]["image"] = f"{info['label']}/images/{k:03d}.png"
        # only the grids are listed: a sweep writes hundreds of images (results.json names them all)
        outputs += write_images(directory / info["label"], set_images, cols=min(len(rows), 8))[:1]
        summary = dict(label=info["label"], attributes=info["attributes"], method=info["method"],
                       model=info["model"], mode=info["mode"], strength=info["strength"], seeds=info["seeds"],
                       **metrics.summarize_set([records[r] for r in rows], set_images),
                       settings=info["settings"])
        if judge is not None:  # a second classifier that no objective used (generate/judge.py)
            from jaxface.generate import judge as judge_lib

            summary.update(judge_lib.judge_set(judge, set_images, items[rows[0]].indices))
        summaries.append(summary)
        lines.append(set_line(summary, info["label"]))
    outputs.append(files.write_json(directory / "results.json", records))
    outputs.append(files.write_json(directory / "summary.json", summaries))
    outputs.append(files.write_text(directory / "summary.csv", _summary_csv(summaries)))
    if files.is_main_process() and files.as_path(partial).exists():
        files.as_path(partial).rmtree()  # every image is in the outputs now
    text = "\n".join([f"sweep of {len(sets)} set(s), {len(items)} image(s) in {len(groups)} settings group(s), "
                      f"{calls} batched call(s)" + (f", {reused} reused from an interrupted run" if reused else "")]
                     + lines)
    return dict(text=text, outputs=outputs, records=records, summary=summaries, directory=directory,
                groups=len(groups), calls=calls, reused=reused, images=images_by_label)


def _summary_csv(summaries: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    judged = any("judge_hit_rate" in s for s in summaries)
    judge_columns = ["judge_hit_rate", "kid", "kid_se", "kid_floor", "judge_diversity", "real_judge_diversity"]
    writer.writerow(["label", "attributes", "method", "model", "mode", "num_images", "mean_hit_rate",
                     "all_detected_rate", "mean_feature_error", "diversity"] + (judge_columns if judged else []))

    def figure(value, digits=5):
        return "" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"

    for s in summaries:
        writer.writerow([s["label"], "; ".join(s["attributes"]), s["method"], s["model"], s["mode"],
                         s["num_images"], f"{s['mean_hit_rate']:.4f}", f"{s['all_detected_rate']:.4f}",
                         "" if s["mean_feature_error"] is None else f"{s['mean_feature_error']:.4f}",
                         figure(s["diversity"])] + ([figure(s.get(c)) for c in judge_columns] if judged else []))
    return buf.getvalue()
