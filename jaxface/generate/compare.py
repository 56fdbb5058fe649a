"""`jaxface generate --compare=COMPARE.json`: several generation methods on the same attribute sets and
seeds, beside reference rows that need no generation, in one table and one side-by-side grid per set.

    {"sets": ["Male", "Smiling, Mouth Open"], "seeds": [0, 1, 2, 3],
     "methods": [{"label": "joint", "model": "joint"}, {"label": "cgmm", "model": "cgmm"},
                 {"label": "classvis", "method": "classvis"},
                 {"label": "fft", "model": "joint", "settings": {"param": "fft"}}],
     "references": ["mean_image_noise", "attribute_mean"]}

A method is a sweep entry without its attributes and seeds (method, model, mode, strength, steps,
settings; `label` names its row). The methods run as one sweep (`generate/sweep.py`: batched, resumable
after Ctrl-C, split over processes). Rows that are not generated, each scored the same way:
  real              real faces of the test split with the requested attributes (the top row);
  mean_image_noise  the training mean image plus Gaussian noise (sigma 0.1, its seed's own draw);
  attribute_mean    the mean of up to 64 real faces with the requested attributes, the same for every seed.
With --judge_workdir each row gets the judge's hit rate, KID against held-out real faces (with the
real-vs-real floor) and diversity (generate/judge.py); without a judge only the optimised classifier's
hit rate, which says little about how a face looks. With --detector_workdir (a trained deepfake
detector, e.g. configs/detect/synthfakes_mobilenet.py) each row also gets how often the detector calls its
images fake (at its calibrated threshold) and its mean p_fake; the real row's is its false-alarm rate.

Outputs in WORKDIR/generate/compare_<name>/: compare.csv and compare.json (one row per method and set,
and one "all sets" row per method with the means), one grid per set in grids/ (rows: real, the methods
in order, the references; columns: seeds; each row labelled), and the sweep's own folders.
"""
from __future__ import annotations

import csv
import io
import math
import pathlib

import numpy as np

from jaxface import files
from jaxface.evaluate import generation as metrics
from jaxface.generate.classifier import classify_images
from jaxface.generate.output import check_name, read_json, slug
from jaxface.generate.settings import GenerateError
from jaxface.generate.sweep import SWEEP_KEYS, run_sweep
from jaxface.generate.targets import Context, resolve_set

REFERENCES = ("mean_image_noise", "attribute_mean")
COMPARE_KEYS = ("sets", "seeds", "methods", "references")
METHOD_KEYS = tuple(k for k in SWEEP_KEYS if k not in ("attributes", "seeds", "num", "seed"))
NOISE_SIGMA = 0.1
ATTRIBUTE_MEAN_FACES = 64
SWEEP_COLUMNS = ("judge_hit_rate", "kid", "kid_se", "kid_floor", "judge_diversity", "real_judge_diversity", "diversity")
COLUMNS = ("row", "set", "attributes", "num_images", "hit_rate", *SWEEP_COLUMNS, "detector_catch_rate",
           "detector_mean_p_fake")


def read_compare(path) -> dict:
    """The compare file, every field checked before anything runs."""
    path = pathlib.Path(str(path))
    spec = read_json(path, "--compare")
    example = ('{"sets": ["Male"], "seeds": [0, 1], "methods": [{"label": "joint", "model": "joint"}], '
               '"references": ["mean_image_noise"]}')
    if not isinstance(spec, dict):
        raise GenerateError(f"--compare: {path} must hold one JSON object like {example}")
    unknown = sorted(set(spec) - set(COMPARE_KEYS))
    if unknown:
        raise GenerateError(f"--compare: unknown key(s) {', '.join(map(repr, unknown))}; valid: {', '.join(COMPARE_KEYS)}")
    sets, seeds, methods = spec.get("sets"), spec.get("seeds"), spec.get("methods")
    if not isinstance(sets, list) or not sets:
        raise GenerateError(f"--compare: 'sets' must be a non-empty list of attribute sets, as in {example}")
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise GenerateError("--compare: 'seeds' must be a non-empty list of non-negative integers")
    if not isinstance(methods, list) or not methods or not all(isinstance(m, dict) for m in methods):
        raise GenerateError(f"--compare: 'methods' must be a non-empty list of objects, as in {example}")
    labels = []
    for n, m in enumerate(methods):
        bad = sorted(set(m) - set(METHOD_KEYS))
        if bad:
            raise GenerateError(f"--compare: method {n}: unknown key(s) {', '.join(map(repr, bad))}; valid: "
                                f"{', '.join(METHOD_KEYS)}")
        labels.append(str(m.get("label") or f"method{n}"))
        check_name(labels[-1])
    references = spec.get("references", list(REFERENCES))
    if not isinstance(references, list) or any(r not in REFERENCES for r in references):
        raise GenerateError(f"--compare: 'references' must be a list of {', '.join(REFERENCES)}")
    taken = set(labels) & ({"real"} | set(REFERENCES))
    if len(set(labels)) != len(labels) or taken:
        raise GenerateError(f"--compare: method labels must be unique and differ from real, {', '.join(REFERENCES)}")
    return dict(sets=sets, seeds=[int(s) for s in seeds], methods=methods, labels=labels, references=references)


