"""cGMM maths: activation statistics, weights of eq. (3), the joint model, targets (eq. 2) and storage."""
import dataclasses
import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from epath_utils import bucket_on_disk
from jaxface.cgmm import joint, stats, store, targets, weights
from jaxface.data.schema import get_schema


# ------------------------------------------------------------------------------------------- data
def planted_labels(rng, n, k, rate=0.35, known=0.85):
    attributes = (rng.random((n, k)) < rate).astype(np.float32)
    mask = rng.random((n, k)) < known
    return attributes, mask


def planted_cgmm_data(rng, n=300, k=5, d=9, noise=0.1, w_true=1.3):
    """Activations that follow eq. (4) exactly with weights w_true, plus isotropic noise."""
    mu = rng.normal(size=(k, d)).astype(np.float32) * 2.0
    attributes, _ = planted_labels(rng, n, k, known=1.0)
    coeff, _ = weights.coefficient_matrix(attributes)
    acts = (np.asarray(coeff) * w_true) @ mu + noise * rng.normal(size=(n, d))
    return mu, acts.astype(np.float32), attributes


def naive_attribute_stats(acts, attributes, mask):
    """Per-attribute mean and (ddof 0) variance in float64 over known positives, one loop per attribute."""
    k = attributes.shape[1]
    means, variances, counts = [], [], []
    for a in range(k):
        rows = acts[(attributes[:, a] > 0.5) & mask[:, a]].astype(np.float64)
        counts.append(len(rows))
        means.append(rows.mean(0) if len(rows) else np.full(acts.shape[1], np.nan))
        variances.append(rows.var(0) if len(rows) else np.full(acts.shape[1], np.nan))
    return np.array(means), np.array(variances), np.array(counts)


def stream(acc, state, acts, attributes, mask, batch, ids=None):
    for s in range(0, len(acts), batch):
        state = acc.update(
            state, acts[s : s + batch], attributes[s : s + batch], mask[s : s + batch],
            example_ids=None if ids is None else ids[s : s + batch],
        )
    return state


@pytest.fixture
def labelled_acts():
    rng = np.random.default_rng(0)
    n, k, d = 256, 6, 10
    attributes, mask = planted_labels(rng, n, k)
    acts = (rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, d) + rng.normal(size=d) * 4).astype(np.float32)
    return acts, attributes, mask


@pytest.fixture
def mesh8():
    if jax.device_count() < 8:
        pytest.skip("needs the 8 simulated devices from conftest")
    return jax.make_mesh((8,), ("data",))


# ---------------------------------------------------------------------------------- statistics
def test_closed_form_stats_equal_naive_per_attribute_numpy(labelled_acts):
    acts, attributes, mask = labelled_acts
    acc = stats.AttributeStats(attributes.shape[1], acts.shape[1])
    result = acc.finalize(acc.update(acc.init(), acts, attributes, mask), min_count=1)
    mean, var, count = naive_attribute_stats(acts, attributes, mask)
    np.testing.assert_array_equal(result["count"], count)
    np.testing.assert_allclose(result["mean"], mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result["var"], var, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result["overall_mean"], acts.astype(np.float64).mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result["overall_var"], acts.astype(np.float64).var(0), rtol=1e-4)
    np.testing.assert_array_equal(result["known"], mask.sum(0))
    np.testing.assert_allclose(
        result["prior_rate"], ((attributes > 0.5) & mask).sum(0) / mask.sum(0), rtol=1e-6
    )


