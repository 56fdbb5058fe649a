"""Training checkpoints: model, optimiser, step, RNG and the data position (global batches consumed, in
the meta item) in one orbax step directory.

The model and the optimiser are separate items so that inference (evaluate, predict, serve, generate)
restores the model alone, without building an optimiser. A latest checkpoint that cannot be read is
moved aside to WORKDIR/checkpoints_corrupt/ and the previous one is used; a workdir whose every
checkpoint is unreadable is an error, never a silent restart from scratch.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint._src.metadata import array_metadata_store as _array_metadata_store

from jaxface import faults, files
from jaxface.train.optim import path_to_str

CHECKPOINT_DIR = "checkpoints"

# orbax writes a replicated array in slices, one per replica, so that replicas write in parallel. Each
# slice is a compiled program of its own: on 8 devices a save of the tests' tiny VGG cut 1,400 slices and
# took 5.5 s, while parallel writing only pays for large arrays. Below 16 MiB a slice, replica 0 writes
# the array whole (what it does on one device anyway); the files are the same either way.
MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL = 16 << 20
_absl_logger = logging.getLogger("absl")
_level = _absl_logger.level
_absl_logger.setLevel(logging.ERROR)  # orbax warns about every override; this one is deliberate
try:
    ocp.type_handlers.register_type_handler(
        jax.Array,
        ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL,
                                       array_metadata_store=_array_metadata_store.Store()),  # as orbax's default
        override=True,
    )
finally:
    _absl_logger.setLevel(_level)


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or written by a model of another shape."""


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (a full disk, a read-only or vanished folder): the steps
    already saved are intact, and the message says which one a rerun resumes from."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.errno = code


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def keys_to_data(tree):
    """Typed PRNG keys -> their uint32 data (what orbax can store)."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def data_to_keys(tree, like):
    return jax.tree.map(
        lambda d, l: jax.random.wrap_key_data(d, impl=jax.random.key_impl(l)) if _is_key(l) else d,
        tree, like,
    )


def _abstract(tree):
    def spec(x):
        sharding = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)

    return jax.tree.map(spec, tree)


def manager(workdir, *, keep: int = 3, create: bool = True) -> ocp.CheckpointManager:
    workdir = files.as_path(workdir)
    # orbax wants an absolute directory; a URL (gs://...) already is one
    directory = (workdir.absolute() if files.is_local(workdir) else workdir) / CHECKPOINT_DIR
    if not create and not directory.exists():
        raise CheckpointError(
            f"no checkpoints in {files.as_path(workdir)}: expected {directory} (run `jaxface train` first)"
        )
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create, cleanup_tmp_directories=True)
    handlers = {
        "model": ocp.StandardCheckpointHandler(),
        "opt": ocp.StandardCheckpointHandler(),
        "meta": ocp.JsonCheckpointHandler(),
        # Checkpoints of earlier versions also hold grain's per-process iterator state: read by nobody
        # now (meta["data_batches"] replaced it), the handler stays so that orbax still knows the item.
        "data": grain.checkpoint.CheckpointHandler(),
    }
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


# Room kept free beyond the checkpoint's own bytes (metadata, the metrics log, other files).
_SPARE_BYTES = 1 << 20


def _state_bytes(tree) -> int:
    return sum(int(np.prod(np.shape(x))) * np.dtype(x.dtype).itemsize
               for x in jax.tree.leaves(tree) if hasattr(x, "dtype") and not _is_key(x))


def _write_failure(mngr, step: int, err: BaseException) -> CheckpointWriteError | None:
    """The one-line error for a save that failed on the file system, else None (not a write failure).
    orbax reports TensorStore's failures as ValueErrors carrying the OS reason in their text."""
    text = str(err)
    code = getattr(err, "errno", None)
    if code is None:
        code = next((c for c in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO)
                     if os.strerror(c) in text), None)
    if code is None and not isinstance(err, OSError):
        return None
    kept = [s for s in mngr.all_steps() if s != step]
    why = os.strerror(code) if code is not None else (text.strip().splitlines() or [""])[0][:160]
    return CheckpointWriteError(f"could not write checkpoint step {step} in {mngr.directory}: {why}. "
                                + _kept_and_remedy(max(kept) if kept else None), code)


def _kept_and_remedy(latest: int | None) -> str:
    """The end of every write-failure message: what a rerun resumes from, and what to do."""
    kept = (f"The checkpoints already saved are intact (latest: step {latest}); " if latest is not None
            else "No earlier checkpoint exists; ")
    return kept + "free some space (or use another --workdir) and run the same command again to resume"


def check_room(mngr, step: int, *, model_state, opt_state) -> None:
    """Refuses a save that cannot fit on a local disk before writing a byte of it, so that a full disk
    ends the run with one line while every saved step stays whole. Waits for the previous save first
    (orbax would before starting the next one anyway), so that its bytes are counted as used."""
    directory = files.as_path(mngr.directory)
    if not files.is_local(directory) or not directory.exists():
        return
    mngr.wait_until_finished()
    needed = _state_bytes(model_state) + _state_bytes(opt_state) + _SPARE_BYTES
    free = shutil.disk_usage(str(directory)).free
    if free < needed:
        raise CheckpointWriteError(
            f"not enough disk space for checkpoint step {step} in {mngr.directory}: it needs about "
            f"{needed / 2**20:.1f} MiB and {free / 2**20:.1f} MiB are free. " + _kept_and_remedy(mngr.latest_step()),
            errno.ENOSPC)


