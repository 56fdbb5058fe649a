"""Per-attribute diagonal Gaussians of one layer's activations, streamed and sharded.

For every attribute i the report (section 3.3.2) models the activations of the images that have it as
N(mu_i, diag(sigma_i^2)). Here those moments are accumulated batch by batch: with the (masked) label
matrix L (B, K) and activations X (B, D), the products L^T X and L^T (X - c)^2 give every attribute's
sums at once, so nothing but O(K D) state is ever held. Batches may be global jax.Arrays sharded over a mesh axis
('data' on the batch dimension); the contraction over the batch runs across devices and XLA inserts the
all-reduce, leaving the accumulator replicated.

Numerics (why not plain sums of x and x^2 in float32): var = E[x^2] - E[x]^2 cancels catastrophically
when |mean| >> std, and float32 sums over tens of thousands of images lose digits. Each batch is
therefore reduced to per-attribute (count, mean, M2) around a shift (the batch's own mean activation,
which is close to every attribute's mean), and batches are merged with Chan et al.'s pairwise update
    n = n_a + n_b,  mean = mean_a + d n_b / n,  M2 = M2_a + M2_b + d^2 n_a n_b / n,  d = mean_b - mean_a.
The remaining in-batch cancellation is only of size (mu_i - shift)^2 / sigma^2, so float32 accumulation
on device is enough and no float64 host copy of the activations is needed. Matmuls use HIGHEST precision
so TPUs do not silently drop to bfloat16 passes.

Protocol option (the report's "equal-size random subsets S_i"): a `SubsetSelection` gives every
(example, attribute) pair a pseudo-random 32-bit priority from (seed, example id, attribute), and S_i is
the `subset_size` positives of attribute i with the smallest (priority, id). This is a uniform random
subset of size min(subset_size, count_i) (bottom-k sampling). The thresholds come from one cheap pass
over the labels alone (`SubsetSelection.from_labels`); the activation pass then keeps a pair exactly
when its priority is at or below the threshold, so selection streams and is independent of batching,
order and sharding. It needs stable example ids (e.g. dataset indices), unique per example.

Attributes whose count is below `min_count` are excluded: they are listed in the result, logged, their
mean/var rows are NaN (so accidental use is loud) and `included` is False for them.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Iterable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

logger = logging.getLogger(__name__)

HIGHEST = jax.lax.Precision.HIGHEST
DEFAULT_MIN_COUNT = 10
_NO_THRESHOLD_PRIORITY = np.uint32(0xFFFFFFFF)
_NO_THRESHOLD_ID = np.int32(np.iinfo(np.int32).max)


class StatsInputError(ValueError):
    """Activations, labels or options that do not fit together."""


# ------------------------------------------------------------------------------------ mesh helpers
def mesh_of(x: Any) -> Mesh | None:
    """The mesh a jax.Array is laid out on (None for host arrays and single-device arrays)."""
    sharding = getattr(x, "sharding", None)
    if isinstance(sharding, NamedSharding) and sharding.mesh.size > 1:
        return sharding.mesh
    return None


def replicated(mesh: Mesh | None) -> NamedSharding | None:
    return None if mesh is None else NamedSharding(mesh, P())


def place_batch(
    mesh: Mesh | None, arrays: Mapping[str, Any], data_axis: str = "data"
) -> dict[str, Any]:
    """Host arrays -> batch-sharded global arrays on `mesh`, padded with `valid=False` rows.

    Arrays already laid out on a mesh pass through untouched (multi-host pipelines build global arrays
    themselves). Without a mesh, arrays pass through as they are. `arrays` must contain 'valid'.
    """
    if mesh is None or all(mesh_of(v) is not None for v in arrays.values() if v is not None):
        return dict(arrays)
    shards = mesh.shape[data_axis]
    first = next(v for v in arrays.values() if v is not None)
    batch = int(np.shape(first)[0])
    pad = (-batch) % shards
    sharding = NamedSharding(mesh, P(data_axis))
    placed = {}
    for name, value in arrays.items():
        if value is None:
            placed[name] = None
            continue
        host = np.asarray(value)
        if pad:
            widths = [(0, pad)] + [(0, 0)] * (host.ndim - 1)
            host = np.pad(host, widths)  # zeros; padded rows get valid=False below
        placed[name] = jax.device_put(host, sharding)
    return placed


# -------------------------------------------------------------------------------------- selection
def selection_priorities(seed: int, example_ids: jax.Array, num_attributes: int) -> jax.Array:
    """(B,) int ids -> (B, K) uint32 priorities, a pure function of (seed, id, attribute)."""
    key = jax.random.key(jnp.asarray(seed, jnp.uint32))
    ids = jnp.asarray(example_ids, jnp.int32)
    return jax.vmap(lambda i: jax.random.bits(jax.random.fold_in(key, i), (num_attributes,), jnp.uint32))(
        ids
    )


_priorities_jit = jax.jit(selection_priorities, static_argnums=2)


@dataclasses.dataclass(frozen=True)
class SubsetSelection:
    """Per-attribute thresholds that select min(subset_size, count_i) positives uniformly at random."""

    seed: int
    subset_size: int
    threshold_priority: np.ndarray  # (K,) uint32
    threshold_id: np.ndarray  # (K,) int32
    subset_counts: np.ndarray  # (K,) resulting |S_i|

    @classmethod
    def from_labels(
        cls,
        attributes: np.ndarray,
        attribute_mask: np.ndarray | None,
        example_ids: np.ndarray,
        subset_size: int,
        seed: int,
        *,
        chunk: int = 65536,
    ) -> "SubsetSelection":
        """One pass over the labels of the whole dataset (no activations needed)."""
        if int(subset_size) < 1:
            raise StatsInputError(f"subset_size must be a positive integer, got {subset_size!r}")
        attributes = np.asarray(attributes, np.float32)
        num, k = attributes.shape
        mask = np.ones((num, k), bool) if attribute_mask is None else np.asarray(attribute_mask, bool)
        ids = np.asarray(example_ids)
        if ids.shape != (num,):
            raise StatsInputError(f"example_ids must have shape ({num},), got {ids.shape}")
        if ids.min(initial=0) < 0 or ids.max(initial=0) > np.iinfo(np.int32).max - 1:
            raise StatsInputError("example_ids must be non-negative and fit in int32")
        ids = ids.astype(np.int32)
        if np.unique(ids).size != num:
            raise StatsInputError("example_ids must be unique: equal-size subsets rely on them")
        positive = (attributes > 0.5) & mask
        prio = np.concatenate(
            [np.asarray(_priorities_jit(int(seed), ids[s : s + chunk], k)) for s in range(0, num, chunk)]
        ) if num else np.zeros((0, k), np.uint32)
        thr_p = np.full(k, _NO_THRESHOLD_PRIORITY, np.uint32)
        thr_i = np.full(k, _NO_THRESHOLD_ID, np.int32)
        counts = np.zeros(k, np.int64)
        for a in range(k):
            rows = np.flatnonzero(positive[:, a])
            counts[a] = min(rows.size, subset_size)
            if rows.size > subset_size:
                order = np.lexsort((ids[rows], prio[rows, a]))  # by priority, ties by id
                last = rows[order[subset_size - 1]]
                thr_p[a], thr_i[a] = prio[last, a], ids[last]
        return cls(int(seed), int(subset_size), thr_p, thr_i, counts)

    def select(self, example_ids: jax.Array) -> jax.Array:
        """(B,) ids -> (B, K) bool: which (example, attribute) pairs fall in the subsets (jittable)."""
        seed, threshold_priority, threshold_id = self.arrays()
        return _select(seed, example_ids, threshold_priority, threshold_id)

    def arrays(self) -> tuple:
        """(seed, threshold priorities, threshold ids): the traced arguments of the selection."""
        return np.uint32(self.seed), self.threshold_priority, self.threshold_id


@jax.jit
def _select(seed, example_ids, threshold_priority, threshold_id):
    prio = selection_priorities(seed, example_ids, threshold_priority.shape[0])
    ids = jnp.asarray(example_ids, jnp.int32)[:, None]
    return (prio < threshold_priority) | ((prio == threshold_priority) & (ids <= threshold_id))


# ---------------------------------------------------------------------------------------- the state
class StatsState(NamedTuple):
    count: jax.Array  # (K,) int32 examples used per attribute (after subset selection)
    mean: jax.Array  # (K, D) float32
    m2: jax.Array  # (K, D) float32 sum of squared deviations from `mean`
    positives: jax.Array  # (K,) int32 known positives (all of them, ignoring subsets)
    known: jax.Array  # (K,) int32 examples whose label for the attribute is known
    total: jax.Array  # () int32 valid examples
    overall_mean: jax.Array  # (D,)
    overall_m2: jax.Array  # (D,)


def chan_merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Merge two (count, mean, M2) summaries (Chan, Golub & LeVeque). Counts int, moments (..., D)."""
    n = n_a + n_b
    na = n_a.astype(jnp.float32)[..., None]
    nb = n_b.astype(jnp.float32)[..., None]
    frac_b = jnp.where(nb > 0, nb / jnp.maximum(na + nb, 1.0), 0.0)
    delta = mean_b - mean_a
    mean = mean_a + delta * frac_b
    m2 = m2_a + m2_b + delta * delta * na * frac_b
    return n, mean, m2


