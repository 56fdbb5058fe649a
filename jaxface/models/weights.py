"""Params-only weight files: an orbax checkpoint of a nested dict of arrays plus metadata.json.

Layout of a weight directory D:
    D/params/          orbax StandardCheckpointer checkpoint of the nested {name: array} dict
    D/metadata.json    {"format": "jaxface-weights", "format_version": 1, "metadata": {...caller's...}}

A weight file holds parameters only (no optimiser state, no RNG state): pass
`nnx.state(model, nnx.Param).to_pure_dict()` or any sub-dict of it. List indices in nnx paths
(e.g. heads.heads[0]) are stored as the string keys '0', '1', ...; `restore_into` matches keys by their
string form, so this is transparent.

These files are what `jaxface convert-weights` writes and what `init_from` in configs reads; the
trainer's full training checkpoints (with optimiser state and data position) are a separate format.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
from typing import Any, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = [
    "WeightsError",
    "WeightsNotFoundError",
    "WeightsShapeError",
    "WeightsKeyError",
    "save_weights",
    "load_weights",
    "restore_into",
    "flatten_state",
]

FORMAT_NAME = "jaxface-weights"
FORMAT_VERSION = 1
PARAMS_DIR = "params"
METADATA_FILE = "metadata.json"


class WeightsError(ValueError):
    """A weight directory cannot be written, read or applied."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """The weight directory (or a part of it) does not exist."""


class WeightsShapeError(WeightsError):
    """Arrays in the file do not have the model's shapes."""


class WeightsKeyError(WeightsError):
    """The file and the model do not hold the same parameter names."""


# ------------------------------------------------------------------------------------------ helpers
def _leaf_to_numpy(path: str, leaf: Any) -> np.ndarray:
    if isinstance(leaf, nnx.Variable):
        leaf = leaf.value
    if isinstance(leaf, jax.Array):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            raise WeightsError(
                f"{path} is a PRNG key; weight files hold parameters only - save "
                f"nnx.state(model, nnx.Param).to_pure_dict()"
            )
        if not leaf.is_fully_addressable:
            from jax.experimental import multihost_utils

            leaf = multihost_utils.process_allgather(leaf, tiled=True)
    try:
        array = np.asarray(leaf)
    except Exception as e:  # noqa: BLE001 - name the offending leaf
        raise WeightsError(f"{path}: cannot be stored as an array ({type(leaf).__name__}: {e})") from None
    if array.dtype == object:
        raise WeightsError(f"{path}: holds a {type(leaf).__name__}, not an array")
    return array


def _to_string_tree(tree: Any, path: str = "") -> Any:
    """Nested dict with str keys and numpy leaves (nnx.State and list indices accepted)."""
    if isinstance(tree, nnx.State):
        tree = tree.to_pure_dict()
    if isinstance(tree, Mapping):
        out = {}
        for key, value in tree.items():
            name = str(getattr(key, "key", key))
            if "/" in name or "." in name or not name:
                raise WeightsError(f"parameter key {name!r} under {path or '<root>'!r} may not be empty or "
                                   f"contain '/' or '.'")
            out[name] = _to_string_tree(value, f"{path}/{name}" if path else name)
        return out
    if isinstance(tree, (list, tuple)):
        return {str(i): _to_string_tree(v, f"{path}/{i}") for i, v in enumerate(tree)}
    return _leaf_to_numpy(path, tree)


def flatten_state(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a/b/kernel': leaf} from a nested dict (keys joined with '/')."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_state(value, name))
        else:
            flat[name] = value
    return flat


def _json_default(obj: Any):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (tuple, set, frozenset)):
        return list(obj)
    if isinstance(obj, pathlib.PurePath):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


# ------------------------------------------------------------------------------------------ API
def save_weights(
    directory: str | os.PathLike,
    state: Mapping[str, Any],
    metadata: Mapping[str, Any],
    *,
    overwrite: bool = False,
) -> None:
    """Write `state` (nested dict of arrays) as an orbax checkpoint with `metadata` beside it.

    Refuses to replace an existing non-empty directory unless overwrite=True.
    """
    import orbax.checkpoint as ocp

    directory = pathlib.Path(directory).expanduser().resolve()
    tree = _to_string_tree(state)
    if not isinstance(tree, dict) or not flatten_state(tree):
        raise WeightsError("save_weights needs a non-empty nested dict of arrays")
    try:
        meta_text = json.dumps(
            {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "metadata": dict(metadata)},
            indent=2,
            sort_keys=True,
            default=_json_default,
        )
    except TypeError as e:
        raise WeightsError(f"weight metadata must be JSON serialisable: {e}") from None

    if directory.exists():
        if not directory.is_dir():
            raise WeightsError(f"{directory} exists and is not a directory")
        if any(directory.iterdir()):
            if not overwrite:
                raise WeightsError(
                    f"{directory} already exists and is not empty; choose another destination or "
                    f"pass overwrite=True (--overwrite) to replace it"
                )
            if not ((directory / METADATA_FILE).exists() or (directory / PARAMS_DIR).exists()):
                # Never delete a directory that is not a weight directory (a typo'd destination).
                raise WeightsError(
                    f"{directory} is not empty and is not a jaxface weight directory; refusing to "
                    f"replace it even with overwrite=True"
                )
            if jax.process_index() == 0:
                shutil.rmtree(directory)
    if jax.process_index() == 0:
        directory.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / PARAMS_DIR, tree)
        checkpointer.wait_until_finished()
    if jax.process_index() == 0:
        tmp = directory / (METADATA_FILE + ".tmp")
        tmp.write_text(meta_text)
        tmp.replace(directory / METADATA_FILE)