def _reference_images(ctx: Context, kind: str, seeds, real_pool) -> np.ndarray | None:
    if kind == "mean_image_noise":
        return np.stack([np.clip(ctx.mean_image + NOISE_SIGMA * np.random.default_rng(s).standard_normal(
            ctx.mean_image.shape), 0.0, 1.0).astype(np.float32) for s in seeds])
    if len(real_pool) == 0:  # attribute_mean of a set no real face carries
        return None
    mean = real_pool.astype(np.float32).mean(axis=0) / 255.0
    return np.repeat(mean[None], len(seeds), axis=0)


def _detector_figures(detector, images) -> dict:
    """How often a deepfake detector calls the row's images fake, and its mean p_fake."""
    if detector is None:
        return {}
    from jaxface.evaluate import predict

    p_fake, fake = predict.score_images(detector, images)
    return {"detector_catch_rate": float(np.mean(fake)), "detector_mean_p_fake": float(np.mean(p_fake))}


def _score(ctx: Context, images: np.ndarray, indices, judge, detector=None) -> dict:
    """The figures of a row that was not generated: the classifier's hit rate, the judge's, diversity."""
    _, _, detected = classify_images(ctx.clf, images)
    hits = metrics.hit_rates(detected, [list(indices)] * len(images))
    out = {"num_images": len(images), "hit_rate": float(hits.mean()), "diversity": metrics.diversity(images)}
    if judge is not None:
        from jaxface.generate import judge as judge_lib

        out.update(judge_lib.judge_set(judge, images, indices))
    out.update(_detector_figures(detector, images))
    return out