def test_streamed_in_many_batches_equals_one_batch(labelled_acts):
    acts, attributes, mask = labelled_acts
    k, d = attributes.shape[1], acts.shape[1]
    acc = stats.AttributeStats(k, d)
    one = acc.finalize(acc.update(acc.init(), acts, attributes, mask), min_count=1)
    many = acc.finalize(stream(acc, acc.init(), acts, attributes, mask, batch=64), min_count=1)
    np.testing.assert_array_equal(many["count"], one["count"])
    np.testing.assert_allclose(many["mean"], one["mean"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(many["var"], one["var"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(many["overall_var"], one["overall_var"], rtol=1e-4)


def test_variance_survives_a_large_offset():
    """E[x^2] - E[x]^2 in float32 would lose every digit here; shifted Chan merging keeps them."""
    rng = np.random.default_rng(1)
    n, k, d = 2048, 6, 10
    attributes, mask = planted_labels(rng, n, k, rate=0.5, known=1.0)
    acts = (3000.0 + rng.normal(size=(n, d))).astype(np.float32)
    acc = stats.AttributeStats(k, d)
    result = acc.finalize(stream(acc, acc.init(), acts, attributes, mask, batch=64), min_count=1)
    _, var, _ = naive_attribute_stats(acts, attributes, mask)
    np.testing.assert_allclose(result["var"], var, rtol=2e-3)


def test_sharded_on_8_devices_equals_unsharded(labelled_acts, mesh8):
    acts, attributes, mask = labelled_acts
    k, d = attributes.shape[1], acts.shape[1]
    acc = stats.AttributeStats(k, d)
    plain = acc.finalize(stream(acc, acc.init(), acts, attributes, mask, batch=64), min_count=1)

    batch_sharding = NamedSharding(mesh8, P("data"))
    state = acc.init()
    for s in range(0, len(acts), 64):
        args = [jax.device_put(x[s : s + 64], batch_sharding) for x in (acts, attributes, mask)]
        state = acc.update(state, *args)
    assert state.mean.sharding.is_fully_replicated and len(state.mean.sharding.device_set) == 8
    sharded = acc.finalize(state, min_count=1)
    np.testing.assert_array_equal(sharded["count"], plain["count"])
    np.testing.assert_allclose(sharded["mean"], plain["mean"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sharded["var"], plain["var"], rtol=1e-4, atol=1e-5)

    # host batches through the convenience function: 50 rows per batch get padded to 56 for 8 devices
    fitted = stats.fit_attribute_stats(
        [(acts[s : s + 50], attributes[s : s + 50], mask[s : s + 50]) for s in range(0, len(acts), 50)],
        k, d, min_count=1, mesh=mesh8,
    )
    np.testing.assert_array_equal(fitted["count"], plain["count"])
    assert fitted["total"] == len(acts)
    np.testing.assert_allclose(fitted["var"], plain["var"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fitted["overall_mean"], plain["overall_mean"], rtol=1e-5, atol=1e-5)


def test_subset_protocol_gives_equal_sizes_independent_of_batching(labelled_acts, mesh8):
    acts, attributes, mask = labelled_acts
    k, d = attributes.shape[1], acts.shape[1]
    ids = np.arange(1000, 1000 + len(acts))
    positives = ((attributes > 0.5) & mask).sum(0)
    size = int(np.sort(positives)[1])  # the rarest attribute keeps all of its (fewer) examples
    subset = stats.SubsetSelection.from_labels(attributes, mask, ids, size, seed=3)
    np.testing.assert_array_equal(subset.subset_counts, np.minimum(positives, size))

    acc = stats.AttributeStats(k, d, subset=subset)
    a = acc.finalize(stream(acc, acc.init(), acts, attributes, mask, batch=64, ids=ids), min_count=1)
    np.testing.assert_array_equal(a["count"], np.minimum(positives, size))
    np.testing.assert_array_equal(a["positives"], positives)  # the prior still uses every label

    # other batch sizes and an 8-device mesh select exactly the same examples
    acc8 = stats.AttributeStats(k, d, subset=subset, mesh=mesh8)
    b = acc8.finalize(stream(acc8, acc8.init(), acts, attributes, mask, batch=128, ids=ids), min_count=1)
    np.testing.assert_allclose(b["mean"], a["mean"], rtol=1e-5, atol=1e-5)

    # and the moments are those of the selected rows
    selected = np.asarray(subset.select(jnp.asarray(ids))) & (attributes > 0.5) & mask
    mean, var, count = naive_attribute_stats(acts, selected.astype(np.float32), np.ones_like(mask))
    np.testing.assert_array_equal(count, a["count"])
    np.testing.assert_allclose(a["mean"], mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a["var"], var, rtol=1e-4, atol=1e-5)

    other = stats.SubsetSelection.from_labels(attributes, mask, ids, size, seed=4)
    assert not np.array_equal(np.asarray(other.select(jnp.asarray(ids))), np.asarray(subset.select(jnp.asarray(ids))))

    with pytest.raises(stats.StatsInputError, match="example_ids"):
        acc.update(acc.init(), acts, attributes, mask)
    with pytest.raises(stats.StatsInputError, match="unique"):
        stats.SubsetSelection.from_labels(attributes, mask, np.zeros(len(acts), int), size, seed=0)


def test_attributes_below_min_count_are_excluded_and_reported(labelled_acts, caplog):
    acts, attributes, mask = labelled_acts
    attributes = attributes.copy()
    attributes[:, 2] = 0.0
    attributes[:3, 2] = 1.0
    mask = mask.copy()
    mask[:3, 2] = True
    acc = stats.AttributeStats(attributes.shape[1], acts.shape[1])
    with caplog.at_level(logging.WARNING, logger="jaxface.cgmm.stats"):
        result = acc.finalize(acc.update(acc.init(), acts, attributes, mask), min_count=5)
    assert result["excluded"] == [2]
    assert result["count"][2] == 3
    assert not result["included"][2] and result["included"].sum() == attributes.shape[1] - 1
    assert np.isnan(result["mean"][2]).all() and np.isnan(result["var"][2]).all()
    assert np.isfinite(np.delete(result["mean"], 2, axis=0)).all()
    assert "#2 (n=3)" in caplog.text


def test_stats_input_errors():
    acc = stats.AttributeStats(3, 4)
    with pytest.raises(stats.StatsInputError, match="flatten"):
        acc.update(acc.init(), np.zeros((2, 5)), np.zeros((2, 3)))
    with pytest.raises(stats.StatsInputError, match="attributes must be"):
        acc.update(acc.init(), np.zeros((2, 4)), np.zeros((2, 2)))
    with pytest.raises(stats.StatsInputError, match="empty"):
        stats.fit_attribute_stats([], 3, 4)


# ------------------------------------------------------------------------------------- weights
def numpy_eq3(w, mu, acts, attributes, mask, lam):
    """Equation (3) with Phi_i of eq. (4), written as a loop over images in float64."""
    total, used = 0.0, 0
    for x, labels, known in zip(acts.astype(np.float64), attributes, mask):
        members = np.flatnonzero((labels > 0.5) & known)
        if members.size == 0:
            continue
        phi = sum(w[j] * mu[j].astype(np.float64) for j in members) / members.size
        total += np.sum((x - phi) ** 2)
        used += 1
    return total / used + lam * np.sum(np.asarray(w, np.float64) ** 2)


def test_gradient_of_eq3_analytic_vs_autodiff_vs_finite_differences(labelled_acts):
    acts, attributes, mask = labelled_acts
    acts, attributes, mask = acts[:60], attributes[:60], mask[:60]
    rng = np.random.default_rng(2)
    mu = rng.normal(size=(attributes.shape[1], acts.shape[1])).astype(np.float32)
    w = rng.uniform(0.5, 1.5, attributes.shape[1]).astype(np.float32)
    lam = 0.3
    value = float(weights.loss(w, mu, acts, attributes, lam, mask))
    np.testing.assert_allclose(value, numpy_eq3(w, mu, acts, attributes, mask, lam), rtol=1e-5)

    analytic = np.asarray(weights.loss_grad(w, mu, acts, attributes, lam, mask))
    autodiff = np.asarray(jax.grad(weights.loss)(w, mu, acts, attributes, lam, mask))
    h = 1e-4
    central = np.array([
        (numpy_eq3(w + h * e, mu, acts, attributes, mask, lam)
         - numpy_eq3(w - h * e, mu, acts, attributes, mask, lam)) / (2 * h)
        for e in np.eye(len(w))
    ])
    np.testing.assert_allclose(analytic, autodiff, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(analytic, central, rtol=1e-4, atol=1e-4)
    assert np.abs(central).max() > 1.0  # a gradient that is not trivially zero


def test_sufficient_statistics_reproduce_loss_and_gradient(labelled_acts):
    acts, attributes, mask = labelled_acts
    rng = np.random.default_rng(3)
    mu = rng.normal(size=(attributes.shape[1], acts.shape[1])).astype(np.float32)
    w = jnp.asarray(rng.uniform(0.5, 1.5, attributes.shape[1]).astype(np.float32))
    ss = weights.suff_stats(weights.prepare_weight_data(mu, acts, attributes, mask))
    np.testing.assert_allclose(weights.suff_loss(w, ss, 0.1), weights.loss(w, mu, acts, attributes, 0.1, mask),
                               rtol=1e-5)
    np.testing.assert_allclose(weights.suff_grad(w, ss, 0.1), weights.loss_grad(w, mu, acts, attributes, 0.1, mask),
                               rtol=1e-4, atol=1e-4)
    # summing the statistics of two halves equals the statistics of the whole
    half = len(acts) // 2
    parts = [weights.suff_stats(weights.prepare_weight_data(mu, acts[s], attributes[s], mask[s]))
             for s in (slice(0, half), slice(half, None))]
    summed = weights.add_suff_stats(*parts)
    for got, want in zip(summed, ss):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_excluded_attributes_drop_out_of_eq3(labelled_acts):
    acts, attributes, mask = labelled_acts
    rng = np.random.default_rng(4)
    mu = rng.normal(size=(attributes.shape[1], acts.shape[1])).astype(np.float32)
    w = rng.uniform(0.5, 1.5, attributes.shape[1]).astype(np.float32)
    mu_nan = mu.copy()
    mu_nan[1] = np.nan  # how finalize marks an excluded attribute
    reduced_attributes = attributes.copy()
    reduced_attributes[:, 1] = 0.0
    got = weights.loss(w, mu_nan, acts, attributes, 0.0, mask)
    want = numpy_eq3(w, mu, acts, reduced_attributes, mask, 0.0)
    assert np.isfinite(got)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_exact_ridge_solves_the_normal_equations():
    rng = np.random.default_rng(5)
    mu, acts, attributes = planted_cgmm_data(rng)
    ss = weights.suff_stats(weights.prepare_weight_data(mu, acts, attributes))
    lambdas = np.array([0.0, 1e-2, 1.0], np.float32)
    exact = np.asarray(weights.fit_weights_exact(ss, lambdas))
    q, b, n = np.asarray(ss.q, np.float64), np.asarray(ss.b, np.float64), float(ss.n)
    for lam, w in zip(lambdas, exact):
        np.testing.assert_allclose(w, np.linalg.solve(q + n * lam * np.eye(len(b)), b), rtol=1e-5)
        np.testing.assert_allclose(weights.suff_grad(jnp.asarray(w), ss, lam), 0.0, atol=1e-3)
    np.testing.assert_allclose(exact[0], 1.3, atol=0.02)  # the planted weights
    assert np.all(np.diff(np.linalg.norm(exact, axis=1)) < 0)  # ridge shrinks


def test_sgd_grid_over_lambdas_and_lrs_converges_to_exact_ridge():
    rng = np.random.default_rng(6)
    mu, acts, attributes = planted_cgmm_data(rng)
    data = weights.prepare_weight_data(mu, acts, attributes)
    ss = weights.suff_stats(data)
    lambdas = np.array([0.0, 1e-2, 1e-1], np.float32)
    top = weights.max_stable_lr(ss)
    lrs = np.array([0.5, 0.25], np.float32) * top
    exact = np.asarray(weights.fit_weights_exact(ss, lambdas))

    sgd = weights.fit_weights_sgd(data, lambdas, lrs, steps=3000, batch_size=64, key=0)
    assert sgd.weights.shape == (2, 3, attributes.shape[1])
    assert sgd.curve.shape[:2] == (2, 3) and sgd.loss.shape == (2, 3)
    for r in range(len(lrs)):
        np.testing.assert_allclose(sgd.weights[r], exact, rtol=1e-3)
    # the objective falls from its value at the start (w = 1) to the optimum's
    exact_loss = jax.vmap(weights.suff_loss, in_axes=(0, None, 0))(jnp.asarray(exact), ss, jnp.asarray(lambdas))
    start_loss = jax.vmap(weights.suff_loss, in_axes=(None, None, 0))(jnp.ones(5), ss, jnp.asarray(lambdas))
    np.testing.assert_allclose(sgd.loss, np.broadcast_to(exact_loss, (2, 3)), rtol=1e-4)
    assert np.all(sgd.curve[..., -1] < 0.5 * np.asarray(start_loss))

    full = weights.fit_weights_sgd(ss, lambdas, lrs, steps=1000)
    for r in range(len(lrs)):
        np.testing.assert_allclose(full.weights[r], exact, rtol=1e-4)

    # a step far beyond the stable one diverges, and selection ignores it
    wild = weights.fit_weights_sgd(ss, lambdas, np.array([50.0 * top, 0.5 * top], np.float32), steps=1000)
    assert not np.isfinite(np.asarray(wild.weights[0])).all()
    chosen = weights.select_lambda(ss, wild.weights, lambdas)
    assert chosen["best_index"][0] == 1


def test_select_lambda_on_heldout_data_and_fit_weights():
    rng = np.random.default_rng(7)
    mu, acts, attributes = planted_cgmm_data(rng, n=120, k=6, d=8, noise=2.0, w_true=0.8)
    # the means the fit sees are noisy estimates, so shrinkage can help on held-out images
    train = weights.prepare_weight_data(mu, acts[:60], attributes[:60])
    heldout = weights.prepare_weight_data(mu, acts[60:], attributes[60:])
    lambdas = np.array([0.0, 0.05, 0.5, 5.0], np.float32)
    exact = np.asarray(weights.fit_weights_exact(weights.suff_stats(train), lambdas))
    choice = weights.select_lambda(heldout, exact, lambdas)
    direct = [float(weights.reconstruction_error(w, mu, acts[60:], attributes[60:])) for w in exact]
    np.testing.assert_allclose(choice["errors"], direct, rtol=1e-4)
    assert choice["best_lambda"] == lambdas[int(np.argmin(direct))]
    np.testing.assert_array_equal(choice["best_weights"], exact[int(np.argmin(direct))])
    with pytest.raises(weights.WeightFitError, match="schedule"):
        weights.fit_weights_sgd(train, lambdas, [0.1], steps=5, schedule="warp")


# --------------------------------------------------------------------------------------- joint
def planted_joint(rng, n=3000, k=4, d=6, known=1.0):
    attributes, mask = planted_labels(rng, n, k, rate=0.4, known=known)
    coef = rng.normal(size=(k, d)).astype(np.float32) * 2
    bias = (10.0 + rng.normal(size=d)).astype(np.float32)
    noise_std = rng.uniform(0.1, 0.5, d).astype(np.float32)
    acts = attributes @ coef + bias + noise_std * rng.normal(size=(n, d))
    return acts.astype(np.float32), attributes, mask, coef, bias, noise_std


def test_joint_model_recovers_a_planted_linear_model():
    rng = np.random.default_rng(8)
    acts, attributes, mask, coef, bias, noise_std = planted_joint(rng)
    model = joint.fit_joint(
        [(acts[s : s + 256], attributes[s : s + 256]) for s in range(0, len(acts), 256)],
        attributes.shape[1], acts.shape[1], lam=1e-6,
    )
    np.testing.assert_allclose(model.coef, coef, atol=0.1)
    np.testing.assert_allclose(model.bias, bias, atol=0.1)
    np.testing.assert_allclose(model.resid_var, noise_std**2, rtol=0.1)
    np.testing.assert_allclose(model.prior_rate, attributes.mean(0), rtol=1e-6)
    np.testing.assert_allclose(model.predict(attributes[:5]), attributes[:5] @ model.coef + model.bias,
                               rtol=1e-5)
    draws = model.sample(np.tile(attributes[:1], (4000, 1)), jax.random.key(0))
    np.testing.assert_allclose(np.var(np.asarray(draws), axis=0), model.resid_var, rtol=0.1)


def test_joint_model_imputes_masked_labels_with_the_prior_rate(mesh8):
    rng = np.random.default_rng(9)
    acts, attributes, mask, *_ = planted_joint(rng, n=800, known=0.7)
    k, d = attributes.shape[1], acts.shape[1]
    lam = 1e-2
    model = joint.fit_joint([(acts, attributes, mask)], k, d, lam=lam)
    # reference: impute explicitly, then ridge with an unpenalised bias, in float64
    rate = ((attributes > 0.5) & mask).sum(0) / mask.sum(0)
    x = np.where(mask, attributes, rate).astype(np.float64)
    x1 = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    n = len(x)
    w = np.linalg.solve(x1.T @ x1 + n * lam * np.diag(np.r_[np.ones(k), 0.0]), x1.T @ acts.astype(np.float64))
    np.testing.assert_allclose(model.impute_rate, rate, rtol=1e-6)
    np.testing.assert_allclose(model.coef, w[:k], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(model.bias, w[k], rtol=1e-4, atol=1e-3)
    resid = ((acts - x1 @ w) ** 2).mean(0)
    np.testing.assert_allclose(model.resid_var, resid, rtol=1e-3)

    sharded = joint.JointStats(k, d, mesh=mesh8)
    state = sharded.init()
    for s in range(0, n, 100):  # 100 rows per batch: padded to 104 on 8 devices
        state = sharded.update(state, acts[s : s + 100], attributes[s : s + 100], mask[s : s + 100])
    model8 = sharded.finalize(state, lam=lam)
    np.testing.assert_allclose(model8.coef, model.coef, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(model8.resid_var, model.resid_var, rtol=1e-4)
    assert model8.num_examples == n


# ------------------------------------------------------------------------------- store/targets
@pytest.fixture(scope="module")
def store_data():
    """Activations linear in the synthfaces attributes (K = 23); 'Blurry' is too rare to model."""
    schema = get_schema("synthfaces")
    rng = np.random.default_rng(10)
    k, d, n = schema.num_attributes, 12, 600
    attributes, mask = planted_labels(rng, n, k, rate=0.3, known=0.9)
    attributes[:, schema.index("Blurry")] = 0.0
    attributes[:2, schema.index("Blurry")] = 1.0
    mask[:2, schema.index("Blurry")] = True
    acts = (attributes @ rng.normal(size=(k, d)) + 5.0 + 0.5 * rng.normal(size=(n, d))).astype(np.float32)
    return schema, acts, attributes, mask


@pytest.fixture(scope="module")
def fitted_store(store_data):
    """A fitted model over the synthfaces schema with one excluded attribute."""
    schema, acts, attributes, mask = store_data
    k, d = attributes.shape[1], acts.shape[1]
    fitted = stats.fit_attribute_stats([(acts, attributes, mask)], k, d, min_count=10)
    train = weights.prepare_weight_data(fitted["mean"], acts[:300], attributes[:300], mask[:300])
    heldout = weights.prepare_weight_data(fitted["mean"], acts[300:], attributes[300:], mask[300:])
    fit = weights.fit_weights(train, heldout, [0.0, 1e-3, 1e-2], steps=200, batch_size=32)
    model = joint.fit_joint([(acts, attributes, mask)], k, d)
    return store.store_from_fit(
        layer="fc7", layer_shape=(3, 4), schema=schema, stats=fitted, weight_fit=fit, joint=model,
        source_checkpoint="/tmp/ckpt/100",
    )


def test_store_round_trip(fitted_store, tmp_path):
    paths = store.save_cgmm(tmp_path / "cgmm", fitted_store)
    loaded = store.load_cgmm(tmp_path / "cgmm")
    assert loaded.excluded == fitted_store.excluded == [fitted_store.schema.index("Blurry")]
    assert loaded.valid_attribute_names == fitted_store.valid_attribute_names
    assert (loaded.layer, loaded.layer_shape, loaded.source_checkpoint) == ("fc7", (3, 4), "/tmp/ckpt/100")
    assert loaded.schema.attribute_names == fitted_store.schema.attribute_names
    for name in ("mean", "var", "count", "weights", "overall_mean", "overall_var"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(fitted_store, name))
    for name in ("coef", "bias", "resid_var", "prior_rate", "impute_rate"):
        np.testing.assert_array_equal(getattr(loaded.joint, name), getattr(fitted_store.joint, name))
    assert loaded.chosen_lambda == fitted_store.chosen_lambda
    # the whole weight fit ran: exact ridge chose lambda on held-out data, the SGD grid is recorded
    errors = loaded.fit_losses["exact_heldout_error"]
    assert loaded.fit_losses["method"] == "exact" and len(errors) == 3
    assert loaded.chosen_lambda == loaded.grid["lambdas"][int(np.argmin(errors))]
    assert np.shape(loaded.fit_losses["sgd_heldout_error"]) == (4, 3)
    meta = json.loads(open(paths["metadata"]).read())
    assert meta["counts"]["Blurry"] == 2 and meta["excluded"] == ["Blurry"]
    assert meta["weights"]["Blurry"] == 0.0
    assert "Blurry" in loaded.summary()
    assert loaded.image_prior is None and meta["image_prior"] is None


def test_store_round_trips_through_a_bucket(fitted_store, tmp_path):
    with bucket_on_disk(tmp_path):
        paths = store.save_cgmm("gs://bucket/run/cgmm", fitted_store)
        loaded = store.load_cgmm("gs://bucket/run/cgmm")
    assert paths["metadata"] == "gs://bucket/run/cgmm/cgmm.json"
    np.testing.assert_array_equal(loaded.mean, fitted_store.mean)
    assert (tmp_path / "bucket" / "run" / "cgmm" / "cgmm.npz").exists()


def test_store_round_trips_the_image_prior(fitted_store, tmp_path):
    from jaxface.cgmm import image_prior

    images = np.random.default_rng(0).uniform(size=(20, 8, 8, 3))
    prior, _ = image_prior.fit_image_prior(images, 5)
    with_prior = dataclasses.replace(fitted_store, image_prior=prior, image_size=8)
    store.save_cgmm(tmp_path / "cgmm", with_prior)
    loaded = store.load_cgmm(tmp_path / "cgmm")
    assert loaded.image_size == 8
    for got, want in zip(loaded.image_prior, prior):
        np.testing.assert_array_equal(got, want)
    assert "image prior: 5 principal components of 8x8 images" in loaded.summary()
    with pytest.raises(store.CGMMStoreError, match="do not describe 9x9x3 images"):
        dataclasses.replace(fitted_store, image_prior=prior, image_size=9)


def test_store_errors(fitted_store, tmp_path):
    with pytest.raises(store.CGMMStoreError, match="does not exist"):
        store.load_cgmm(tmp_path / "nowhere")
    directory = tmp_path / "m"
    store.save_cgmm(directory, fitted_store)
    (directory / "cgmm.npz").write_bytes(b"not a zip file")
    with pytest.raises(store.CGMMStoreError, match="corrupt array file"):
        store.load_cgmm(directory)
    store.save_cgmm(directory, fitted_store)
    (directory / "cgmm.json").write_text("{ truncated")
    with pytest.raises(store.CGMMStoreError, match="corrupt metadata"):
        store.load_cgmm(directory)
    (directory / "cgmm.json").unlink()
    with pytest.raises(store.CGMMStoreError, match="cgmm.json is missing"):
        store.load_cgmm(directory)


def test_targets_mean_mode_is_equation_2(fitted_store):
    s = fitted_store
    names = ["Male", "black hair", "Smiling"]
    got = np.asarray(targets.make_targets(s, names, num=3, mode="mean", key=0))
    idx = [s.schema.index(n) for n in names]
    want = sum(s.weights[i] * s.mean[i].astype(np.float64) for i in idx) / len(idx)
    assert got.shape == (3, s.dim)
    np.testing.assert_allclose(got, np.broadcast_to(want, got.shape), rtol=1e-5)
    # comma-separated text and duplicates mean the same set
    np.testing.assert_allclose(targets.make_targets(s, "Male, Black Hair, smiling, male"), got[:1], rtol=1e-6)


def test_targets_sample_mode_varies_per_key_with_the_right_variance(fitted_store):
    s = fitted_store
    names = ["Male", "Eyeglasses"]
    draws = np.asarray(targets.make_targets(s, names, num=4000, mode="sample", key=1))
    assert not np.allclose(draws[0], draws[1])
    again = np.asarray(targets.make_targets(s, names, num=4000, mode="sample", key=1))
    np.testing.assert_array_equal(draws, again)  # reproducible from the key
    idx = [s.schema.index(n) for n in names]
    c = s.weights[idx] / len(idx)
    want_var = (c[:, None] ** 2 * s.var[idx]).sum(0)
    want_mean = (c[:, None] * s.mean[idx]).sum(0)
    np.testing.assert_allclose(draws.mean(0), want_mean, atol=4 * np.sqrt(want_var.max() / 4000))
    np.testing.assert_allclose(np.mean(draws.var(0) / want_var), 1.0, atol=0.03)


def test_joint_targets_fill_unspecified_attributes(fitted_store):
    s = fitted_store
    schema = s.schema
    got = np.asarray(targets.make_targets(s, ["Black Hair"], model="joint"))
    vec = s.joint.prior_rate.copy()
    hair = list(schema.head_attribute_indices[schema.attribute_head[schema.index("Black Hair")]])
    vec[hair] = 0.0
    vec[schema.index("Black Hair")] = 1.0
    np.testing.assert_allclose(got[0], vec @ s.joint.coef + s.joint.bias, rtol=1e-5)
    absent = np.asarray(targets.make_targets(s, ["Black Hair"], model="joint", unspecified="absent"))
    onehot = np.zeros_like(vec)
    onehot[schema.index("Black Hair")] = 1.0
    np.testing.assert_allclose(absent[0], onehot @ s.joint.coef + s.joint.bias, rtol=1e-5)
    draws = np.asarray(targets.make_targets(s, ["Black Hair"], num=3000, mode="sample", model="joint", key=2))
    np.testing.assert_allclose(np.mean(draws.var(0) / s.joint.resid_var), 1.0, atol=0.04)


def test_target_errors_list_valid_names(fitted_store):
    s = fitted_store
    with pytest.raises(targets.TargetSpecError, match="unknown attribute 'Purple Hair'") as e:
        targets.make_targets(s, ["Male", "Purple Hair"])
    assert "Black Hair" in str(e.value) and "Blurry" not in str(e.value).split("valid names:")[1]
    with pytest.raises(targets.TargetSpecError, match="'Blurry' was excluded") as e:
        targets.make_targets(s, ["blurry"])
    assert "only 2 examples" in str(e.value) and "Male" in str(e.value)
    for empty in ([], "", " , "):
        with pytest.raises(targets.TargetSpecError, match="no attributes given"):
            targets.make_targets(s, empty)
    with pytest.raises(targets.TargetSpecError, match="valid: mean, sample"):
        targets.make_targets(s, ["Male"], mode="median")
    with pytest.raises(targets.TargetSpecError, match="valid: cgmm, joint"):
        targets.make_targets(s, ["Male"], model="gan")
    with pytest.raises(targets.TargetSpecError, match="no joint model"):
        targets.make_targets(dataclasses.replace(s, joint=None), ["Male"], model="joint")


def test_target_fidelity_measures_the_missed_attribute_signal(fitted_store, store_data):
    _, acts, attributes, mask = store_data
    plain_means = dataclasses.replace(fitted_store, weights=np.ones_like(fitted_store.weights))
    single = targets.target_fidelity(plain_means, [["Male"], ["Smiling"]], acts, attributes, mask)
    for row in single:  # with w = 1 a single-attribute target is that attribute's empirical mean
        assert row["num_images"] > 50 and row["relative_error"] < 1e-8
    triples = [["Male", "Smiling", "Bangs"], ["Black Hair", "Beard", "Big Nose"], ["Wearing Hat", "Pale Skin", "Mustache"]]
    cgmm = targets.target_fidelity(plain_means, triples, acts, attributes, mask, min_images=5)
    joint_fit = targets.target_fidelity(plain_means, triples, acts, attributes, mask, model="joint", min_images=5)
    cgmm_err = np.array([r["relative_error"] for r in cgmm])
    joint_err = np.array([r["relative_error"] for r in joint_fit])
    assert np.isfinite(cgmm_err).all() and np.isfinite(joint_err).all()
    # the data are linear in the attributes: averaging three means dilutes each attribute's effect
    assert joint_err.mean() < cgmm_err.mean()
    rare = targets.target_fidelity(plain_means, [triples[0]], acts, attributes, mask, min_images=10**6)
    assert np.isnan(rare[0]["relative_error"])


def test_conditional_image_prior_recovers_what_an_attribute_adds_to_the_image():
    """Images = background + a * pattern + noise: the conditional prior's mean for a=1 minus that for a=0
    is the pattern (within the subspace), and an unknown label is imputed with the attribute's rate."""
    from jaxface.cgmm import image_prior

    rng = np.random.default_rng(0)
    n, size = 400, 6
    pattern = rng.uniform(-0.2, 0.2, size=(size, size, 3))
    attrs = rng.uniform(size=(n, 2)) < 0.5
    images = 0.5 + attrs[:, 0, None, None, None] * pattern + 0.05 * rng.standard_normal((n, size, size, 3))
    prior, _ = image_prior.fit_image_prior(images, 20)
    joint = image_prior.fit_conditional_prior(prior, images, attrs.astype(np.float32), lam=0.0)
    assert joint.coef.shape == (2, 20) and joint.bias.shape == (20,)
    on, off = (image_prior.coefficient_image(prior, (joint.coef[0] * a + joint.coef[1] * 0.5 + joint.bias)[None], size, size)
               for a in (1.0, 0.0))
    np.testing.assert_allclose(on - off, pattern[None], atol=0.03)
    # the second attribute is noise: it explains almost nothing
    assert np.abs(joint.coef[1]).max() < 0.3 * np.abs(joint.coef[0]).max()
    # a coefficient image is exactly what param='pca' inverts
    c = image_prior.coefficients(prior, images[:3])
    np.testing.assert_allclose(image_prior.coefficients(prior, image_prior.coefficient_image(prior, c, size, size)),
                               c, atol=1e-4)
    with pytest.raises(image_prior.ImagePriorError, match="one attribute vector per image"):
        image_prior.fit_conditional_prior(prior, images, attrs[:10].astype(np.float32))


def test_store_round_trips_the_conditional_image_prior(fitted_store, tmp_path):
    from jaxface.cgmm import image_prior

    rng = np.random.default_rng(1)
    images = rng.uniform(size=(30, 8, 8, 3))
    k = fitted_store.num_attributes
    prior, _ = image_prior.fit_image_prior(images, 5)
    joint = image_prior.fit_conditional_prior(prior, images, (rng.uniform(size=(30, k)) < 0.5).astype(np.float32))
    with_prior = dataclasses.replace(fitted_store, image_prior=prior, image_size=8, image_joint=joint)
    store.save_cgmm(tmp_path / "cgmm", with_prior)
    loaded = store.load_cgmm(tmp_path / "cgmm")
    for name in ("coef", "bias", "resid_var", "prior_rate", "impute_rate"):
        np.testing.assert_array_equal(getattr(loaded.image_joint, name), getattr(joint, name))
    assert loaded.image_joint.num_examples == 30
    with pytest.raises(store.CGMMStoreError, match="conditional image prior"):
        dataclasses.replace(fitted_store, image_prior=None, image_size=None, image_joint=joint)
