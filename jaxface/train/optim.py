"""Optimiser, schedule, freezing and per-layer learning-rate multipliers, all from config."""
from __future__ import annotations

from typing import Any, Callable

import jax
import optax
from flax import nnx

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine")


class OptimizerConfigError(ValueError):
    """An optimizer section that names an unknown optimizer, schedule or layer."""


def path_to_str(path) -> str:
    parts = []
    for p in path:
        for attr in ("key", "name", "idx"):
            if hasattr(p, attr):
                parts.append(str(getattr(p, attr)))
                break
        else:
            parts.append(str(p))
    return "/".join(parts)


def learning_rate_schedule(opt_cfg, num_steps: int) -> optax.Schedule:
    lr = float(opt_cfg.learning_rate)
    warmup = int(opt_cfg.get("warmup_steps", 0) or 0)
    kind = opt_cfg.get("schedule", "constant")
    if kind not in SCHEDULES:
        raise OptimizerConfigError(f"unknown optimizer.schedule {kind!r}; valid: {', '.join(SCHEDULES)}")
    if kind == "constant":
        main = optax.constant_schedule(lr)
    else:
        main = optax.cosine_decay_schedule(lr, max(1, num_steps - warmup))
    if warmup <= 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def _label_fn(multipliers: dict) -> Callable:
    """Maps every parameter to the multiplier label of the longest matching path prefix/segment."""
    keys = sorted(multipliers, key=len, reverse=True)

    def label(path, _):
        s = path_to_str(path)
        segments = s.split("/")
        for k in keys:
            if s.startswith(k) or any(seg.startswith(k) for seg in segments):
                return k
        return "__default__"

    return lambda params: jax.tree_util.tree_map_with_path(label, params)


def build_optimizer(opt_cfg, num_steps: int) -> optax.GradientTransformation:
    name = opt_cfg.get("name", "adamw")
    if name not in OPTIMIZERS:
        raise OptimizerConfigError(f"unknown optimizer.name {name!r}; valid: {', '.join(OPTIMIZERS)}")
    schedule = learning_rate_schedule(opt_cfg, num_steps)
    wd = float(opt_cfg.get("weight_decay", 0.0) or 0.0)
    if name == "sgd":
        base = optax.chain(
            optax.add_decayed_weights(wd) if wd else optax.identity(),
            optax.sgd(schedule, momentum=float(opt_cfg.get("momentum", 0.9)) or None, nesterov=False),
        )
    elif name == "adam":
        base = optax.chain(optax.add_decayed_weights(wd) if wd else optax.identity(), optax.adam(schedule))
    else:
        base = optax.adamw(schedule, weight_decay=wd)
    parts = []
    clip = float(opt_cfg.get("grad_clip_norm", 0.0) or 0.0)
    if clip > 0:
        parts.append(optax.clip_by_global_norm(clip))
    parts.append(base)
    multipliers = opt_cfg.get("lr_multipliers", None)
    multipliers = multipliers.to_dict() if hasattr(multipliers, "to_dict") else dict(multipliers or {})
    if multipliers:
        transforms = {k: optax.scale(float(v)) for k, v in multipliers.items()}
        transforms["__default__"] = optax.identity()
        parts.append(optax.multi_transform(transforms, _label_fn(multipliers)))
    return optax.chain(*parts)


def _layer_below(freeze_below: str, layer_of: Callable[[Any], str], layer_index: Callable[[str], int]):
    """path -> whether the layer that the path belongs to is below `freeze_below` (frozen)."""
    boundary = layer_index(freeze_below)  # raises the model's clear error for unknown names
    return lambda path: layer_index(layer_of(path)) < boundary


def trainable_filter(freeze_below: str | None, layer_of: Callable[[Any], str], layer_index: Callable[[str], int]):
    """An NNX filter for the parameters that train: every Param at or above `freeze_below`."""
    if not freeze_below:
        return nnx.Param
    frozen = _layer_below(freeze_below, layer_of, layer_index)

    def is_trainable(path, value) -> bool:
        return isinstance(value, nnx.Param) and not frozen(path)

    return is_trainable


def frozen_statistics_filter(freeze_below: str | None, layer_of: Callable[[Any], str],
                             layer_index: Callable[[str], int]):
    """An NNX filter for the normalisation statistics (BatchStat) of the frozen layers, below
    `freeze_below`: a training step must leave them as they were, like the frozen weights."""
    if not freeze_below:
        return nnx.Nothing
    frozen = _layer_below(freeze_below, layer_of, layer_index)

    def is_frozen_statistic(path, value) -> bool:
        return isinstance(value, nnx.BatchStat) and frozen(path)

    return is_frozen_statistic
