"""A fitted cGMM (and optional joint model) on disk: `cgmm.npz` (arrays) + `cgmm.json` (metadata).

The JSON is readable on its own: layer, schema, source checkpoint, per-attribute counts by name, the
excluded attributes, the chosen lambda, the grid and the fit losses. Both files are written to a
temporary name and renamed, so a crash never leaves a half-written model behind.
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import zipfile
from typing import Any

import numpy as np

from jaxface import files
from jaxface.cgmm.joint import JointModel
from jaxface.data.schema import Schema, get_schema
from jaxface.cgmm.image_prior import ImagePrior

FORMAT_VERSION = 1
ARRAYS_FILE = "cgmm.npz"
METADATA_FILE = "cgmm.json"


class CGMMStoreError(ValueError):
    """A fitted-model directory that is missing, incomplete or corrupt."""


@dataclasses.dataclass
class CGMMStore:
    layer: str
    layer_shape: tuple[int, ...]
    schema: Schema
    mean: np.ndarray  # (K, D) NaN rows for excluded attributes
    var: np.ndarray  # (K, D)
    count: np.ndarray  # (K,) examples behind each Gaussian
    excluded: list[int]
    weights: np.ndarray  # (K,) eq. (3); 0 for excluded attributes
    chosen_lambda: float
    min_count: int = 1
    source_checkpoint: str | None = None
    overall_mean: np.ndarray | None = None  # (D,)
    overall_var: np.ndarray | None = None  # (D,)
    fit_losses: dict = dataclasses.field(default_factory=dict)
    grid: dict = dataclasses.field(default_factory=dict)
    joint: JointModel | None = None
    extra: dict = dataclasses.field(default_factory=dict)
    image_prior: ImagePrior | None = None  # PCA of the training images at the classifier's input size
    image_size: int | None = None  # that input size
    # The prior's coefficients given the attribute vector (image_prior.fit_conditional_prior)
    image_joint: JointModel | None = None

    def __post_init__(self):
        self.schema = get_schema(self.schema)
        self.layer_shape = tuple(int(s) for s in self.layer_shape)
        self.excluded = sorted(int(i) for i in self.excluded)
        k, d = self.num_attributes, self.dim
        if k != self.schema.num_attributes:
            raise CGMMStoreError(
                f"model has {k} attributes but schema {self.schema.name!r} has {self.schema.num_attributes}"
            )
        if math.prod(self.layer_shape) != d:
            raise CGMMStoreError(f"layer shape {self.layer_shape} does not hold {d} units")
        for name, arr, shape in (("var", self.var, (k, d)), ("count", self.count, (k,)),
                                 ("weights", self.weights, (k,))):
            if np.shape(arr) != shape:
                raise CGMMStoreError(f"{name} must have shape {shape}, got {np.shape(arr)}")
        if any(not 0 <= i < k for i in self.excluded):
            raise CGMMStoreError(f"excluded attribute indices must be in [0, {k}), got {self.excluded}")
        if self.image_prior is not None:
            p = self.image_prior
            size = int(self.image_size or 0)
            if not p.describes(size, size):
                raise CGMMStoreError(
                    f"image prior arrays (mean {np.shape(p.mean)}, basis {np.shape(p.basis)}, std "
                    f"{np.shape(p.std)}) do not describe {size}x{size}x3 images")
        if self.image_joint is not None and (
                self.image_prior is None or self.image_joint.dim != self.image_prior.components
                or self.image_joint.num_attributes != k):
            raise CGMMStoreError(
                f"the conditional image prior ({np.shape(self.image_joint.coef)}) does not match the image "
                f"prior's components and the {k} attributes")

    @property
    def num_attributes(self) -> int:
        return int(np.shape(self.mean)[0])

    @property
    def dim(self) -> int:
        return int(np.shape(self.mean)[1])

    @property
    def included(self) -> np.ndarray:
        keep = np.ones(self.num_attributes, bool)
        keep[self.excluded] = False
        return keep

    @property
    def valid_attribute_names(self) -> list[str]:
        return [n for n, keep in zip(self.schema.attribute_names, self.included) if keep]

    @property
    def excluded_names(self) -> list[str]:
        return [self.schema.attribute_names[i] for i in self.excluded]

    def summary(self) -> str:
        lines = [
            f"cGMM on layer {self.layer} {self.layer_shape} ({self.dim} units), schema {self.schema.name}",
            f"  attributes: {self.num_attributes - len(self.excluded)} modelled, {len(self.excluded)} excluded"
            + (f" ({', '.join(self.excluded_names)})" if self.excluded else ""),
            f"  examples per attribute: min {int(np.min(self.count))}, median {int(np.median(self.count))}, "
            f"max {int(np.max(self.count))}",
            f"  weights: lambda {self.chosen_lambda:g}, mean {float(np.mean(self.weights[self.included])):.4g}",
            f"  joint model: {'yes (ridge ' + format(self.joint.lam, 'g') + ')' if self.joint else 'no'}",
            f"  image prior: "
            + (f"{self.image_prior.components} principal components of {self.image_size}x{self.image_size} images"
               if self.image_prior is not None else "no"),
        ]
        return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None  # JSON has no NaN/inf
    if hasattr(value, "tolist"):  # jax arrays
        return _jsonable(np.asarray(value))
    return value


def save_cgmm(directory: str | os.PathLike, store: CGMMStore) -> dict[str, str]:
    """Write `directory/cgmm.npz` and `directory/cgmm.json`; returns their paths."""
    directory = files.as_path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = dict(
        mean=np.asarray(store.mean, np.float32),
        var=np.asarray(store.var, np.float32),
        count=np.asarray(store.count, np.int64),
        weights=np.asarray(store.weights, np.float32),
    )
    if store.overall_mean is not None:
        arrays["overall_mean"] = np.asarray(store.overall_mean, np.float32)
    if store.overall_var is not None:
        arrays["overall_var"] = np.asarray(store.overall_var, np.float32)
    if store.joint is not None:
        arrays.update({k: np.asarray(v, np.float32) for k, v in store.joint.arrays().items()})
    if store.image_prior is not None:
        arrays.update({f"prior_{k}": np.asarray(v, np.float32) for k, v in store.image_prior._asdict().items()})
    if store.image_joint is not None:
        arrays.update({f"prior_{k}": np.asarray(v, np.float32) for k, v in store.image_joint.arrays().items()})
    names = store.schema.attribute_names
    metadata = dict(
        format_version=FORMAT_VERSION,
        layer=store.layer,
        layer_shape=list(store.layer_shape),
        dim=store.dim,
        schema=store.schema.to_dict(),
        source_checkpoint=None if store.source_checkpoint is None else str(store.source_checkpoint),
        counts={names[i]: int(c) for i, c in enumerate(np.asarray(store.count))},
        excluded=[names[i] for i in store.excluded],
        min_count=int(store.min_count),
        chosen_lambda=float(store.chosen_lambda),
        weights={names[i]: float(w) for i, w in enumerate(np.asarray(store.weights))},
        fit_losses=_jsonable(store.fit_losses),
        grid=_jsonable(store.grid),
        joint=None
        if store.joint is None
        else dict(lam=store.joint.lam, num_examples=store.joint.num_examples),
        extra=_jsonable(store.extra),
        image_prior=None
        if store.image_prior is None
        else dict(components=store.image_prior.components, image_size=int(store.image_size)),
        image_joint=None
        if store.image_joint is None
        else dict(lam=store.image_joint.lam, num_examples=store.image_joint.num_examples),
        arrays=sorted(arrays),
    )
    npz_path = directory / ARRAYS_FILE
    json_path = directory / METADATA_FILE

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    # arrays first, metadata last: a store whose metadata exists is complete
    files.write_bytes(npz_path, buffer.getvalue())
    files.write_text(json_path, json.dumps(metadata, indent=2))
    return dict(arrays=str(npz_path), metadata=str(json_path))


def load_cgmm(directory: str | os.PathLike) -> CGMMStore:
    """Read a directory written by save_cgmm; any missing or damaged piece raises CGMMStoreError."""
    directory = files.as_path(directory)
    json_path = directory / METADATA_FILE
    npz_path = directory / ARRAYS_FILE
    hint = "fit one first (`jaxface fit-cgmm --config=... --workdir=W` writes W/cgmm/)"
    if not directory.is_dir():
        raise CGMMStoreError(f"no fitted cGMM at {directory}: the directory does not exist; {hint}")
    for path in (json_path, npz_path):
        if not path.is_file():
            raise CGMMStoreError(f"no fitted cGMM at {directory}: {path.name} is missing; {hint}")
    try:
        metadata = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CGMMStoreError(f"cannot read {json_path}: corrupt metadata ({e})") from None
    if not isinstance(metadata, dict) or metadata.get("format_version") != FORMAT_VERSION:
        raise CGMMStoreError(
            f"{json_path} is not a cGMM metadata file of format {FORMAT_VERSION} "
            f"(found {metadata.get('format_version') if isinstance(metadata, dict) else type(metadata).__name__})"
        )
    try:
        with npz_path.open("rb") as f, np.load(f, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise CGMMStoreError(f"cannot read {npz_path}: corrupt array file ({e})") from None
    missing = [k for k in metadata.get("arrays", []) if k not in arrays]
    missing += [k for k in ("mean", "var", "count", "weights") if k not in arrays and k not in missing]
    if missing:
        raise CGMMStoreError(f"{npz_path} lacks array(s) {', '.join(missing)}: the model is incomplete")
    try:
        schema = Schema.from_dict(metadata["schema"])
        excluded = [schema.index(name) for name in metadata.get("excluded", [])]
        joint = None
        if metadata.get("joint") is not None:
            joint = JointModel(
                coef=arrays["joint_coef"], bias=arrays["joint_bias"], resid_var=arrays["joint_resid_var"],
                prior_rate=arrays["joint_prior_rate"], impute_rate=arrays["joint_impute_rate"],
                lam=float(metadata["joint"]["lam"]), num_examples=int(metadata["joint"]["num_examples"]),
            )
        image_prior, image_size = None, None
        if metadata.get("image_prior") is not None:
            image_prior = ImagePrior(*(arrays[f"prior_{k}"] for k in ImagePrior._fields))
            image_size = int(metadata["image_prior"]["image_size"])
        image_joint = None
        if metadata.get("image_joint") is not None:
            image_joint = JointModel(
                coef=arrays["prior_joint_coef"], bias=arrays["prior_joint_bias"],
                resid_var=arrays["prior_joint_resid_var"], prior_rate=arrays["prior_joint_prior_rate"],
                impute_rate=arrays["prior_joint_impute_rate"], lam=float(metadata["image_joint"]["lam"]),
                num_examples=int(metadata["image_joint"]["num_examples"]))
        return CGMMStore(
            layer=metadata["layer"],
            layer_shape=tuple(metadata["layer_shape"]),
            schema=schema,
            mean=arrays["mean"],
            var=arrays["var"],
            count=arrays["count"],
            excluded=excluded,
            weights=arrays["weights"],
            chosen_lambda=float(metadata["chosen_lambda"]),
            min_count=int(metadata.get("min_count", 1)),
            source_checkpoint=metadata.get("source_checkpoint"),
            overall_mean=arrays.get("overall_mean"),
            overall_var=arrays.get("overall_var"),
            fit_losses=metadata.get("fit_losses") or {},
            grid=metadata.get("grid") or {},
            joint=joint,
            extra=metadata.get("extra") or {},
            image_prior=image_prior,
            image_size=image_size,
            image_joint=image_joint,
        )
    except CGMMStoreError as e:
        raise CGMMStoreError(f"{directory}: inconsistent model: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise CGMMStoreError(f"{json_path}: corrupt or incomplete metadata ({type(e).__name__}: {e})") from None


def store_from_fit(
    *,
    layer: str,
    layer_shape,
    schema,
    stats: dict,
    weight_fit: dict | None = None,
    joint: JointModel | None = None,
    source_checkpoint: str | None = None,
    extra: dict | None = None,
    image_prior: ImagePrior | None = None,
    image_size: int | None = None,
    image_joint: JointModel | None = None,
) -> CGMMStore:
    """Assemble a CGMMStore from `fit_attribute_stats` and `weights.fit_weights` results."""
    k = np.shape(stats["mean"])[0]
    if weight_fit is None:
        weights = np.ones(k, np.float32)
        chosen_lambda = 0.0
        fit_losses, grid = {}, {}
    else:
        weights = np.asarray(weight_fit["weights"], np.float32)
        chosen_lambda = weight_fit["chosen_lambda"]
        sgd = weight_fit["sgd"]
        fit_losses = dict(
            method=weight_fit["method"],
            exact_train_loss=weight_fit["exact_train_loss"],
            exact_heldout_error=weight_fit["exact_heldout_error"],
            sgd_final_train_loss=np.asarray(sgd.loss),
            sgd_heldout_error=weight_fit["sgd_heldout_error"],
            sgd_best_index=list(weight_fit["sgd_best_index"]),
        )
        grid = dict(lambdas=weight_fit["lambdas"], lrs=weight_fit["lrs"])
    weights = np.where(stats["included"], weights, 0.0).astype(np.float32)
    return CGMMStore(
        layer=layer,
        layer_shape=tuple(layer_shape),
        schema=schema,
        mean=stats["mean"],
        var=stats["var"],
        count=stats["count"],
        excluded=stats["excluded"],
        weights=weights,
        chosen_lambda=chosen_lambda,
        min_count=stats["min_count"],
        source_checkpoint=source_checkpoint,
        overall_mean=stats.get("overall_mean"),
        overall_var=stats.get("overall_var"),
        fit_losses=fit_losses,
        grid=grid,
        joint=joint,
        extra=extra or {},
        image_prior=image_prior,
        image_size=image_size,
        image_joint=image_joint,
    )
