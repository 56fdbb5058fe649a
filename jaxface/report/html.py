"""WORKDIR/report.html: everything a demo run measured, in one file that opens offline and mailed alone.

Every image is embedded as a data URI and the page loads nothing else (no script, font or stylesheet
from anywhere). It reads what the commands wrote under the workdir (demo.json, the evaluation metrics and
plots, the generated sets, the robustness table) and shows what is there; a missing part says so instead
of failing, so the report of a run stopped half-way still renders. The seed reports' own figures stand
beside ours where they compare, labelled as theirs, on their data.
"""
from __future__ import annotations

import base64
import json
import math
import pathlib
from typing import Any

import jinja2

from jaxface import files

REPORT_FILE = "report.html"
TEMPLATES = pathlib.Path(__file__).resolve().parent / "templates"

# The first seed report (2016, VGG-Face fine-tuned on PubFig, 73 attributes in 42 heads): its abstract.
SEED_ATTRIBUTE_ACCURACY = {"accuracy": 0.82, "source": "the 2016 face-generation report: VGG-Face fine-tuned "
                           "on PubFig's 73 attributes, test accuracy (its abstract)"}
# The second seed report's Table 3 (MobileNetV3, the model it deployed) and the competition's top team
# (VisionLabs) from its comparison, per class precision / recall / F1 and accuracy, on their test data.
SEED_DETECTION = [
    {"who": "MobileNetV3, the deepfake report's deployed model (its Table 3)", "accuracy": 0.81,
     "per_class": {"real": (0.63, 0.82, 0.71), "fake": (0.92, 0.81, 0.86)}},
    {"who": "VisionLabs, the challenge's top team (the report's comparison)", "accuracy": 0.94,
     "per_class": {"real": (0.89, 0.88, 0.89), "fake": (0.95, 0.96, 0.96)}},
]


class ReportError(ValueError):
    """A workdir with nothing to report."""


