"""Target activations for a set of attributes C: the report's equation (2), or the joint model.

cGMM (eq. 2):  s = (1/|C|) sum_i 1_i w_i z_i,  with z_i = mu_i (mode='mean', the report's choice) or
z_i ~ N(mu_i, diag(sigma_i^2)) independently (mode='sample', the report's suggested improvement).
With c_i = 1_i w_i / |C|, a sum of independent Gaussians is Gaussian, so the sample is drawn exactly as
    s = c @ mu + sqrt(c^2 @ sigma^2) * eps,   eps ~ N(0, I_D),
the same distribution as drawing each z_i, at the cost of one D-vector of noise per target.

Joint model: the requested attributes are set to 1 and the other members of their exclusive groups to 0
(a face has one hair colour). Every other attribute is `unspecified`:
  'prior'  (default) its rate in the training data. Under the linear model E[phi | requested] =
           W^T E[a | requested], and the prior is the best estimate of E[a_j] for an attribute the user
           said nothing about, so the target is a typical face with the requested attributes;
  'absent' 0. This asserts "none of the other attributes": attribute vectors like that (no hair colour,
           no eyewear state, ...) are rare in training data, so the target is extrapolated and biased.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxface.cgmm.stats import HIGHEST
from jaxface.cgmm.store import CGMMStore
from jaxface.data.schema import UnknownAttributeError, normalize_name

MODES = ("mean", "sample")
MODELS = ("cgmm", "joint")
UNSPECIFIED = ("prior", "absent")


class TargetSpecError(ValueError):
    """An attribute set or option that cannot produce target activations."""


def _choices(name: str, value, valid) -> None:
    if value not in valid:
        raise TargetSpecError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")


def resolve_attributes(store: CGMMStore, names: Sequence[str] | str) -> list[int]:
    """Attribute names (list or comma-separated) -> sorted unique schema indices of modelled attributes."""
    valid = store.valid_attribute_names
    listing = "valid names: " + ", ".join(valid)
    if isinstance(names, str):
        names = [t for t in (s.strip() for s in names.split(",")) if t]
    names = [n for n in names if str(n).strip()]
    if not names:
        raise TargetSpecError(f"no attributes given: name at least one; {listing}")
    indices = []
    for name in names:
        try:
            index = store.schema.index(name)
        except UnknownAttributeError:
            import difflib

            close = difflib.get_close_matches(
                normalize_name(name), [normalize_name(v) for v in valid], n=3, cutoff=0.5
            )
            lookup = {normalize_name(v): v for v in valid}
            hint = f" (closest: {', '.join(lookup[c] for c in close)})" if close else ""
            raise TargetSpecError(f"unknown attribute {name!r}{hint}; {listing}") from None
        if index in store.excluded:
            raise TargetSpecError(
                f"attribute {store.schema.attribute_names[index]!r} was excluded from the fitted model "
                f"(only {int(store.count[index])} examples, fewer than min_count={store.min_count}); {listing}"
            )
        indices.append(index)
    return sorted(set(indices))


def indicator(store: CGMMStore, names: Sequence[str] | str) -> np.ndarray:
    """The (K,) 0/1 vector 1_i of an attribute set."""
    ind = np.zeros(store.num_attributes, np.float32)
    ind[resolve_attributes(store, names)] = 1.0
    return ind


# --------------------------------------------------------------------------------- jitted cores
@functools.partial(jax.jit, static_argnames=("mode",))
def cgmm_targets(mu, var, weights, indicators, keys, *, mode: str = "mean"):
    """Equation (2) for T attribute sets at once: indicators (T, K), keys (T,) -> (T, D).

    Rows of mu/var for attributes outside every set are never read (NaN rows of excluded attributes
    are masked out, not multiplied by zero).
    """
    used = jnp.any(indicators > 0, axis=0)
    mu = jnp.where(used[:, None], mu, 0.0)
    var = jnp.where(used[:, None], var, 0.0)
    size = jnp.maximum(jnp.sum(indicators, axis=1, keepdims=True), 1.0)
    coeff = indicators * weights[None, :] / size  # (T, K): c_i = 1_i w_i / |C|
    mean = jnp.matmul(coeff, mu, precision=HIGHEST)
    if mode == "mean":
        return mean
    std = jnp.sqrt(jnp.matmul(coeff * coeff, var, precision=HIGHEST))
    noise = jax.vmap(lambda k: jax.random.normal(k, mean.shape[1:], mean.dtype))(keys)
    return mean + std * noise


@functools.partial(jax.jit, static_argnames=("mode",))
def joint_targets(coef, bias, resid_var, attribute_vectors, keys, *, mode: str = "mean"):
    """Joint-model targets for T attribute vectors (T, K) -> (T, D): mean, or mean + per-unit noise."""
    mean = jnp.matmul(attribute_vectors, coef, precision=HIGHEST) + bias
    if mode == "mean":
        return mean
    noise = jax.vmap(lambda k: jax.random.normal(k, mean.shape[1:], mean.dtype))(keys)
    return mean + jnp.sqrt(resid_var) * noise


def joint_attribute_vector(store: CGMMStore, indices: Sequence[int], unspecified: str = "prior") -> np.ndarray:
    """(K,) input of the joint model for a requested set (see the module docstring)."""
    _choices("unspecified", unspecified, UNSPECIFIED)
    if store.joint is None:
        raise TargetSpecError("this fitted model has no joint model; refit with the joint model enabled")
    k = store.num_attributes
    vec = (store.joint.prior_rate.astype(np.float32).copy() if unspecified == "prior"
           else np.zeros(k, np.float32))
    schema = store.schema
    for i in indices:  # siblings in an exclusive group are absent
        group = schema.groups[int(schema.attribute_head[i])]
        if not group.is_binary:
            vec[list(schema.head_attribute_indices[int(schema.attribute_head[i])])] = 0.0
    vec[list(indices)] = 1.0
    return vec


def _keys(key, num: int):
    if isinstance(key, (int, np.integer)):
        key = jax.random.key(int(key))
    elif key is None:
        raise TargetSpecError("a PRNG key (or integer seed) is required")
    return jax.random.split(key, num)


def make_targets(
    store: CGMMStore,
    attribute_names: Sequence[str] | str,
    num: int = 1,
    mode: str = "mean",
    key: jax.Array | int = 0,
    model: str = "cgmm",
    unspecified: str = "prior",
) -> jax.Array:
    """`num` target activations (num, D) for one attribute set; reshape to store.layer_shape if needed.

    mode='mean' gives `num` identical targets (the report's choice); mode='sample' draws one per key.
    """
    return make_targets_for_sets(store, [attribute_names], num, mode, key, model, unspecified)


def make_targets_for_sets(
    store: CGMMStore,
    attribute_sets: Sequence[Sequence[str] | str],
    num_per_set: int = 1,
    mode: str = "mean",
    key: jax.Array | int = 0,
    model: str = "cgmm",
    unspecified: str = "prior",
) -> jax.Array:
    """Targets for several sets in one call: (len(sets) * num_per_set, D), set-major order."""
    _choices("mode", mode, MODES)
    _choices("model", model, MODELS)
    _choices("unspecified", unspecified, UNSPECIFIED)
    if int(num_per_set) < 1:
        raise TargetSpecError(f"num must be at least 1, got {num_per_set}")
    if not len(attribute_sets):
        raise TargetSpecError("no attribute sets given")
    resolved = [resolve_attributes(store, names) for names in attribute_sets]
    total = len(resolved) * int(num_per_set)
    keys = _keys(key, total)
    if model == "cgmm":
        ind = np.zeros((len(resolved), store.num_attributes), np.float32)
        for row, idx in enumerate(resolved):
            ind[row, idx] = 1.0
        ind = np.repeat(ind, num_per_set, axis=0)
        return cgmm_targets(
            jnp.asarray(store.mean), jnp.asarray(store.var), jnp.asarray(store.weights),
            jnp.asarray(ind), keys, mode=mode,
        )
    vectors = np.stack([joint_attribute_vector(store, idx, unspecified) for idx in resolved])
    vectors = np.repeat(vectors, num_per_set, axis=0)
    joint = store.joint
    return joint_targets(
        jnp.asarray(joint.coef), jnp.asarray(joint.bias), jnp.asarray(joint.resid_var),
        jnp.asarray(vectors), keys, mode=mode,
    )


def target_fidelity(
    store: CGMMStore,
    attribute_sets: Sequence[Sequence[str] | str],
    acts,
    attributes,
    attribute_mask=None,
    *,
    model: str = "cgmm",
    unspecified: str = "prior",
    min_images: int = 10,
) -> list[dict]:
    """How well mean-mode targets match real images that have the requested attributes.

    For each set C: m_C = mean activation of the images (in `acts`, (N, D)) that have every attribute
    of C, m = mean of all images, T = the target. relative_error = ||T - m_C||^2 / ||m_C - m||^2 is the
    fraction of the attribute signal the target misses: 0 is perfect, 1 is no better than the average
    image (the "washed-out" failure the report describes). Sets with fewer than `min_images` such
    images get NaN.
    """
    acts = np.asarray(acts, np.float32)
    present = np.asarray(attributes) > 0.5
    if attribute_mask is not None:
        present &= np.asarray(attribute_mask, bool)
    overall = acts.mean(axis=0, dtype=np.float64)
    resolved = [resolve_attributes(store, names) for names in attribute_sets]
    predicted = np.asarray(
        make_targets_for_sets(store, [[store.schema.attribute_names[i] for i in idx] for idx in resolved],
                              1, "mean", 0, model, unspecified),
        np.float64,
    )
    results = []
    for idx, target in zip(resolved, predicted):
        rows = np.all(present[:, idx], axis=1)
        count = int(rows.sum())
        names = [store.schema.attribute_names[i] for i in idx]
        if count < min_images:
            results.append(dict(attributes=names, num_images=count, relative_error=float("nan")))
            continue
        conditional = acts[rows].mean(axis=0, dtype=np.float64)
        signal = float(np.sum((conditional - overall) ** 2))
        error = float(np.sum((target - conditional) ** 2))
        results.append(dict(attributes=names, num_images=count,
                            relative_error=error / signal if signal > 0 else float("nan")))
    return results