def batch_moments(weights: jax.Array, acts: jax.Array, shift: jax.Array, out_sharding=None):
    """Per-column (count, mean, M2) of `acts` rows weighted 0/1 by the columns of `weights` (B, C).

    Two products: weights^T X (the first moment needs no shift: its rounding error is ~eps |x| per
    mean, harmless) and weights^T (X - shift)^2 (the second moment does: that is where E[x^2] - E[x]^2
    would cancel). Keeping X itself as the first operand avoids a (B, D) temporary, which on CPU costs
    as much as the product (measured: materialising 16 MB took about as long as the 74 x 1000 x 4096
    matmul).
    """
    count = jnp.sum(weights, axis=0)
    s1 = jnp.matmul(weights.T, acts, precision=HIGHEST, out_sharding=out_sharding)
    s1 = s1 - count[:, None] * shift[None, :]  # sum of (x - shift)
    xs = acts - shift
    s2 = jnp.matmul(weights.T, xs * xs, precision=HIGHEST, out_sharding=out_sharding)
    mean_shifted = s1 / jnp.maximum(count, 1.0)[:, None]
    m2 = jnp.maximum(s2 - s1 * mean_shifted, 0.0)
    return jnp.round(count).astype(jnp.int32), shift + mean_shifted, m2


class AttributeStats:
    """Streaming accumulator of per-attribute diagonal Gaussians (see the module docstring).

    stats = AttributeStats(K, D)                       # optionally subset=..., mesh=...
    state = stats.init()
    for acts, attributes, mask in batches:             # acts (B, D); attributes (B, K) 0/1; mask (B, K)
        state = stats.update(state, acts, attributes, mask)
    result = stats.finalize(state, min_count=10)
    """

    def __init__(
        self,
        num_attributes: int,
        dim: int,
        *,
        subset: SubsetSelection | None = None,
        mesh: Mesh | None = None,
        data_axis: str = "data",
    ):
        if num_attributes < 1 or dim < 1:
            raise StatsInputError(f"need num_attributes >= 1 and dim >= 1, got {num_attributes}, {dim}")
        if subset is not None and subset.threshold_priority.shape != (num_attributes,):
            raise StatsInputError(
                f"subset selection is for {subset.threshold_priority.shape[0]} attributes, "
                f"not {num_attributes}"
            )
        self.num_attributes = int(num_attributes)
        self.dim = int(dim)
        self.subset = subset
        self.mesh = mesh
        self.data_axis = data_axis

    # ------------------------------------------------------------------------------------------ api
    def init(self) -> StatsState:
        k, d = self.num_attributes, self.dim
        zi = jnp.zeros((k,), jnp.int32)
        state = StatsState(
            count=zi,
            mean=jnp.zeros((k, d), jnp.float32),
            m2=jnp.zeros((k, d), jnp.float32),
            positives=zi,
            known=zi,
            total=jnp.zeros((), jnp.int32),
            overall_mean=jnp.zeros((d,), jnp.float32),
            overall_m2=jnp.zeros((d,), jnp.float32),
        )
        if self.mesh is not None:
            state = jax.device_put(state, replicated(self.mesh))
        return state

    def update(
        self,
        state: StatsState,
        acts,
        attributes,
        attribute_mask=None,
        *,
        example_ids=None,
        valid=None,
    ) -> StatsState:
        """Fold one batch into `state` (pure: returns the new state). Rows with valid=False are padding."""
        acts_shape = np.shape(acts)
        if len(acts_shape) != 2 or acts_shape[1] != self.dim:
            raise StatsInputError(
                f"activations must be (batch, {self.dim}) (flatten the layer first), got {acts_shape}"
            )
        batch = acts_shape[0]
        if np.shape(attributes) != (batch, self.num_attributes):
            raise StatsInputError(
                f"attributes must be ({batch}, {self.num_attributes}), got {np.shape(attributes)}"
            )
        if attribute_mask is not None and np.shape(attribute_mask) != (batch, self.num_attributes):
            raise StatsInputError(
                f"attribute_mask must be ({batch}, {self.num_attributes}), got {np.shape(attribute_mask)}"
            )
        if self.subset is not None and example_ids is None:
            raise StatsInputError("subset selection needs example_ids for every batch")
        if attribute_mask is None:
            attribute_mask = ones_like_labels(attributes, bool)
        if valid is None:
            valid = ones_like_labels(attributes, bool, rows_only=True)
        if self.subset is None:
            example_ids = None  # only the subset protocol reads ids
        inputs = place_batch(
            self.mesh,
            dict(acts=acts, attributes=attributes, mask=attribute_mask, ids=example_ids, valid=valid),
            self.data_axis,
        )
        mesh = self.mesh or mesh_of(inputs["acts"])
        if mesh is not None:
            state = jax.device_put(state, replicated(mesh))
        selection = None if self.subset is None else self.subset.arrays()
        return _stats_update_fn(mesh)(
            state, inputs["acts"], inputs["attributes"], inputs["mask"], inputs["ids"], inputs["valid"],
            selection,
        )

    def update_fn(self, mesh: Mesh | None = None):
        """The jitted (state, acts, attributes, mask, example_ids, valid, selection) -> state function.

        Shared by every accumulator (one compilation per mesh and input shapes); `selection` is
        `subset.arrays()` or None.
        """
        return _stats_update_fn(mesh)

    def finalize(self, state: StatsState, min_count: int = DEFAULT_MIN_COUNT, *, ddof: int = 0) -> dict:
        """Means and variances (ddof=0: the Gaussian maximum-likelihood estimate) as numpy arrays."""
        return finalize_stats(state, min_count=min_count, ddof=ddof)


