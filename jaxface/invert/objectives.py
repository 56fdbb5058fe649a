"""Composable per-item objectives for image optimisation (lower is better).

An `Objective` is a weighted sum of named terms. Every term maps an `ObjectiveInputs` to one value per
batch item, shape (B,); the optimiser minimises the sum over items, so items never exchange gradients.

    objective = feature_match() + 0.05 * total_variation() + 1e-3 * l2_decay()

Terms read what they need from `ObjectiveInputs`: `images` (the parameterised images before the random
transforms, for regularisers), `outputs` (what the model function returned for the transformed images)
`targets` (a dict of per-item arrays passed to the optimiser, e.g. {'features': T} or
{'heads': head_targets}) and `params` (the free parameters behind the images, for priors on them).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp

HEAD_MODES = ("log_prob", "logit", "prob")


class ObjectiveError(ValueError):
    """An invalid objective option or mismatched inputs."""


class ObjectiveInputs(NamedTuple):
    images: jax.Array  # (B, H, W, 3) before transforms
    outputs: Any  # model output for the transformed images
    targets: Mapping[str, Any]  # per-item target arrays, leading axis B
    params: Any = None  # the parameters being optimised, leading axis B


TermFn = Callable[[ObjectiveInputs], jax.Array]


@dataclasses.dataclass(frozen=True)
class Term:
    name: str
    fn: TermFn
    weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class Objective:
    """Weighted sum of terms. Supports `a + b`, `a - b`, `w * a`, `-a`."""

    terms: tuple[Term, ...]

    def __add__(self, other: "Objective") -> "Objective":
        if not isinstance(other, Objective):
            return NotImplemented
        return Objective(_unique_names(self.terms + other.terms))

    def __mul__(self, weight: float) -> "Objective":
        if isinstance(weight, Objective):
            return NotImplemented
        return Objective(tuple(dataclasses.replace(t, weight=t.weight * float(weight)) for t in self.terms))

    __rmul__ = __mul__

    def __neg__(self) -> "Objective":
        return self * -1.0

    def __sub__(self, other: "Objective") -> "Objective":
        return self + (-other)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.terms)

    def without_zero_weights(self) -> "Objective":
        return Objective(tuple(t for t in self.terms if t.weight != 0.0))

    def evaluate(self, inputs: ObjectiveInputs) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(weighted total per item (B,), {term name: unweighted value per item (B,)})."""
        values = {t.name: t.fn(inputs) for t in self.terms}
        total = sum(t.weight * values[t.name] for t in self.terms)
        return total, values


def _unique_names(terms: Sequence[Term]) -> tuple[Term, ...]:
    seen: dict[str, int] = {}
    out = []
    for t in terms:
        n = seen.get(t.name, 0)
        seen[t.name] = n + 1
        out.append(t if n == 0 else dataclasses.replace(t, name=f"{t.name}_{n + 1}"))
    return tuple(out)


def term(name: str, fn: TermFn, weight: float = 1.0) -> Objective:
    """An objective of one custom term; fn(ObjectiveInputs) -> (B,)."""
    return Objective((Term(name, fn, float(weight)),))


def _per_item_sum(x: jax.Array) -> jax.Array:
    return jnp.sum(jnp.reshape(x, (x.shape[0], -1)), axis=1)


def _per_item_mean(x: jax.Array) -> jax.Array:
    return jnp.mean(jnp.reshape(x, (x.shape[0], -1)), axis=1)


def _target(inputs: ObjectiveInputs, key: str) -> Any:
    if key not in inputs.targets:
        raise ObjectiveError(
            f"objective needs targets[{key!r}], but the targets have keys {sorted(inputs.targets)}"
        )
    return inputs.targets[key]


