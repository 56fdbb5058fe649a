"""Benchmark of the cGMM fit: statistics, weight data, SGD grid, exact ridge, joint model.

Synthetic planted data stands in for a real layer (the maths does not care where activations come
from): ReLU activations of a linear model of 0/1 attributes, ~10% of labels unknown. Every timing is
the median over `repeats` runs after a warm-up run; compile_s is the warm-up time minus that median.

    python -m jaxface.bench.cgmm_bench --out=cgmm.json        # 20,000 x 4,096, 73 attributes
"""
from __future__ import annotations

import argparse
import dataclasses
import json

import jax

import jax.numpy as jnp
import numpy as np

from jaxface.bench.common import environment, timed as _timed

from jaxface.cgmm import joint, stats, targets, weights
from jaxface.cgmm.store import store_from_fit
from jaxface.data.schema import Schema

SUITE = "cgmm"


def synthetic_data(num: int, dim: int, num_attributes: int, seed: int = 0):
    """Planted activations: relu(base + a @ effects + noise), attribute rates between 3% and 60%."""
    key = jax.random.key(seed)
    k_rate, k_attr, k_mask, k_eff, k_base, k_noise = jax.random.split(key, 6)
    rates = jax.random.uniform(k_rate, (num_attributes,), minval=0.03, maxval=0.6)
    attributes = (jax.random.uniform(k_attr, (num, num_attributes)) < rates).astype(jnp.float32)
    mask = jax.random.uniform(k_mask, (num, num_attributes)) < 0.9
    effects = 0.5 * jax.random.normal(k_eff, (num_attributes, dim))
    base = 1.0 + 0.5 * jax.random.normal(k_base, (dim,))
    acts = jax.nn.relu(base + attributes @ effects + jax.random.normal(k_noise, (num, dim)))
    return jax.block_until_ready((acts, attributes, mask))