def _stats_update(state, acts, attributes, mask, example_ids, valid, selection, *, out_sharding):
    acts = acts.astype(jnp.float32)
    valid_f = valid.astype(jnp.float32)
    known = mask.astype(bool) & valid[:, None]
    positive = (attributes > 0.5) & known
    used = positive
    if selection is not None:
        used = used & _select(selection[0], example_ids, selection[1], selection[2])
    # last column: every valid row, for the overall moments
    weights = jnp.concatenate([used.astype(jnp.float32), valid_f[:, None]], axis=1)
    n_valid = jnp.sum(valid_f)
    shift = jnp.sum(acts * valid_f[:, None], axis=0) / jnp.maximum(n_valid, 1.0)
    n_b, mean_b, m2_b = batch_moments(weights, acts, shift, out_sharding)
    count, mean, m2 = chan_merge(state.count, state.mean, state.m2, n_b[:-1], mean_b[:-1], m2_b[:-1])
    total, overall_mean, overall_m2 = chan_merge(
        state.total[None], state.overall_mean[None], state.overall_m2[None],
        n_b[-1:], mean_b[-1:], m2_b[-1:],
    )
    return StatsState(
        count=count,
        mean=mean,
        m2=m2,
        positives=state.positives + jnp.sum(positive, axis=0, dtype=jnp.int32),
        known=state.known + jnp.sum(known, axis=0, dtype=jnp.int32),
        total=total[0],
        overall_mean=overall_mean[0],
        overall_m2=overall_m2[0],
    )