# ------------------------------------------------------------------------------------ feature terms
# Terms are frozen dataclasses (hashable by value) rather than closures, so that two objectives built
# the same way compare equal and the render loop can reuse its compiled step for them.
def normalized_feature_error(features: Any, targets: Any) -> jax.Array:
    """||T - phi||^2 / ||T||^2 per item, pooled over all leaves of matching pytrees."""
    f_leaves, f_tree = jax.tree.flatten(features)
    t_leaves, t_tree = jax.tree.flatten(targets)
    if f_tree != t_tree:
        raise ObjectiveError(f"features {f_tree} and targets {t_tree} have different structures")
    err = 0.0
    norm = 0.0
    for f, t in zip(f_leaves, t_leaves):
        if f.shape != t.shape:
            raise ObjectiveError(f"feature shape {f.shape} does not match target shape {t.shape}")
        err = err + _per_item_sum(jnp.square(t - f))
        norm = norm + _per_item_sum(jnp.square(t))
    # A zero target would divide by zero; its error is then reported unnormalised.
    return err / jnp.where(norm > 0, norm, 1.0)


@dataclasses.dataclass(frozen=True)
class _FeatureMatch:
    target_key: str
    select: Callable[[Any], Any] | None

    def __call__(self, inputs: ObjectiveInputs) -> jax.Array:
        features = inputs.outputs if self.select is None else self.select(inputs.outputs)
        return normalized_feature_error(features, _target(inputs, self.target_key))


def feature_match(
    target_key: str = "features",
    select: Callable[[Any], Any] | None = None,
    name: str = "feature_match",
) -> Objective:
    """||T - phi(x)||^2 / ||T||^2 per item, with phi = select(model outputs) (all outputs by default)."""
    return term(name, _FeatureMatch(target_key, select))


# --------------------------------------------------------------------------------------- head terms
def head_scores(
    head_logits: Sequence[jax.Array], head_targets: jax.Array, mode: str = "log_prob"
) -> jax.Array:
    """Sum over heads with a target (>= 0) of the target class's score; (B,).

    head_logits: sequence of (B, n_h) arrays, one per head. head_targets: int (B, num_heads), -1 where
    the head is not pushed. mode: 'log_prob' (log-softmax), 'logit' (raw) or 'prob' (softmax).
    """
    if mode not in HEAD_MODES:
        raise ObjectiveError(f"unknown head mode {mode!r}; valid: {', '.join(HEAD_MODES)}")
    head_logits = list(head_logits)
    if head_targets.ndim != 2 or head_targets.shape[1] != len(head_logits):
        raise ObjectiveError(
            f"head targets must have shape (batch, {len(head_logits)}) for {len(head_logits)} heads, "
            f"got {tuple(head_targets.shape)}"
        )
    total = 0.0
    for h, logits in enumerate(head_logits):
        if mode == "log_prob":
            scores = jax.nn.log_softmax(logits, axis=-1)
        elif mode == "prob":
            scores = jax.nn.softmax(logits, axis=-1)
        else:
            scores = logits
        target = head_targets[:, h]
        picked = jnp.take_along_axis(scores, jnp.maximum(target, 0)[:, None], axis=-1)[:, 0]
        total = total + jnp.where(target >= 0, picked, 0.0)
    return total


@dataclasses.dataclass(frozen=True)
class _HeadScore:
    target_key: str
    select: Callable[[Any], Sequence[jax.Array]] | None
    mode: str

    def __call__(self, inputs: ObjectiveInputs) -> jax.Array:
        logits = inputs.outputs if self.select is None else self.select(inputs.outputs)
        return -head_scores(logits, _target(inputs, self.target_key), self.mode)


def head_objective(
    target_key: str = "heads",
    select: Callable[[Any], Sequence[jax.Array]] | None = None,
    mode: str = "log_prob",
    name: str = "heads",
) -> Objective:
    """Class visualisation: minimise minus the chosen heads' scores for the target classes.

    The model output (or select(output)) must be a sequence of per-head logits (B, n_h); targets[
    target_key] is int (B, num_heads) with -1 for heads that are not pushed (schema.head_targets).
    """
    if mode not in HEAD_MODES:
        raise ObjectiveError(f"unknown head mode {mode!r}; valid: {', '.join(HEAD_MODES)}")
    return term(name, _HeadScore(target_key, select, mode))


