"""The attributes task's evaluation report: per-attribute accuracy (CSV and chart) and confusion
matrices of the softmax groups."""
from __future__ import annotations


import numpy as np

from jaxface import files, plots


def report(setup, outputs: dict, metrics: dict, out_dir) -> tuple[dict, str, list]:
    """metrics.json, per_attribute.csv, the accuracy chart and a confusion matrix per softmax group.
    -> (metrics, printable table, written paths)"""
    s = setup.task.schema
    out_dir = files.as_path(out_dir)
    written = [files.write_json(out_dir / "metrics.json", metrics)]
    pos_rate = (outputs["attributes"] * outputs["attribute_mask"]).sum(0) / np.maximum(
        outputs["attribute_mask"].sum(0), 1)
    rows = ["attribute,accuracy,num_labelled,positive_rate"]
    for k, n in enumerate(s.attribute_names):
        rows.append(f"\"{n}\",{metrics['per_attribute'][n]:.6f},"
                    f"{metrics['labelled_per_attribute'][n]},{pos_rate[k]:.6f}")
    written.append(files.write_text(out_dir / "per_attribute.csv", "\n".join(rows) + "\n"))
    written.append(plots.bar_chart(
        out_dir / "accuracy.png", list(s.attribute_names),
        [metrics["per_attribute"][n] for n in s.attribute_names],
        title=f"Test accuracy per attribute (mean {metrics['mean_accuracy']:.3f}, "
              f"n={metrics['num_examples']})", xlabel="accuracy"))
    for h, g in enumerate(s.groups):
        if g.is_binary:
            continue
        t, p = outputs["head_target"][:, h], outputs["head_pred"][:, h]
        ok = t >= 0
        cm = np.zeros((g.num_classes, g.num_classes), np.int64)
        np.add.at(cm, (t[ok], p[ok]), 1)
        written.append(plots.confusion_matrix(
            out_dir / f"confusion_{g.name.replace(' ', '_')}.png", cm, list(g.class_names),
            title=f"{g.name}: accuracy {metrics['per_head'][g.name]:.3f}"))
    lines = [f"{'attribute':28s} {'accuracy':>8s} {'labelled':>8s}"]
    for n in sorted(s.attribute_names, key=lambda n: -np.nan_to_num(metrics["per_attribute"][n])):
        lines.append(f"{n:28s} {metrics['per_attribute'][n]:8.3f} {metrics['labelled_per_attribute'][n]:8d}")
    lines.append(f"{'mean per-attribute accuracy':28s} {metrics['mean_accuracy']:8.3f} "
                 f"(n={metrics['num_examples']})")
    return metrics, "\n".join(lines), written