_UPDATE_FNS: dict = {}


def _stats_update_fn(mesh: Mesh | None):
    fn = _UPDATE_FNS.get(mesh)
    if fn is None:
        out = replicated(mesh)
        fn = _UPDATE_FNS[mesh] = jax.jit(functools.partial(_stats_update, out_sharding=out), out_shardings=out)
    return fn


def ones_like_labels(attributes, dtype, rows_only: bool = False):
    shape = np.shape(attributes)[:1] if rows_only else np.shape(attributes)
    if mesh_of(attributes) is not None:
        sharding = attributes.sharding
        if rows_only:
            sharding = NamedSharding(sharding.mesh, P(*sharding.spec[:1]))
        return jax.device_put(np.ones(shape, dtype), sharding)
    return np.ones(shape, dtype)


def finalize_stats(state: StatsState, *, min_count: int = DEFAULT_MIN_COUNT, ddof: int = 0) -> dict:
    """State -> dict of numpy arrays; attributes with count < min_count are excluded (NaN rows)."""
    if min_count < 1:
        raise StatsInputError(f"min_count must be at least 1, got {min_count}")
    count = np.asarray(state.count).astype(np.int64)
    mean = np.asarray(state.mean, np.float32).copy()
    m2 = np.asarray(state.m2, np.float32)
    denom = np.maximum(count - ddof, 1).astype(np.float32)[:, None]
    var = m2 / denom
    included = count >= max(min_count, ddof + 1)
    excluded = [int(i) for i in np.flatnonzero(~included)]
    mean[~included] = np.nan
    var[~included] = np.nan
    if excluded:
        logger.warning(
            "cGMM statistics: excluding %d attribute(s) with fewer than %d examples: %s",
            len(excluded), min_count, ", ".join(f"#{i} (n={count[i]})" for i in excluded),
        )
    total = int(np.asarray(state.total))
    known = np.asarray(state.known).astype(np.int64)
    positives = np.asarray(state.positives).astype(np.int64)
    return dict(
        mean=mean,
        var=var.astype(np.float32),
        count=count,
        included=included,
        excluded=excluded,
        min_count=int(min_count),
        positives=positives,
        known=known,
        prior_rate=(positives / np.maximum(known, 1)).astype(np.float32),
        total=total,
        overall_mean=np.asarray(state.overall_mean, np.float32),
        overall_var=(np.asarray(state.overall_m2, np.float32) / max(total - ddof, 1)).astype(np.float32),
    )