def run(
    num: int = 20000,
    dim: int = 4096,
    K: int = 73,
    *,
    batch: int = 1000,
    num_lambdas: int = 6,
    num_lrs: int = 4,
    sgd_steps: int = 2000,
    sgd_batch: int = 256,
    heldout_fraction: float = 0.2,
    repeats: int = 3,
    seed: int = 0,
) -> list[dict]:
    devices = jax.devices()
    mesh = jax.make_mesh((len(devices),), ("data",)) if len(devices) > 1 else None
    acts, attributes, mask = synthetic_data(num, dim, K, seed)
    host_batches = [
        (acts[s : s + batch], attributes[s : s + batch], mask[s : s + batch]) for s in range(0, num, batch)
    ]
    # This run's own backend and device count win over the environment's.
    common = dict(environment(), suite=SUITE, backend=jax.default_backend(), devices=len(devices), num=num,
                  dim=dim, attributes=K, batch=batch, throughput_unit="activation rows/s")
    records = []

    def record(name, first, median, **extra):
        rec = dict(common, name=name, seconds=median, compile_s=max(first - median, 0.0),
                   step_ms=round(median * 1e3, 3), throughput=round(num / median, 2), **extra)
        records.append(rec)
        return rec

    # --- statistics: one pass, per batch one (K+1, B) x (B, 2D) product
    acc = stats.AttributeStats(K, dim, mesh=mesh)

    def stats_pass():
        state = acc.init()
        for a, l, m in host_batches:
            state = acc.update(state, a, l, m)
        return jax.block_until_ready(state)

    first, median, state = _timed(stats_pass, repeats)
    fitted = acc.finalize(state, min_count=10)
    flops = 2.0 * num * (K + 1) * 2 * dim
    record("stats", first, median, gflops_per_s=flops / median / 1e9, rows_per_s=num / median,
           excluded=len(fitted["excluded"]))

    # --- weight data: X mu^T for every image (the only O(N D K) step of the weight fit)
    split = int(num * (1 - heldout_fraction))
    mu = jnp.asarray(fitted["mean"])
    first, median, (train, heldout) = _timed(
        lambda: jax.block_until_ready((
            weights.prepare_weight_data(mu, acts[:split], attributes[:split], mask[:split]),
            weights.prepare_weight_data(mu, acts[split:], attributes[split:], mask[split:]),
        )),
        repeats,
    )
    record("weight_data", first, median, gflops_per_s=2.0 * num * dim * K / median / 1e9)
    train_stats = weights.suff_stats(train)
    heldout_stats = weights.suff_stats(heldout)

    # --- exact ridge for every lambda (K x K solves)
    lambdas = np.logspace(-6, -1, num_lambdas).astype(np.float32)
    top = weights.max_stable_lr(train_stats, float(lambdas.max()))
    first, median, exact = _timed(
        lambda: jax.block_until_ready(weights.fit_weights_exact(weights.suff_stats(train), lambdas)), repeats
    )
    exact_choice = weights.select_lambda(heldout_stats, np.asarray(exact), lambdas)
    eig = np.linalg.eigvalsh(np.asarray(train_stats.q, np.float64))
    record("exact_ridge", first, median, lambdas=num_lambdas, q_condition=float(eig[-1] / max(eig[0], 1e-30)),
           heldout_rel_error=float(np.min(exact_choice["errors"])) * split / float(train_stats.sqnorm_sum))

    # --- SGD grid: (num_lrs x num_lambdas) minibatch SGD runs in one compiled call
    lrs = (top * 0.5 ** np.arange(1, num_lrs + 1)).astype(np.float32)
    first, median, sgd = _timed(
        lambda: jax.block_until_ready(
            weights.fit_weights_sgd(train, lambdas, lrs, steps=sgd_steps, batch_size=sgd_batch, key=seed)
        ),
        repeats,
    )
    sgd_w = np.asarray(sgd.weights)
    rel = np.abs(sgd_w - np.asarray(exact)[None]).max(-1) / np.abs(np.asarray(exact)).max(-1)[None]
    record("sgd_grid", first, median, steps=sgd_steps, sgd_batch=sgd_batch, grid=num_lrs * num_lambdas,
           grid_steps_per_s=num_lrs * num_lambdas * sgd_steps / median,
           # for each lambda the best learning rate's max |w - w_exact| / max |w_exact|; worst lambda
           sgd_vs_exact_max_rel=float(np.nanmin(rel, axis=0).max()))

    # --- joint model: streamed sums + (K+1) x (K+1) solve with D right-hand sides (float64, host)
    jstats = joint.JointStats(K, dim, mesh=mesh)

    def joint_fit():
        jstate = jstats.init()
        for a, l, m in host_batches[: max(1, int(len(host_batches) * (1 - heldout_fraction)))]:
            jstate = jstats.update(jstate, a, l, m)
        return jstats.finalize(jax.block_until_ready(jstate))

    first, median, model = _timed(joint_fit, repeats)
    joint_err = joint.prediction_error(model, acts[split:], attributes[split:], mask[split:])
    sq_mean = float(heldout_stats.sqnorm_sum) / float(heldout_stats.n)
    cgmm_err = float(weights.reconstruction_error(
        jnp.asarray(exact_choice["best_weights"]), mu, acts[split:], attributes[split:], mask[split:]
    ))
    record("joint", first, median, heldout_mse_joint=joint_err, heldout_mse_cgmm=cgmm_err,
           heldout_mean_sq_norm=sq_mean)

    # --- target quality on held-out images: fraction of the attribute signal each model misses
    schema = Schema.from_dict({"name": f"synthetic{K}", "groups": [f"attribute {i}" for i in range(K)]})
    fit_store = store_from_fit(layer="synthetic", layer_shape=(dim,), schema=schema, stats=fitted, joint=model)
    fit_store.weights = np.where(fit_store.included, exact_choice["best_weights"], 0.0).astype(np.float32)
    unit_store = dataclasses.replace(fit_store, weights=fit_store.included.astype(np.float32))
    rng = np.random.default_rng(seed)
    valid = fit_store.valid_attribute_names
    held = (np.asarray(acts[split:]), np.asarray(attributes[split:]), np.asarray(mask[split:]))
    quality = dict(weights_min=float(fit_store.weights[fit_store.included].min()),
                   weights_max=float(fit_store.weights[fit_store.included].max()))
    for size in (1, 3):
        sets = [list(rng.choice(valid, size, replace=False)) for _ in range(20)]
        for label, model_store, name in (("cgmm", fit_store, "cgmm"), ("cgmm_w1", unit_store, "cgmm"),
                                         ("joint", fit_store, "joint")):
            rows = targets.target_fidelity(model_store, sets, *held, model=name, min_images=10)
            errors = np.array([r["relative_error"] for r in rows], np.float64)
            # NaN where no set had enough held-out images (tiny runs).
            quality[f"target_rel_error_{label}_{size}"] = float(np.nanmean(errors)) if np.isfinite(errors).any() \
                else float("nan")
    records[-1].update(quality)
    return records


def print_table(records: list[dict]) -> None:
    print(f"{'name':<12} {'seconds':>9} {'compile_s':>9}  notes")
    for r in records:
        notes = {k: r[k] for k in ("gflops_per_s", "grid_steps_per_s", "sgd_vs_exact_max_rel", "q_condition",
                                   "heldout_mse_cgmm", "heldout_mse_joint") if k in r}
        notes.update({k: v for k, v in r.items() if k.startswith("target_rel_error")})
        text = ", ".join(f"{k}={v:.4g}" for k, v in notes.items())
        print(f"{r['name']:<12} {r['seconds']:>9.4f} {r['compile_s']:>9.3f}  {text}")
    if records:
        r = records[0]
        print(f"backend={r['backend']} devices={r['devices']} N={r['num']} D={r['dim']} K={r['attributes']} "
              f"jax={r['jax_version']} cpu={r['cpu_model']} x{r['cpu_count']}")


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the records as a JSON list to this file")
    parser.add_argument("--num", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--attributes", type=int, default=73)
    parser.add_argument("--sgd_steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    records = run(args.num, args.dim, args.attributes, sgd_steps=args.sgd_steps, repeats=args.repeats)
    print_table(records)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(records, f, indent=2)
        print(f"wrote {args.out}")
    return records


if __name__ == "__main__":
    main()
