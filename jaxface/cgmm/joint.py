"""A joint linear-Gaussian target model (beyond the report).

The report averages independent per-attribute means (eq. 2), so every target is pulled toward the mean
face and absent attributes carry no information. Here the activations are modelled given the whole
attribute vector, present and absent attributes alike:

    phi = W^T [a; 1] + eps,     eps ~ N(0, diag(s^2))   (one residual variance per unit)

fitted in closed form by ridge regression (the bias is not penalised):
    (X^T X + N lam diag(1,...,1,0)) W = X^T Y,   s^2 = (1/N) sum_i (y_i - W^T x_i)^2.

Everything comes from streamed sums, one pass, sharded like the attribute statistics.

Masked (unknown) labels are imputed with the attribute's mean rate among known labels (its prior). The
rate is only known at the end of the pass, so the pass keeps the pieces the imputed Gram matrix is made
of: with a_bar = m*a (known labels, 0 where unknown) and u = 1 - m,
    X = a_bar + u diag(r)  =>  X^T X = S_aa + S_au diag(r) + diag(r) S_au^T + diag(r) S_uu diag(r),
    X^T Y = S_ay + diag(r) S_uy,
with S_aa = a_bar^T a_bar, S_au = a_bar^T u, S_uu = u^T u, S_ay = a_bar^T Y, S_uy = u^T Y. Imputing the
mean keeps the regression unbiased under labels missing at random and treats a missing label as "no
information" rather than as "absent".

Numerics: Y is shifted by the first batch's mean before the sums, so the float32 sums of Y and Y^2 do
not cancel catastrophically when computing the residual variance; the (K+1) x (K+1) solve and the
residual variances are computed once, on the host, in float64.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from jax.sharding import Mesh

from jaxface.cgmm.stats import (
    HIGHEST,
    StatsInputError,
    ones_like_labels,
    unpack_batch,
    mesh_of,
    place_batch,
    replicated,
)

DEFAULT_JOINT_LAMBDA = 1e-3
_VAR_FLOOR = 1e-12


class JointState(NamedTuple):
    n: jax.Array  # () valid examples (float32)
    shift: jax.Array  # (D,) subtracted from every activation before summing
    s_aa: jax.Array  # (K, K)
    s_au: jax.Array  # (K, K)
    s_uu: jax.Array  # (K, K)
    s_a: jax.Array  # (K,) known positives
    s_u: jax.Array  # (K,) unknown labels
    s_ay: jax.Array  # (K, D)
    s_uy: jax.Array  # (K, D)
    s_y: jax.Array  # (D,)
    s_yy: jax.Array  # (D,)


@dataclasses.dataclass
class JointModel:
    """phi | a ~ N(a @ coef + bias, diag(resid_var))."""

    coef: np.ndarray  # (K, D)
    bias: np.ndarray  # (D,)
    resid_var: np.ndarray  # (D,)
    prior_rate: np.ndarray  # (K,) rate of each attribute among known labels
    impute_rate: np.ndarray  # (K,) value used for unknown labels in the fit
    lam: float
    num_examples: int

    @property
    def num_attributes(self) -> int:
        return int(self.coef.shape[0])

    @property
    def dim(self) -> int:
        return int(self.coef.shape[1])

    def predict(self, attributes) -> jax.Array:
        """(..., K) attribute vectors (0/1 or rates) -> (..., D) mean activations."""
        return predict(jnp.asarray(self.coef), jnp.asarray(self.bias), jnp.asarray(attributes, jnp.float32))

    def sample(self, attributes, key: jax.Array) -> jax.Array:
        """Mean plus per-unit Gaussian residual noise, one draw per leading index."""
        return sample(
            jnp.asarray(self.coef), jnp.asarray(self.bias), jnp.asarray(self.resid_var),
            jnp.asarray(attributes, jnp.float32), key,
        )

    def arrays(self) -> dict:
        return dict(
            joint_coef=self.coef, joint_bias=self.bias, joint_resid_var=self.resid_var,
            joint_prior_rate=self.prior_rate, joint_impute_rate=self.impute_rate,
        )


@jax.jit
def predict(coef, bias, attributes):
    return jnp.matmul(attributes, coef, precision=HIGHEST) + bias


@jax.jit
def sample(coef, bias, resid_var, attributes, key):
    mean = predict(coef, bias, attributes)
    return mean + jnp.sqrt(resid_var) * jax.random.normal(key, mean.shape, mean.dtype)


class JointStats:
    """Streaming sums for the joint model; mirrors AttributeStats (init / update / finalize)."""

    def __init__(self, num_attributes: int, dim: int, *, mesh: Mesh | None = None, data_axis: str = "data"):
        if num_attributes < 1 or dim < 1:
            raise StatsInputError(f"need num_attributes >= 1 and dim >= 1, got {num_attributes}, {dim}")
        self.num_attributes = int(num_attributes)
        self.dim = int(dim)
        self.mesh = mesh
        self.data_axis = data_axis

    def init(self) -> JointState:
        k, d = self.num_attributes, self.dim
        z = lambda *shape: jnp.zeros(shape, jnp.float32)  # noqa: E731
        state = JointState(z(), z(d), z(k, k), z(k, k), z(k, k), z(k), z(k), z(k, d), z(k, d), z(d), z(d))
        if self.mesh is not None:
            state = jax.device_put(state, replicated(self.mesh))
        return state

    def update(self, state: JointState, acts, attributes, attribute_mask=None, *, valid=None) -> JointState:
        shape = np.shape(acts)
        if len(shape) != 2 or shape[1] != self.dim:
            raise StatsInputError(f"activations must be (batch, {self.dim}), got {shape}")
        if np.shape(attributes) != (shape[0], self.num_attributes):
            raise StatsInputError(
                f"attributes must be ({shape[0]}, {self.num_attributes}), got {np.shape(attributes)}"
            )
        if attribute_mask is None:
            attribute_mask = ones_like_labels(attributes, bool)
        if valid is None:
            valid = ones_like_labels(attributes, bool, rows_only=True)
        inputs = place_batch(
            self.mesh, dict(acts=acts, attributes=attributes, mask=attribute_mask, valid=valid), self.data_axis
        )
        mesh = self.mesh or mesh_of(inputs["acts"])
        if mesh is not None:
            state = jax.device_put(state, replicated(mesh))
        return _joint_update_fn(mesh)(
            state, inputs["acts"], inputs["attributes"], inputs["mask"], inputs["valid"]
        )

    def finalize(self, state: JointState, lam: float = DEFAULT_JOINT_LAMBDA, impute_rate=None) -> JointModel:
        return finalize_joint(state, lam=lam, impute_rate=impute_rate)


def _joint_update(state, acts, attributes, mask, valid, *, out_sharding):
    k = attributes.shape[1]
    acts = acts.astype(jnp.float32)
    v = valid.astype(jnp.float32)[:, None]
    m = mask.astype(jnp.float32)
    a_bar = (attributes > 0.5).astype(jnp.float32) * m * v
    u = (1.0 - m) * v
    n_b = jnp.sum(v)
    batch_mean = jnp.sum(acts * v, axis=0) / jnp.maximum(n_b, 1.0)
    shift = jnp.where(state.n > 0, state.shift, batch_mean)
    z = jnp.concatenate([a_bar, u, v], axis=1)  # (B, 2K + 1); zero rows for padding
    zz = jnp.matmul(z.T, z, precision=HIGHEST, out_sharding=out_sharding)
    # z^T (Y - shift) without a (B, D) temporary (see stats.batch_moments)
    zy = jnp.matmul(z.T, acts, precision=HIGHEST, out_sharding=out_sharding)
    zy = zy - jnp.sum(z, axis=0)[:, None] * shift[None, :]
    yy = jnp.sum(v * (acts - shift) ** 2, axis=0)
    return JointState(
        n=state.n + n_b,
        shift=shift,
        s_aa=state.s_aa + zz[:k, :k],
        s_au=state.s_au + zz[:k, k : 2 * k],
        s_uu=state.s_uu + zz[k : 2 * k, k : 2 * k],
        s_a=state.s_a + zz[:k, 2 * k],
        s_u=state.s_u + zz[k : 2 * k, 2 * k],
        s_ay=state.s_ay + zy[:k],
        s_uy=state.s_uy + zy[k : 2 * k],
        s_y=state.s_y + zy[2 * k],
        s_yy=state.s_yy + yy,
    )



_UPDATE_FNS: dict = {}


def _joint_update_fn(mesh):
    """One jitted update per mesh, shared by every JointStats."""
    fn = _UPDATE_FNS.get(mesh)
    if fn is None:
        out = replicated(mesh)
        fn = _UPDATE_FNS[mesh] = jax.jit(functools.partial(_joint_update, out_sharding=out), out_shardings=out)
    return fn


def finalize_joint(state: JointState, *, lam: float = DEFAULT_JOINT_LAMBDA, impute_rate=None) -> JointModel:
    """Solve the ridge normal equations in float64 on the host."""
    if lam < 0:
        raise StatsInputError(f"the joint model's ridge lambda must be >= 0, got {lam}")
    s = jax.tree.map(lambda x: np.asarray(x, np.float64), state)
    n = float(s.n)
    if n < 1:
        raise StatsInputError("the joint model saw no examples")
    k = s.s_a.shape[0]
    known = n - s.s_u
    prior = np.where(known > 0, s.s_a / np.maximum(known, 1.0), 0.0)
    rate = prior if impute_rate is None else np.asarray(impute_rate, np.float64)
    if rate.shape != (k,):
        raise StatsInputError(f"impute_rate must have shape ({k},), got {rate.shape}")
    xtx = s.s_aa + s.s_au * rate[None, :] + rate[:, None] * s.s_au.T + np.outer(rate, rate) * s.s_uu
    sx = s.s_a + rate * s.s_u
    gram = np.zeros((k + 1, k + 1))
    gram[:k, :k] = xtx
    gram[:k, k] = gram[k, :k] = sx
    gram[k, k] = n
    rhs = np.concatenate([s.s_ay + rate[:, None] * s.s_uy, s.s_y[None, :]], axis=0)  # (K+1, D)
    penalty = np.diag(np.r_[np.full(k, n * lam), 0.0])
    system = gram + penalty
    # Exclusive attribute groups make [a; 1] collinear (a one-hot group sums to the bias column), so
    # with lam = 0 the system can be singular: fall back to the minimum-norm least-squares solution.
    try:
        w = scipy.linalg.solve(system, rhs, assume_a="pos")
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError):
        w = np.linalg.lstsq(system, rhs, rcond=None)[0]
    sq = s.s_yy - 2.0 * np.sum(w * rhs, axis=0) + np.sum(w * (gram @ w), axis=0)
    resid_var = np.maximum(sq / n, _VAR_FLOOR)
    return JointModel(
        coef=w[:k].astype(np.float32),
        bias=(w[k] + s.shift).astype(np.float32),
        resid_var=resid_var.astype(np.float32),
        prior_rate=prior.astype(np.float32),
        impute_rate=rate.astype(np.float32),
        lam=float(lam),
        num_examples=int(round(n)),
    )


def fit_joint(
    batches: Iterable,
    num_attributes: int,
    dim: int,
    *,
    lam: float = DEFAULT_JOINT_LAMBDA,
    mesh: Mesh | None = None,
    data_axis: str = "data",
) -> JointModel:
    """Stream (acts, attributes[, mask]) batches (or dicts, as fit_attribute_stats) and fit."""
    stats = JointStats(num_attributes, dim, mesh=mesh, data_axis=data_axis)
    state = stats.init()
    seen = 0
    for batch in batches:
        kw = unpack_batch(batch)
        acts = kw["acts"]
        if np.ndim(acts) > 2:
            acts = acts.reshape(np.shape(acts)[0], -1)
        state = stats.update(state, acts, kw["attributes"], kw["attribute_mask"], valid=kw["valid"])
        seen += 1
    if not seen:
        raise StatsInputError("no batches: cannot fit the joint model on an empty dataset")
    return stats.finalize(state, lam=lam)


def prediction_error(model: JointModel, acts, attributes, attribute_mask=None) -> float:
    """Mean squared error ||phi - E[phi | a]||^2 per image, unknown labels imputed as in the fit."""
    attributes = np.asarray(attributes, np.float32)
    if attribute_mask is not None:
        attributes = np.where(np.asarray(attribute_mask, bool), attributes, model.impute_rate[None, :])
    pred = model.predict(attributes)
    return float(jnp.mean(jnp.sum((jnp.asarray(acts, jnp.float32) - pred) ** 2, axis=1)))
