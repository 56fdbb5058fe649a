"""Tasks plug into the one trainer: a task supplies the model, the loss, per-example predictions and
their summary metrics. The loop, sharding, checkpointing, logging and resumption live in trainer.py; the
evaluation reports (files, plots, calibration) live in `jaxface.evaluate`, looked up by task name.
"""
from __future__ import annotations

from flax import nnx

from jaxface.registry import Registry, UnknownNameError


class TaskConfigError(ValueError):
    """A config whose task or model cannot be built."""


class Task:
    """Interface. `loss` and `predict` are traced inside jax.jit; everything else runs on the host."""

    name = "task"

    def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
        raise NotImplementedError

    def loss(self, model, batch: dict, train: bool):
        """-> (scalar loss, dict of scalar metrics)."""
        raise NotImplementedError

    def predict(self, model, batch: dict) -> dict:
        """Per-example outputs (leading batch axis) for evaluation."""
        raise NotImplementedError

    def summarize(self, outputs: dict) -> dict:
        """Host-side metrics over a whole split (outputs hold only valid examples)."""
        raise NotImplementedError

    def layer_of(self, path) -> str:
        raise NotImplementedError

    def layer_index(self, name: str) -> int:
        raise NotImplementedError

    def init_skip_prefixes(self) -> tuple[str, ...]:
        """Parameters that `init_from` leaves freshly initialised (the task's own heads)."""
        return ()

    def augment(self, config):
        """A grain transform applied to training records, or None."""
        return None

    headline_metric = "loss"


class UnknownTaskError(TaskConfigError, UnknownNameError):
    """config.task names no task."""


TASKS = Registry("task", {
    "attributes": "jaxface.train.tasks.attributes:AttributesTask",
    "deepfake": "jaxface.train.tasks.deepfake:DeepfakeTask",
}, error=UnknownTaskError)


def get_task(config) -> Task:
    return TASKS[config.get("task", "attributes")](config)