def _labelled_grid(rows: list[tuple[str, np.ndarray]], cols: int) -> np.ndarray:
    """One image: each row's label to the left of its images (PIL's built-in font)."""
    from PIL import Image, ImageDraw

    grids = [files.image_grid(images, cols=cols) for _, images in rows]
    width = max(g.shape[1] for g in grids)
    label_w = 8 + 7 * max(len(label) for label, _ in rows)
    canvas = Image.new("RGB", (label_w + width, sum(g.shape[0] for g in grids)), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    for (label, _), grid in zip(rows, grids):
        canvas.paste(Image.fromarray((np.clip(grid, 0, 1) * 255).astype(np.uint8)), (label_w, y))
        draw.text((4, y + grid.shape[0] // 2 - 6), label, fill="black")
        y += grid.shape[0]
    return np.asarray(canvas, np.float32) / 255.0


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        cells = []
        for c in COLUMNS:
            v = r.get(c)
            cells.append("" if v is None or (isinstance(v, float) and not math.isfinite(v)) else
                         f"{v:.5f}" if isinstance(v, float) else "; ".join(v) if isinstance(v, list) else str(v))
        writer.writerow(cells)
    return buf.getvalue()


def _means(rows: list[dict], label: str) -> dict:
    mine = [r for r in rows if r["row"] == label]
    out = {"row": label, "set": "all sets", "attributes": [], "num_images": sum(r["num_images"] for r in mine)}
    for c in COLUMNS[4:]:
        values = [r[c] for r in mine if isinstance(r.get(c), (int, float)) and math.isfinite(r[c])]
        out[c] = float(np.mean(values)) if values else None
    return out


def load_detector(workdir):
    """A trained deepfake detector (jaxface train on a detect config, or an exported one) for --compare."""
    from jaxface.train import checkpoint, trainer

    try:
        setup = trainer.load_for_inference(workdir)
    except checkpoint.CheckpointError as err:
        raise GenerateError(f"--detector_workdir: {err}") from None
    if setup.task.name != "deepfake":
        raise GenerateError(f"--detector_workdir={workdir} holds a {setup.task.name!r} model, not a deepfake detector")
    return setup


def run_compare(ctx: Context, compare_path, steps, name, verbose, judge=None, detector=None) -> dict:
    from jaxface.data import report as data_report

    spec = read_compare(compare_path)
    resolved = [resolve_set(ctx.store, s) for s in spec["sets"]]
    entries = []
    for s, (names, _) in enumerate(resolved):
        for label, method in zip(spec["labels"], spec["methods"]):
            entry = {k: v for k, v in method.items() if k != "label"}
            entries.append({**entry, "attributes": names, "seeds": spec["seeds"], "label": f"set{s}_{label}"})
    name = check_name(name or f"compare_{slug(pathlib.Path(str(compare_path)).stem)}")
    swept = run_sweep(ctx, compare_path, 0, steps, name, verbose, judge, entries=entries)
    directory = swept["directory"]
    data_cfg = ctx.clf.setup.config.data
    rows, outputs = [], []
    n = len(spec["seeds"])
    for s, (names, indices) in enumerate(resolved):
        pool, _ = data_report.real_faces_with(data_cfg, indices, max(ATTRIBUTE_MEAN_FACES, n))
        pool = np.asarray(pool)
        shown = []
        if len(pool):
            real = pool[:n].astype(np.float32) / 255.0
            shown.append(("real", real))
            rows.append(dict(row="real", set=f"set{s}", attributes=names, **_score(ctx, real, indices, judge, detector)))
        for label in spec["labels"]:
            summary = next(x for x in swept["summary"] if x["label"] == f"set{s}_{label}")
            images = swept["images"][summary["label"]]
            shown.append((label, images))
            rows.append(dict(row=label, set=f"set{s}", attributes=names, hit_rate=summary["mean_hit_rate"],
                             **{c: summary.get(c) for c in SWEEP_COLUMNS}, num_images=summary["num_images"],
                             **_detector_figures(detector, images)))
        for kind in spec["references"]:
            images = _reference_images(ctx, kind, spec["seeds"], pool)
            if images is None:
                continue
            shown.append((kind, images))
            rows.append(dict(row=kind, set=f"set{s}", attributes=names, **_score(ctx, images, indices, judge, detector)))
        grid = _labelled_grid(shown, cols=n)
        outputs.append(files.save_image(directory / "grids" / f"set{s}_{slug('-'.join(names))}.png", grid))
    order = ["real"] + spec["labels"] + list(spec["references"])
    rows += [_means(rows, label) for label in order if any(r["row"] == label for r in rows)]
    outputs.append(files.write_text(directory / "compare.csv", _csv(rows)))
    outputs.append(files.write_json(directory / "compare.json", rows))
    text = [f"compare: {len(spec['labels'])} method(s) and {len(spec['references'])} reference(s) on "
            f"{len(resolved)} set(s) x {n} seed(s)" + ("" if judge else " (no --judge_workdir: hit rates are the "
                                                        "optimised classifier's own)")]
    for r in rows:
        if r["set"] == "all sets":
            text.append(f"  {r['row']}: hit rate {r['hit_rate']:.3f}" + (
                f", judge {r['judge_hit_rate']:.3f}" if r.get("judge_hit_rate") is not None else "") + (
                f", KID {r['kid']:.4f}" if r.get("kid") is not None else "") + (
                f", judge diversity {r['judge_diversity']:.3f}" if r.get("judge_diversity") is not None else "") + (
                f", called fake {r['detector_catch_rate']:.2f}" if r.get("detector_catch_rate") is not None else ""))
    return dict(text="\n".join(text), outputs=outputs, rows=rows, directory=directory, sweep=swept)