def save(mngr, step: int, *, model_state, opt_state, meta: dict, force=False) -> bool:
    """Saves one step (asynchronously where orbax can). A write that fails on the file system, now or
    in the background write of the previous save, is a CheckpointWriteError naming what is intact."""
    try:
        check_room(mngr, step, model_state=model_state, opt_state=opt_state)
        faults.hit("checkpoint_save")
        return _save(mngr, step, model_state=model_state, opt_state=opt_state, meta=meta, force=force)
    except CheckpointWriteError:
        raise
    except Exception as err:  # noqa: BLE001 - only file-system failures are translated
        failure = _write_failure(mngr, step, err)
        if failure is None:
            raise
        raise failure from err


def wait_until_finished(mngr, step: int) -> None:
    """Waits for the background write of STEP; a file-system failure becomes a CheckpointWriteError."""
    try:
        mngr.wait_until_finished()
    except Exception as err:  # noqa: BLE001
        failure = _write_failure(mngr, step, err)
        if failure is None:
            raise
        raise failure from err


def _save(mngr, step: int, *, model_state, opt_state, meta: dict, force=False) -> bool:
    # The data position is meta["data_batches"] (global batches consumed), not grain's per-process
    # iterator files: a checkpoint written by N processes then resumes in any number of processes.
    items = {
        "model": ocp.args.StandardSave(keys_to_data(model_state)),
        "opt": ocp.args.StandardSave(keys_to_data(opt_state)),
        "meta": ocp.args.JsonSave(meta),
    }
    return mngr.save(step, args=ocp.args.Composite(**items), force=force)


def _check_shapes(mngr, step: int, item: str, target) -> None:
    """One clear error naming the first parameter whose stored shape differs from the model's."""
    try:
        stored = mngr.item_metadata(step)[item]
    except Exception:  # noqa: BLE001 - metadata unavailable: the restore itself will report
        return
    if stored is None:
        return
    # Keyed by path text: lists in the model come back from storage as dicts with "0", "1", ... keys.
    flat_target = {path_to_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(target)[0]}
    flat_stored = {path_to_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(stored)[0]}
    for name, t in flat_target.items():
        s = flat_stored.get(name)
        if s is None or not hasattr(s, "shape"):
            continue
        if tuple(s.shape) != tuple(np.shape(t)):
            raise CheckpointError(
                f"checkpoint step {step} in {mngr.directory} holds {item}/{name} with shape "
                f"{tuple(s.shape)} but the model has {tuple(np.shape(t))}: the model config (width, "
                f"input_size, schema) differs from the run that wrote it; use its config.json"
            )
    # A different parameter set is a mismatch between the run and this config, not a corrupt file: it
    # must be an error that leaves the checkpoints where they are.
    extra = [p for p in flat_stored if p not in flat_target]
    if extra:
        raise CheckpointError(
            f"checkpoint step {step} in {mngr.directory} holds {item} entries that the model does not have, "
            f"such as {extra[:3]}: it was written by another kind of model (compare the model section, "
            "e.g. model.norm, with the run's config.json)"
        )
    missing = [p for p in flat_target if p not in flat_stored]
    if missing:
        raise CheckpointError(
            f"checkpoint step {step} in {mngr.directory} lacks {item} entries such as {missing[:3]}: "
            "it was written by another kind of model (compare the model section with the run's config.json)"
        )


def _move_aside(mngr, step: int) -> None:
    src = files.as_path(mngr.directory) / str(step)
    dst_dir = files.as_path(mngr.directory).parent / "checkpoints_corrupt"
    dst_dir.mkdir(exist_ok=True)
    dst = dst_dir / str(step)
    if dst.exists():
        dst.rmtree()
    if src.exists():
        src.rename(dst)
    mngr.reload()


def restore_latest(mngr, *, model_state, opt_state=None) -> dict | None:
    """Restores the newest readable step; None when the workdir has no checkpoint at all."""
    steps = sorted(mngr.all_steps(), reverse=True)
    corrupt = files.as_path(mngr.directory).parent / "checkpoints_corrupt"
    if not steps and corrupt.is_dir() and any(corrupt.iterdir()):
        raise CheckpointError(
            f"{mngr.directory.parent} has only unreadable checkpoints (in {corrupt}); refusing to "
            "restart from scratch: delete the workdir or use another one"
        )
    if not steps:
        return None
    errors = []
    for step in steps:
        targets = {"model": keys_to_data(model_state)}
        if opt_state is not None:
            targets["opt"] = keys_to_data(opt_state)
        for item, target in targets.items():
            _check_shapes(mngr, step, item, target)
        items = {k: ocp.args.StandardRestore(_abstract(v)) for k, v in targets.items()}
        items["meta"] = ocp.args.JsonRestore()
        try:
            restored = mngr.restore(step, args=ocp.args.Composite(**items))
        except CheckpointError:
            raise
        except Exception as err:  # noqa: BLE001 - any read failure means this step is unusable
            older = [s for s in steps if s < step]
            # One line: orbax/TensorStore errors carry pages of spec; their first line says why.
            reason = (str(err).strip().splitlines() or [""])[0][:160]
            print(f"warning: checkpoint step {step} is unreadable ({type(err).__name__}: {reason}); moved "
                  f"to {corrupt / str(step)}; "
                  + (f"using step {older[0]}" if older else "no older checkpoint"))
            errors.append((step, err))
            _move_aside(mngr, step)
            continue
        out = {"step": step, "meta": restored["meta"],
               "model": data_to_keys(restored["model"], model_state)}
        if opt_state is not None:
            out["opt"] = data_to_keys(restored["opt"], opt_state)
        return out
    raise CheckpointError(
        f"every checkpoint in {mngr.directory.parent} is unreadable "
        f"({', '.join(f'step {s}: {type(e).__name__}' for s, e in errors)}); they were moved to "
        "checkpoints_corrupt/. Refusing to restart from scratch: delete the workdir or use another one"
    )
