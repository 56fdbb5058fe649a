"""The judge: a second attribute classifier (another architecture and seed) that no generation objective
ever uses, so what it reads in a generated face is evidence (`jaxface generate --judge_workdir=W`).

Per generated set it gives:
- judge_hit_rate / judge_all_detected: the requested attributes the judge detects (the same decision rule
  as the hit rate: a head's predicted class);
- kid / kid_se: Kernel Inception Distance in the judge's penultimate features between the generated faces
  and held-out real faces of the judge's data (the test split) that carry the requested attributes;
  kid_floor: the same between two disjoint sets of those real faces, one as large as the generated set
  (what a perfect generator would score with that many images);
- judge_diversity / real_judge_diversity: mean pairwise distance of the judge's features across the set's
  images, and across as many real faces with those attributes.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxface import files, parallel
from jaxface.evaluate import generation as metrics
from jaxface.generate.settings import GenerateError

NUM_REAL = 48  # real faces per set for KID (the test split's first ones with the attributes)
_CHUNK = 32  # images per judge call: one compiled shape


@dataclasses.dataclass
class Judge:
    workdir: pathlib.Path
    setup: Any
    run: Any  # jitted (model, images) -> (head logits, features)
    # The judge's features of the real faces of an attribute set, by (attribute indices, count): every
    # target model and mode of one set is compared with the same real faces, rendered and judged once.
    real_features: dict = dataclasses.field(default_factory=dict)

    @property
    def schema(self):
        return self.setup.task.schema

    @property
    def input_size(self) -> int:
        return int(self.setup.config.model.input_size)


def load_judge(workdir, schema=None) -> Judge:
    """A trained attribute classifier of WORKDIR as the judge; its schema must be the generator's."""
    from jaxface.train import checkpoint, trainer

    workdir = files.as_path(workdir)
    try:
        # Every process judges the gathered images on its own devices (a sweep splits only the rendering).
        setup = trainer.load_for_inference(workdir, mesh=parallel.own_share_mesh())
    except checkpoint.CheckpointError as err:
        raise GenerateError(f"--judge_workdir: {err}") from None
    return judge_from_setup(setup, schema)


def judge_from_setup(setup, schema=None) -> Judge:
    """The judge of an already loaded attribute classifier (trainer.load_for_inference)."""
    workdir = files.as_path(setup.workdir)
    if setup.task.name != "attributes":
        raise GenerateError(f"--judge_workdir={workdir} holds a {setup.task.name!r} model, not an attribute "
                            "classifier (train one with configs/attributes/synthfaces_judge.py)")
    if schema is not None and tuple(setup.task.schema.attribute_names) != tuple(schema.attribute_names):
        raise GenerateError(f"the judge in {workdir} reads schema {setup.task.schema.name}, the generator "
                            f"{schema.name}: they must name the same attributes")

    @nnx.jit
    def run(model, images):
        return model(images, train=False), model.features(images, train=False)

    return Judge(workdir, setup, run)


def judge_images(judge: Judge, images) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, S, S, 3), float in [0, 1] or uint8 -> (detected (N, K) bool, features (N, D))."""
    x = np.asarray(images)
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    size = judge.input_size
    if x.shape[1:3] != (size, size):
        x = np.asarray(jax.image.resize(x, (len(x), size, size, 3), "linear"))
    detected, features = [], []
    with jax.set_mesh(judge.setup.mesh):
        for start in range(0, len(x), _CHUNK):
            chunk = x[start:start + _CHUNK]
            padded = np.zeros((_CHUNK,) + chunk.shape[1:], np.float32)
            padded[:len(chunk)] = chunk
            logits, feats = judge.run(judge.setup.model, jnp.asarray(padded))
            detected.append(metrics.head_predictions(judge.schema, [np.asarray(l)[:len(chunk)] for l in logits]))
            features.append(np.asarray(feats, np.float64)[:len(chunk)])
    return np.concatenate(detected), np.concatenate(features)


def judge_set(judge: Judge, images, requested: Sequence[int], num_real: int = NUM_REAL) -> dict:
    """The judge's figures for one generated set (see the module docstring)."""
    from jaxface.data import report as data_report

    detected, features = judge_images(judge, images)
    rates = metrics.hit_rates(detected, [list(requested)] * len(detected))
    out = {"judge_hit_rate": float(rates.mean()), "judge_all_detected": float(np.mean(rates == 1.0)),
           "judge_diversity": metrics.feature_diversity(features), "kid": None, "kid_se": None,
           "kid_floor": None, "real_judge_diversity": None, "num_real": 0}
    key = (tuple(int(i) for i in requested), num_real + len(images))
    if key not in judge.real_features:
        real, _ = data_report.real_faces_with(judge.setup.config.data, requested, key[1])
        judge.real_features[key] = judge_images(judge, real)[1] if len(real) >= 4 else None
    real_features = judge.real_features[key]
    if real_features is not None:
        held, rest = real_features[:len(images)], real_features[len(images):]
        reference = rest if len(rest) >= 2 else real_features
        out["kid"], out["kid_se"] = metrics.kid(features, reference)
        if len(rest) >= 2:
            out["kid_floor"] = metrics.kid(held, rest)[0]
        out["real_judge_diversity"] = metrics.feature_diversity(held)
        out["num_real"] = int(len(reference))
    return out