# ----------------------------------------------------------------------------------- regularisers
@dataclasses.dataclass(frozen=True)
class _TotalVariation:
    beta: float

    def __call__(self, inputs: ObjectiveInputs) -> jax.Array:
        x = inputs.images
        dy = x[:, 1:, :-1, :] - x[:, :-1, :-1, :]
        dx = x[:, :-1, 1:, :] - x[:, :-1, :-1, :]
        sq = dx * dx + dy * dy
        if self.beta == 2.0:
            return _per_item_mean(sq)
        # A small epsilon keeps the gradient finite where the image is flat.
        return _per_item_mean((sq + 1e-8) ** (self.beta / 2.0))


def total_variation(beta: float = 2.0, name: str = "total_variation") -> Objective:
    """Mean over pixels of (dx^2 + dy^2)^(beta/2) (beta=2: squared gradient, beta=1: isotropic TV)."""
    return term(name, _TotalVariation(float(beta)))


@dataclasses.dataclass(frozen=True)
class _L2Decay:
    center: float

    def __call__(self, inputs: ObjectiveInputs) -> jax.Array:
        return _per_item_mean(jnp.square(inputs.images - self.center))


def l2_decay(center: float = 0.5, name: str = "l2_decay") -> Objective:
    """Mean squared distance of the pixels from `center` (mid-grey by default)."""
    return term(name, _L2Decay(float(center)))


@dataclasses.dataclass(frozen=True)
class _PixelRange:
    low: float
    high: float

    def __call__(self, inputs: ObjectiveInputs) -> jax.Array:
        x = inputs.images
        excess = jnp.square(jax.nn.relu(x - self.high)) + jnp.square(jax.nn.relu(self.low - x))
        return _per_item_mean(excess)


def pixel_range(low: float = 0.0, high: float = 1.0, name: str = "pixel_range") -> Objective:
    """Mean squared amount by which pixels leave [low, high] (for unconstrained pixel parameters)."""
    return term(name, _PixelRange(float(low), float(high)))


@dataclasses.dataclass(frozen=True)
class _CoefficientPrior:
    mean_key: str | None = None
    std_key: str | None = None

    def __call__(self, inputs: ObjectiveInputs) -> jax.Array:
        if inputs.params is None:
            raise ObjectiveError("coefficient_prior needs the parameters (ObjectiveInputs.params)")
        z = inputs.params
        if self.mean_key is not None:
            z = (z - _target(inputs, self.mean_key)) / _target(inputs, self.std_key)
        return _per_item_mean(jnp.square(z))


def coefficient_prior(name: str = "coefficient_prior", *, mean_key: str | None = None,
                      std_key: str | None = None) -> Objective:
    """Mean squared parameter: with param='pca' (unit-variance coefficients) this is the negative
    log-likelihood of the image under the prior's Gaussian model, up to scale and a constant.

    With mean_key and std_key, a per-item Gaussian N(targets[mean_key], diag(targets[std_key]^2)) instead:
    the attribute-conditional prior (cgmm.image_prior.fit_conditional_prior) of each item's request.
    """
    if (mean_key is None) != (std_key is None):
        raise ObjectiveError("coefficient_prior needs both mean_key and std_key, or neither")
    return term(name, _CoefficientPrior(mean_key, std_key))


def regularizers(tv_weight: float = 0.0, l2_weight: float = 0.0, range_weight: float = 0.0) -> Objective:
    """The standard image priors with the given weights; zero-weight terms are left out."""
    out = Objective(())
    if tv_weight:
        out = out + tv_weight * total_variation()
    if l2_weight:
        out = out + l2_weight * l2_decay()
    if range_weight:
        out = out + range_weight * pixel_range()
    return out
