"""Evaluators: run a loaded model over a data source and write a task's report.

Every function here receives an inference setup (`train.trainer.load_for_inference`: config, task, mesh,
model state, jitted `predict` function, checkpoint `step`, `workdir`) and never imports the trainer, so
evaluation sits above training in the layering and takes whatever model it is handed.
"""
from __future__ import annotations


import jax

from jaxface import files, parallel
from jaxface.data import pipeline
from jaxface.registry import Registry

# task name -> report(setup, outputs, metrics, out_dir) -> (metrics, printable text, written paths)
REPORTS = Registry("evaluation report", {
    "attributes": "jaxface.evaluate.attributes:report",
    "deepfake": "jaxface.evaluate.detection:report",
})


def predict_source(setup, source, split: str = "test") -> dict:
    """The task's per-example outputs (host numpy, valid examples only) on every readable record of
    `source`; an error when none could be read."""
    with jax.set_mesh(setup.mesh):
        return pipeline.predictions(setup.config, split, setup.mesh, setup.predict, setup.model_state,
                                    source=source)


def evaluate_split(setup, split: str = "test", out_dir=None) -> dict:
    """`jaxface evaluate`: the setup's model on a split of its config's data -> OUT_DIR (default
    WORKDIR/eval): metrics, CSV, plots. -> dict(metrics, text, outputs)"""
    out_dir = files.as_path(out_dir) if out_dir is not None else files.as_path(setup.workdir) / "eval"
    source = pipeline.build_source(setup.config.data, split)
    outputs = predict_source(setup, source, split)
    metrics = setup.task.summarize(outputs)
    metrics["split"] = split
    with files.ctrl_c_deferred("writing the evaluation report"):  # its files change together
        metrics, text, written = REPORTS[setup.task.name](setup, outputs, metrics, out_dir)
    parallel.barrier("evaluation written")  # e.g. calibration.json, which predict reads next
    return {"metrics": metrics, "text": text, "outputs": written}
