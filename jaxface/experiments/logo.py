r"""Leave-one-generator-out: train without one generator, test on it (and on the ones seen in training).

For every generator G of config.data.generators (data.source='synthfakes', whose splits take
`exclude_generators_<split>`), a detector is trained in WORKDIR/without_<G>/ with G excluded from the
train and validation splits (so the threshold is calibrated without it too), then `jaxface evaluate`
runs on the full test split. The figures are the held-out generator's AUC against the real test images
and its detection rate at the calibrated threshold, next to the same numbers for the generators seen in
training. Existing runs are resumed (or reused when complete), as the trainer does.

    python -m jaxface.experiments.logo --config=configs/detect/synthfakes_mobilenet.py --workdir=runs/logo
    # one run by hand, with the ordinary commands:
    jaxface train --config=configs/detect/synthfakes_mobilenet.py --workdir=runs/no_up \
        --config.data.exclude_generators_train=upsample --config.data.exclude_generators_val=upsample
    jaxface evaluate --workdir=runs/no_up      # per_generator['upsample'] in runs/no_up/eval/metrics.json

Folder datasets (realfake, manifest) have no exclusion switch: train on a folder without the generator
and use `evaluate_on_folder` (`jaxface evaluate --data_root=...`) on a folder of the held-out one.
"""
from __future__ import annotations

import math
from typing import Sequence

import ml_collections
import numpy as np

from jaxface import files, plots
from jaxface.evaluate import evaluators
from jaxface.evaluate.metrics import format_metric
from jaxface.train import trainer


class LogoError(ValueError):
    """A leave-one-generator-out request that cannot run."""


def held_out_config(config, generator: str):
    """A copy of `config` that trains and calibrates without `generator` (the test split keeps it)."""
    cfg = config.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.data.exclude_generators_train = (generator,)
        cfg.data.exclude_generators_val = (generator,)
        cfg.data.exclude_generators_test = ()
    return cfg


def leave_one_generator_out(config, workdir, generators: Sequence[str] | None = None, *,
                            robustness: bool = False) -> dict:
    """Runs the protocol; writes WORKDIR/logo_summary.json and logo.png. -> dict(rows, text, outputs)."""
    workdir = files.as_path(workdir)
    if config.data.get("source") != "synthfakes":
        raise LogoError(
            f"leave-one-generator-out needs data.source='synthfakes' (got {config.data.get('source')!r}); for "
            "folders, train without the generator and evaluate on it with evaluate_on_folder")
    available = tuple(config.data.get("generators", ("upsample", "faceswap")))
    generators = tuple(generators) if generators else available
    unknown = [g for g in generators if g not in available]
    if unknown or len(available) < 2:
        raise LogoError(f"held-out generators {unknown or generators} must be among data.generators "
                        f"{available}, which needs at least two")
    rows, outputs = [], []
    for g in generators:
        cfg = held_out_config(config, g)
        with cfg.unlocked():
            if cfg.get("evaluate") is None:
                cfg.evaluate = ml_collections.ConfigDict()
            cfg.evaluate.robustness = bool(robustness)
        run_dir = workdir / f"without_{g}"
        files.write_text(run_dir / "config.json", cfg.to_json_best_effort(indent=2))
        print(f"=== leave-one-generator-out: training without {g!r} in {run_dir}", flush=True)
        trainer.train(cfg, run_dir)
        ev = evaluators.evaluate_split(trainer.load_for_inference(run_dir, cfg), "test")
        per = ev["metrics"]["per_generator"]
        seen = [n for n in per if n not in ("real", g)]
        rows.append({
            "held_out": g,
            "held_out_auc_vs_real": per[g]["auc_vs_real"],
            "held_out_detection_rate": per[g]["accuracy"],
            "real_accuracy": per["real"]["accuracy"],
            "seen_auc_vs_real": float(np.mean([per[n]["auc_vs_real"] for n in seen])) if seen else math.nan,
            "seen_detection_rate": float(np.mean([per[n]["accuracy"] for n in seen])) if seen else math.nan,
            "test_auc_all": ev["metrics"]["auc"],
            "threshold": ev["metrics"]["threshold"],
            "workdir": str(run_dir),
        })
        outputs += ev["outputs"]
    summary = {"rows": rows, "generators": list(generators)}
    outputs.append(files.write_json(workdir / "logo_summary.json", summary))
    names = [r["held_out"] for r in rows]
    bars = [f"{n} held out: AUC" for n in names] + [f"{n} held out: detected" for n in names]
    values = [r["held_out_auc_vs_real"] for r in rows] + [r["held_out_detection_rate"] for r in rows]
    outputs.append(plots.bar_chart(workdir / "logo.png", bars, values, sort=False,
                                   title="Leave one generator out: unseen generator vs real (test)",
                                   xlabel="AUC / detection rate"))
    return {"rows": rows, "text": table(rows), "outputs": outputs}


def table(rows: Sequence[dict]) -> str:
    f = format_metric
    lines = [f"{'held out':12s} {'AUC unseen':>10s} {'det. unseen':>11s} {'AUC seen':>9s} {'det. seen':>9s} "
             f"{'real acc':>8s}"]
    for r in rows:
        lines.append(f"{r['held_out']:12s} {f(r['held_out_auc_vs_real']):>10s} {f(r['held_out_detection_rate']):>11s} "
                     f"{f(r['seen_auc_vs_real']):>9s} {f(r['seen_detection_rate']):>9s} {f(r['real_accuracy']):>8s}")
    return "\n".join(lines)


def main(argv):  # pragma: no cover - thin command wrapper over leave_one_generator_out
    from absl import flags, logging

    del argv
    logging.set_verbosity(logging.WARNING)
    f = flags.FLAGS
    generators = [g for g in (f.generators or "").split(",") if g]
    result = leave_one_generator_out(f.config, f.workdir, generators or None, robustness=f.robustness)
    print(result["text"])
    for p in result["outputs"]:
        print(f"wrote {p}")


if __name__ == "__main__":  # pragma: no cover
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "A synthfakes detection config.")
    flags.DEFINE_string("workdir", None, "Directory for the runs (one subfolder per held-out generator).",
                        required=True)
    flags.DEFINE_string("generators", "", "Comma-separated generators to hold out (default: all).")
    flags.DEFINE_boolean("robustness", False, "Also run the robustness suite in each evaluation.")
    app.run(main)