def load_weights(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """(nested dict of numpy arrays, metadata dict) from a directory written by save_weights."""
    import orbax.checkpoint as ocp

    directory = pathlib.Path(directory).expanduser().resolve()
    if not directory.is_dir():
        raise WeightsNotFoundError(
            f"weight directory {directory} does not exist (create one with `jaxface convert-weights` "
            f"or save_weights)"
        )
    meta_path = directory / METADATA_FILE
    params_path = directory / PARAMS_DIR
    if not meta_path.is_file() or not params_path.is_dir():
        missing = [p.name for p in (meta_path, params_path) if not p.exists()]
        raise WeightsNotFoundError(
            f"{directory} is not a jaxface weight directory: missing {', '.join(missing)} "
            f"(expected {PARAMS_DIR}/ and {METADATA_FILE})"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise WeightsError(f"{meta_path} is unreadable or corrupt: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise WeightsError(f"{meta_path} is not jaxface weight metadata (format {FORMAT_NAME!r} expected)")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise WeightsError(
            f"{directory} has weight format version {meta.get('format_version')}, newer than this "
            f"jaxface understands ({FORMAT_VERSION}); upgrade jaxface"
        )
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            state = checkpointer.restore(params_path)
    except Exception as e:  # noqa: BLE001 - orbax raises many types for damaged checkpoints
        raise WeightsError(
            f"the checkpoint in {params_path} is corrupt or unreadable ({type(e).__name__}: {e})"
        ) from None
    state = jax.tree_util.tree_map(np.asarray, state)
    return state, dict(meta.get("metadata", {}))


def _normalise_prefix(prefix: str) -> str:
    return prefix.replace(".", "/").strip("/")


def _skipped(path: str, prefixes: Sequence[str]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in prefixes)


def _shape_hint(metadata: Mapping[str, Any], model: Any) -> str:
    parts = []
    for attr in ("width", "input_size", "head_sizes"):
        if attr in metadata and hasattr(model, attr):
            file_value, model_value = metadata[attr], getattr(model, attr)
            if isinstance(model_value, tuple):
                model_value = list(model_value)
            if file_value != model_value:
                parts.append(f"{attr}: file {file_value!r}, model {model_value!r}")
    if parts:
        return " The file was written for a different configuration (" + "; ".join(parts) + ")."
    return (" Check that the model's width / input_size (and head sizes) match those the file was "
            "written with (see its metadata.json).")


def restore_into(
    model: nnx.Module,
    directory: str | os.PathLike,
    *,
    skip_prefixes: Iterable[str] = (),
    strict: bool = True,
) -> list[str]:
    """Copy the file's arrays into the model's nnx.Param and nnx.BatchStat variables; returns the loaded paths.

    Paths are '/'-joined state paths such as 'conv1_1/kernel' or 'heads/heads/0/bias'. Parameters under
    `skip_prefixes` (e.g. 'heads') are ignored on both sides. Any shape mismatch raises one
    WeightsShapeError listing every mismatching parameter. With strict=True a model parameter missing
    from the file, or a file array the model lacks, raises WeightsKeyError; with strict=False the
    common parameters are loaded and the rest left as they are. Values are cast to the model's dtype
    and placed with the model array's sharding.
    """
    prefixes = tuple(_normalise_prefix(p) for p in skip_prefixes)
    file_state, metadata = load_weights(directory)
    file_flat = {k: v for k, v in flatten_state(file_state).items() if not _skipped(k, prefixes)}

    params = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
    model_paths: dict[str, tuple] = {}
    model_values: dict[str, Any] = {}
    for path, variable in nnx.to_flat_state(params):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        if _skipped(name, prefixes):
            continue
        model_paths[name] = tuple(path)
        model_values[name] = variable.value if isinstance(variable, nnx.Variable) else variable

    common = [k for k in model_values if k in file_flat]
    mismatches = [
        (k, tuple(np.shape(file_flat[k])), tuple(np.shape(model_values[k])))
        for k in common
        if tuple(np.shape(file_flat[k])) != tuple(np.shape(model_values[k]))
    ]
    if mismatches:
        listed = "; ".join(f"{k}: file {f} vs model {m}" for k, f, m in mismatches[:8])
        more = f" (and {len(mismatches) - 8} more)" if len(mismatches) > 8 else ""
        raise WeightsShapeError(
            f"cannot load {directory} into this model: {len(mismatches)} parameter(s) differ in shape: "
            f"{listed}{more}.{_shape_hint(metadata, model)}"
        )
    if strict:
        missing = sorted(k for k in model_values if k not in file_flat)
        unexpected = sorted(k for k in file_flat if k not in model_values)
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing from the file: {', '.join(missing[:10])}"
                             + (f" (+{len(missing) - 10} more)" if len(missing) > 10 else ""))
            if unexpected:
                parts.append(f"not in the model: {', '.join(unexpected[:10])}"
                             + (f" (+{len(unexpected) - 10} more)" if len(unexpected) > 10 else ""))
            raise WeightsKeyError(
                f"{directory} does not match the model's parameters ({'; '.join(parts)}). Pass "
                f"skip_prefixes (e.g. 'heads' for freshly initialised heads) or strict=False."
            )

    pure = params.to_pure_dict()
    for name in common:
        node = pure
        path = model_paths[name]
        for key in path[:-1]:
            node = node[key]
        old = model_values[name]
        new = jnp.asarray(file_flat[name], dtype=old.dtype)
        sharding = getattr(old, "sharding", None)
        if sharding is not None:
            new = jax.device_put(new, sharding)
        node[path[-1]] = new
    nnx.replace_by_pure_dict(params, pure)
    nnx.update(model, params)
    return sorted(common)