def unpack_batch(batch) -> dict:
    """(acts, attributes[, mask[, example_ids]]) tuples or dicts -> keyword dict."""
    if isinstance(batch, Mapping):
        acts = batch.get("activations", batch.get("acts"))
        if acts is None or "attributes" not in batch:
            raise StatsInputError(
                "a batch dict needs 'activations' (or 'acts') and 'attributes'; got keys "
                + ", ".join(sorted(batch))
            )
        return dict(
            acts=acts,
            attributes=batch["attributes"],
            attribute_mask=batch.get("attribute_mask", batch.get("mask")),
            example_ids=batch.get("example_ids", batch.get("index")),
            valid=batch.get("valid"),
        )
    items = tuple(batch)
    if not 2 <= len(items) <= 4:
        raise StatsInputError(
            "a batch tuple must be (activations, attributes[, attribute_mask[, example_ids]])"
        )
    items = items + (None,) * (4 - len(items))
    return dict(acts=items[0], attributes=items[1], attribute_mask=items[2], example_ids=items[3], valid=None)


def fit_attribute_stats(
    batches: Iterable,
    num_attributes: int,
    dim: int,
    *,
    min_count: int = DEFAULT_MIN_COUNT,
    mesh: Mesh | None = None,
    subset: SubsetSelection | None = None,
    data_axis: str = "data",
) -> dict:
    """Stream `batches` through an AttributeStats accumulator and finalize (see finalize_stats)."""
    stats = AttributeStats(num_attributes, dim, subset=subset, mesh=mesh, data_axis=data_axis)
    state = stats.init()
    seen = 0
    for batch in batches:
        kw = unpack_batch(batch)
        acts = kw.pop("acts")
        attributes = kw.pop("attributes")
        if np.ndim(acts) > 2:  # a conv layer (B, H, W, C): the model is over the flattened layer
            acts = acts.reshape(np.shape(acts)[0], -1)
        state = stats.update(state, acts, attributes, kw["attribute_mask"],
                             example_ids=kw["example_ids"], valid=kw["valid"])
        seen += 1
    if not seen:
        raise StatsInputError("no batches: cannot fit activation statistics on an empty dataset")
    return stats.finalize(state, min_count=min_count)