def data_uri(path) -> str | None:
    """A PNG/JPEG file as a data: URI, or None when it is missing."""
    path = files.as_path(path)
    if not path.is_file():
        return None
    mime = "image/jpeg" if path.suffix.lower() in (".jpg", ".jpeg") else "image/png"
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _json(path) -> Any:
    path = files.as_path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def number(value, digits: int = 3) -> str:
    """A figure for the page: 'n/a' for a missing or NaN value."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, (int,)) and not isinstance(value, bool):
        return str(value)
    return f"{float(value):.{digits}f}"


def duration(seconds) -> str:
    """Seconds for people: '42 s', '4 min 39 s'."""
    if seconds is None:
        return "n/a"
    seconds = float(seconds)
    return f"{seconds:.0f} s" if seconds < 90 else f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def percent(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{100 * float(value):.1f}%"


def _attributes_section(workdir: pathlib.Path) -> dict | None:
    eval_dir = workdir / "attributes" / "eval"
    metrics = _json(eval_dir / "metrics.json")
    if metrics is None:
        return None
    per_attribute = metrics.get("per_attribute", {})
    ranked = sorted(per_attribute.items(), key=lambda kv: (kv[1] is None or not math.isfinite(kv[1]), kv[1]))
    confusions = [{"name": p.stem.removeprefix("confusion_").replace("_", " "), "uri": data_uri(p)}
                  for p in sorted(eval_dir.glob("confusion_*.png"))]
    return {"mean_accuracy": metrics.get("mean_accuracy"), "num_examples": metrics.get("num_examples"),
            "per_attribute": ranked, "accuracy_chart": data_uri(eval_dir / "accuracy.png"),
            "confusions": confusions, "seed": SEED_ATTRIBUTE_ACCURACY}


def _generation_section(workdir: pathlib.Path, demo: dict) -> dict | None:
    generated = demo.get("generated") or []
    if not generated:
        return None
    sets: dict[str, dict] = {}
    for g in generated:
        directory = workdir / g["directory"]
        key = ", ".join(g["attributes"])
        entry = sets.setdefault(key, {"attributes": key, "size": len(g["attributes"]), "real": None, "runs": [],
                                      "real_judge_diversity": None})
        if g.get("real") and entry["real"] is None:
            entry["real"] = data_uri(directory / "real.png")
        summary = g.get("summary") or _json(directory / "summary.json") or {}
        entry["runs"].append({"model": g["model"], "mode": g["mode"], "grid": data_uri(directory / "grid.png"),
                              "hit_rate": summary.get("mean_hit_rate"),
                              "all_detected": summary.get("all_detected_rate"),
                              "diversity": summary.get("diversity"),
                              "judge_hit_rate": summary.get("judge_hit_rate"), "kid": summary.get("kid"),
                              "kid_se": summary.get("kid_se"), "kid_floor": summary.get("kid_floor"),
                              "judge_diversity": summary.get("judge_diversity")})
        if summary.get("real_judge_diversity") is not None:
            entry["real_judge_diversity"] = summary["real_judge_diversity"]
    recon = demo.get("reconstruction")
    reconstruction = None
    if recon:
        reconstruction = dict(recon, image=data_uri(workdir / recon["directory"] / "reconstruction.png"))
    return {"sets": list(sets.values()), "reconstruction": reconstruction,
            "mean_image": data_uri(workdir / "attributes" / "cgmm" / "mean_image.png"),
            "judged": any(r["judge_hit_rate"] is not None for s in sets.values() for r in s["runs"]),
            "judge": demo.get("judge")}


def _robustness_rows(metrics: dict) -> list[dict]:
    results = metrics.get("robustness") or {}
    rows = []
    for kind, points in (results.get("perturbations") or {}).items():
        for p in points:
            rows.append({"kind": kind, "strength": p.get("strength"), "auc": p.get("auc"),
                         "accuracy": p.get("accuracy")})
    return rows


def _detection_section(workdir: pathlib.Path, demo: dict) -> dict | None:
    eval_dir = workdir / "detect" / "eval"
    metrics = _json(eval_dir / "metrics.json")
    if metrics is None:
        return None
    per_class = {name: (r.get("precision"), r.get("recall"), r.get("f1"), r.get("support"))
                 for name, r in (metrics.get("per_class") or {}).items()}
    return {
        "metrics": metrics, "per_class": per_class,
        "per_generator": list((metrics.get("per_generator") or {}).items()),
        "roc": data_uri(eval_dir / "roc_curve.png"), "confusion": data_uri(eval_dir / "confusion_matrix.png"),
        "robustness_plot": data_uri(eval_dir / "robustness.png"), "robustness": _robustness_rows(metrics),
        "robustness_clean": (metrics.get("robustness") or {}).get("clean"),
        "reliability": data_uri(eval_dir / "reliability.png"),
        "caught": demo.get("generated_caught"), "seed": SEED_DETECTION,
    }


def _config_text(path) -> str | None:
    data = _json(path)
    return None if data is None else json.dumps(data, indent=2)


def context(workdir) -> dict:
    """Everything the template shows, read from WORKDIR."""
    workdir = files.as_path(workdir)
    demo = _json(workdir / "demo.json") or {}
    data_summary = _json(workdir / "attributes" / "data" / "summary.json")
    out = {
        "workdir": str(workdir), "demo": demo, "versions": demo.get("versions") or {},
        "stages": demo.get("stages") or [],
        "configs": [(title, text) for title, text in (
            ("attribute classifier", _config_text(workdir / "attributes" / "config.json")),
            ("cGMM fit and generation", _config_text(workdir / "attributes" / "cgmm" / "config.json")),
            ("deepfake detector", _config_text(workdir / "detect" / "config.json"))) if text],
        "data": None if data_summary is None else {
            "summary": data_summary,
            "preview": data_uri(workdir / "attributes" / "data" / "preview.png"),
            "rates": data_uri(workdir / "attributes" / "data" / "attribute_rates.png")},
        "attributes": _attributes_section(workdir),
        "generation": _generation_section(workdir, demo),
        "detection": _detection_section(workdir, demo),
        "serve_command": demo.get("serve_command"),
    }
    if not any(out[k] for k in ("data", "attributes", "generation", "detection")):
        raise ReportError(f"nothing to report in {workdir}: no demo.json, evaluation or generated sets there "
                          "(run `jaxface demo --workdir=...` first)")
    return out


def render(ctx: dict) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = number
    env.filters["pct"] = percent
    env.filters["duration"] = duration
    return env.get_template("report.html.j2").render(**ctx)


def write_report(workdir, path=None) -> pathlib.Path:
    """Renders WORKDIR's report to PATH (default WORKDIR/report.html), written whole. -> the path."""
    workdir = files.as_path(workdir)
    return files.write_text(path or workdir / REPORT_FILE, render(context(workdir)))
