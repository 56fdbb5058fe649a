"""The one trainer. A task (tasks/) supplies model, loss, predictions and their summary; this file owns the
mesh, the jitted step, evaluation, checkpoints and resumption, logging, preemption and divergence.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
import signal
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxface import faults, files, parallel
from jaxface.data import pipeline
from jaxface.train import checkpoint, optim
from jaxface.train.tasks.base import Task, TaskConfigError, get_task


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclasses.dataclass
class Setup:
    """A task's model on a mesh, with its jitted per-example `predict(model_state, batch)`; from
    `load_for_inference` also the checkpoint `step` and the `workdir` it came from. This is what the
    evaluators, predict and the service receive."""
    config: Any
    task: Task
    mesh: Any
    model: nnx.Module
    model_def: Any
    model_state: Any
    predict: Any = None
    step: int | None = None
    workdir: pathlib.Path | None = None


def _param_sharding(mesh, config, path_str: str, value) -> NamedSharding:
    """Replicated, except the largest matrices (fc6/fc7 kernels) over 'model' when asked."""
    if (config.get("shard_large_params", False) and mesh.shape[parallel.MODEL_AXIS] > 1
            and getattr(value, "ndim", 0) == 2 and path_str.split("/")[0] in ("fc6", "fc7")
            and value.shape[1] % mesh.shape[parallel.MODEL_AXIS] == 0):
        return NamedSharding(mesh, P(None, parallel.MODEL_AXIS))
    return parallel.replicated(mesh)


def _state_shardings(abstract_state, mesh, config):
    return jax.tree_util.tree_map_with_path(
        lambda p, x: _param_sharding(mesh, config, optim.path_to_str(p), x), abstract_state)


def _init_sharded(make_state, mesh, config, *args):
    """Runs make_state(*args) -> state pytree under jit with each leaf's sharding as out_sharding.

    Creating arrays directly in their global layout is what works across processes (a device_put
    from one process's device to a mesh spanning several hosts is not allowed), and it compiles all
    initialisers as one program: eager threefry initialisers compile one by one and took 15-30 s for
    a small VGG here.
    """
    abstract = jax.eval_shape(make_state, *args)
    lowered = jax.jit(make_state, out_shardings=_state_shardings(abstract, mesh, config)).lower(*args)
    return lowered.compile(compiler_options=_RUN_ONCE_COMPILER_OPTIONS.get(jax.default_backend(), {}))(*args)


# The initialisers run once per process, so LLVM's optimisation passes are not worth their time on CPU:
# a VGG-Face's initialiser program compiles in 2-3 s instead of 10-15 s, and every command that builds a
# model (train, evaluate, predict, serve, generate) starts that much sooner. The random draws are the
# same integer threefry streams; a float transform can differ from an optimised build in the last bit.
_RUN_ONCE_COMPILER_OPTIONS = {"cpu": {"xla_backend_optimization_level": 0}}


def create_model(task, seed: int, mesh, config) -> tuple[Any, Any]:
    """(graphdef, state) of the task's model, initialised from the seed, placed on the mesh."""
    make = lambda: task.build_model(nnx.Rngs(params=seed, dropout=seed + 1))  # noqa: E731
    model_def, _ = nnx.split(nnx.eval_shape(make))
    state = _init_sharded(lambda: nnx.split(make())[1], mesh, config)
    return model_def, state


def create_optimizer(model_def, model_state, tx, trainable, mesh, config) -> tuple[Any, Any]:
    """(graphdef, state) of an nnx.Optimizer over the trainable parameters, placed on the mesh."""

    def make(state):
        return nnx.Optimizer(nnx.merge(model_def, state), tx, wrt=trainable)

    opt_def, _ = nnx.split(nnx.eval_shape(make, model_state))
    opt_state = _init_sharded(lambda st: nnx.split(make(st))[1], mesh, config, model_state)
    return opt_def, opt_state


def build(config, *, mesh=None) -> Setup:
    """Model of the config's task, its state placed on the mesh (no optimiser)."""
    parallel.maybe_initialize_distributed(config)
    mesh = parallel.mesh_from_config(config) if mesh is None else mesh
    task = get_task(config)
    model_def, model_state = create_model(task, int(config.seed), mesh, config)
    model = nnx.merge(model_def, model_state)
    return Setup(config, task, mesh, model, model_def, model_state, predict=make_predict_step(task, model_def))


def load_for_inference(workdir, config=None, *, mesh=None) -> Setup:
    """The latest checkpoint's model in WORKDIR, without optimiser or data state, on MESH (default: the
    config's, over every process's devices; parallel.local_mesh() for work each process does alone)."""
    import json

    import ml_collections

    workdir = files.as_path(workdir)
    if config is None:
        path = workdir / "config.json"
        if not path.exists():
            raise checkpoint.CheckpointError(f"{workdir} has no config.json: is it a jaxface workdir?")
        config = ml_collections.ConfigDict(json.loads(path.read_text()))
    if (workdir / EXPORTED_WEIGHTS).exists() and not (workdir / checkpoint.CHECKPOINT_DIR).exists():
        return _load_exported(workdir, config, mesh)
    setup = build(config, mesh=mesh)
    mngr = checkpoint.manager(workdir, create=False)
    restored = checkpoint.restore_latest(mngr, model_state=setup.model_state.to_pure_dict())
    if restored is None:
        raise checkpoint.CheckpointError(f"no checkpoint in {workdir / checkpoint.CHECKPOINT_DIR}; "
                                         "run `jaxface train` first")
    nnx.replace_by_pure_dict(setup.model_state, restored["model"])
    nnx.update(setup.model, setup.model_state)
    setup.config, setup.step, setup.workdir = config, int(restored["step"]), workdir
    return setup


# ------------------------------------------------------------------------------- exported models
EXPORTED_WEIGHTS = "model.safetensors"  # the model state alone (no optimiser), flat "a/b/c" keys
EXPORTED_META = "exported.json"


def _runtime_rng(name: str, value) -> bool:
    """Dropout's RNG state: not exported; rebuilt from the config's seed on load."""
    return "rngs/" in name or jnp.issubdtype(getattr(value, "dtype", np.float32), jax.dtypes.prng_key)


def _flat(tree) -> dict:
    from jaxface.models import weights

    return {name: np.ascontiguousarray(np.asarray(value))
            for name, value in weights.flatten_state(tree).items() if not _runtime_rng(name, value)}


def _unflat(template, flat: dict, prefix=""):
    out = {}
    for key, value in template.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out[key] = _unflat(value, flat, name + "/")
        elif _runtime_rng(name, value):
            out[key] = value
        else:
            if name not in flat or flat[name].shape != np.shape(value):
                raise checkpoint.CheckpointError(
                    f"exported weights lack {name} {np.shape(value)} (or hold another shape): they belong to "
                    "another model than config.json describes")
            out[key] = flat[name]
    return out


def export_model(workdir, out_dir) -> list[pathlib.Path]:
    """The latest checkpoint's model state of WORKDIR as a small folder any inference command loads like
    a workdir: config.json, model.safetensors (no optimiser state), calibration.json when one matches
    that checkpoint, exported.json (step, SHA-256 of the weights)."""
    import hashlib
    import json

    from safetensors.numpy import save_file

    setup = load_for_inference(workdir)
    out_dir = files.as_path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / EXPORTED_WEIGHTS
    save_file(_flat(setup.model_state.to_pure_dict()), str(weights))
    written = [files.write_text(out_dir / "config.json", setup.config.to_json(indent=2)), weights]
    calibration = files.as_path(workdir) / "calibration.json"
    if calibration.exists() and json.loads(calibration.read_text()).get("step") == setup.step:
        written.append(files.write_text(out_dir / "calibration.json", calibration.read_text()))
    written.append(files.write_json(out_dir / EXPORTED_META, {
        "step": setup.step, "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "exported_from": files.as_path(workdir).name}))
    return written


def _load_exported(folder: pathlib.Path, config, mesh=None) -> Setup:
    import json

    from safetensors.numpy import load_file

    meta_path = folder / EXPORTED_META
    try:
        meta = json.loads(meta_path.read_text())
        flat = load_file(str(folder / EXPORTED_WEIGHTS))
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file: say which
        raise checkpoint.CheckpointError(f"cannot read the exported model in {folder}: {err}") from None
    setup = build(config, mesh=mesh)
    template = setup.model_state.to_pure_dict()
    placed = jax.tree.map(lambda new, old: new if new is old else jax.device_put(new, old.sharding),
                          _unflat(template, flat), template)
    nnx.replace_by_pure_dict(setup.model_state, placed)
    nnx.update(setup.model, setup.model_state)
    setup.config, setup.step, setup.workdir = config, int(meta["step"]), folder
    return setup


# ----------------------------------------------------------------------------------------- steps
def make_train_step(task, model_def, opt_def, trainable, state_shardings, frozen_statistics=nnx.Nothing):
    """One jitted step; state donated; a non-finite loss leaves the state untouched and is flagged.

    `frozen_statistics` selects normalisation statistics that the step must not change (those of
    frozen layers: they still normalise with the batch's statistics, but keep their running averages).
    """

    @functools.partial(jax.jit, donate_argnums=(0, 1),
                       out_shardings=(state_shardings[0], state_shardings[1], None))
    def step(model_state, opt_state, batch):
        model = nnx.merge(model_def, model_state)
        optimizer = nnx.merge(opt_def, opt_state)
        kept_statistics = nnx.clone(nnx.state(model, frozen_statistics))

        def loss_fn(m):
            return task.loss(m, batch, train=True)

        grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, trainable), has_aux=True)
        (loss, metrics), grads = grad_fn(model)
        grad_norm = optim_global_norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        optimizer.update(model, grads)
        nnx.update(model, kept_statistics)
        new_model, new_opt = nnx.state(model), nnx.state(optimizer)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
        metrics = dict(metrics, grad_norm=grad_norm, nonfinite=1 - ok.astype(jnp.int32))
        return keep(new_model, model_state), keep(new_opt, opt_state), metrics

    return step


def optim_global_norm(tree):
    leaves = [jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)]
    return jnp.sqrt(sum(leaves)) if leaves else jnp.float32(0)


def make_predict_step(task, model_def):
    @jax.jit
    def predict(model_state, batch):
        return task.predict(nnx.merge(model_def, model_state), batch)

    return predict


# ------------------------------------------------------------------------------------------ train
class _Preemption:
    """SIGTERM (a TPU preemption notice) and the first Ctrl-C (SIGINT) ask the loop to finish the step,
    checkpoint and exit cleanly; a second Ctrl-C aborts at once (KeyboardInterrupt)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested: str | None = None  # the name of the signal that asked
        self._previous: dict = {}

    def __enter__(self):
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. under a test runner thread)
                pass
        return self

    def _handle(self, signum, frame):
        self.requested = signal.Signals(signum).name
        if signum == signal.SIGINT:  # the next Ctrl-C is not caught: it aborts
            signal.signal(signal.SIGINT, signal.default_int_handler)
            print("\nCtrl-C: finishing this step and saving a checkpoint (Ctrl-C again aborts at once)",
                  file=sys.stderr, flush=True)

    def agreed(self) -> str | None:
        """The signal to stop for, the same in every process: with several processes each one sees a
        signal at its own step, and one saving a checkpoint while another runs on would wait on each
        other in their next collective. One small all-gather per step (multi-process runs only)."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        codes = {None: 0, "SIGTERM": 1, "SIGINT": 2}
        seen = int(np.max(multihost_utils.process_allgather(np.int32(codes[self.requested]))))
        return {v: k for k, v in codes.items()}[seen]

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


class _Log:
    """metrics.jsonl + TensorBoard + progress bar, process 0 only."""

    def __init__(self, workdir: pathlib.Path, total: int, start: int):
        self.workdir = workdir
        self.main = parallel.is_main_process()
        self.writer = None
        self.bar = None
        if self.main:
            from tensorboardX import SummaryWriter
            from tqdm import tqdm

            self.writer = SummaryWriter(str(workdir / "tensorboard"))
            self.bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True,
                            disable=not sys.stderr.isatty())
        self.tty = bool(self.bar is not None and not self.bar.disable)

    def scalars(self, step: int, prefix: str, values: dict):
        record = {"step": step, "split": prefix, **values}
        files.append_jsonl(self.workdir / "metrics.jsonl", record)
        if self.writer is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.writer.add_scalar(f"{prefix}/{k}", v, step)
            self.writer.flush()

    def progress(self, step: int, n: int, text: dict, total: int, rate: float):
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(text, refresh=False)
        if self.main and not self.tty:
            eta = (total - step) / rate if rate > 0 else float("nan")
            print(f"step {step}/{total} " + " ".join(f"{k}={v}" for k, v in text.items())
                  + f" steps/s={rate:.2f} eta={eta:.0f}s", flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def train(config, workdir, on_start=None) -> dict:
    """Trains (or resumes) the config's task in WORKDIR, holding WORKDIR/.lock so that a second run on
    the same workdir refuses instead of writing beside it. `on_start()` runs once everything has been
    checked (config values, data source, checkpoint compatibility) and before the first step: the CLI
    writes config.json there, so a command that fails validation leaves the workdir as it was.
    -> dict(step, outputs, model_state, interrupted: None or the signal's name)"""
    workdir = files.as_path(workdir)
    created = [p for p in (workdir, workdir / checkpoint.CHECKPOINT_DIR) if not p.exists()]
    try:
        with files.WorkdirLock(workdir):
            return _train(config, workdir, on_start)
    except BaseException:
        for path in reversed(created):  # leave no empty folder behind a run that never started
            if files.is_local(path) and path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        raise


def _train(config, workdir, on_start) -> dict:
    setup = build(config)
    task, mesh, model, model_def, model_state = (setup.task, setup.mesh, setup.model, setup.model_def,
                                                 setup.model_state)
    num_steps = int(config.num_train_steps)
    if num_steps < 1:
        raise TaskConfigError(f"num_train_steps must be at least 1, got {num_steps}")

    freeze_below = config.get("freeze_below", "")
    trainable = optim.trainable_filter(freeze_below, task.layer_of, task.layer_index)
    frozen_statistics = optim.frozen_statistics_filter(freeze_below, task.layer_of, task.layer_index)
    tx = optim.build_optimizer(config.optimizer, num_steps)
    opt_def, opt_state = create_optimizer(model_def, model_state, tx, trainable, mesh, config)
    shardings = (jax.tree.map(lambda x: x.sharding, model_state),
                 jax.tree.map(lambda x: x.sharding, opt_state))
    train_step = make_train_step(task, model_def, opt_def, trainable, shardings, frozen_statistics)
    predict = setup.predict

    train_batches = pipeline.batches(config, "train", mesh, augment=task.augment(config))
    mngr = checkpoint.manager(workdir, keep=int(config.get("keep_checkpoints", 3)))
    restored = checkpoint.restore_latest(
        mngr, model_state=model_state.to_pure_dict(), opt_state=opt_state.to_pure_dict())
    start = 0
    if restored is not None:
        nnx.replace_by_pure_dict(model_state, restored["model"])
        nnx.replace_by_pure_dict(opt_state, restored["opt"])
        start = int(restored["step"])
        # One global batch per step; older checkpoints lack the key and were written at that position.
        train_batches.seek(int(restored["meta"].get("data_batches", start)))
        print(f"resuming from checkpoint step {start} in {mngr.directory}")
    elif config.model.get("init_from", ""):
        from jaxface.models import weights

        loaded = weights.restore_into(model, config.model.init_from,
                                      skip_prefixes=task.init_skip_prefixes(), strict=False)
        model_state = nnx.state(model)
        print(f"initialised {len(loaded)} arrays from {config.model.init_from}")

    # The first batch is read before anything is written: unreadable data fails here, with the workdir
    # as it was. It is the first step's batch, so the data order is unchanged.
    first_batch = next(train_batches) if start < num_steps else None
    if on_start is not None:
        on_start()
    log = _Log(workdir, num_steps, start)
    interrupted = None
    outputs: list = []
    step = start
    last_t, last_step = time.perf_counter(), start
    pending = []  # device metrics since the last log line (fetched lazily to keep dispatch async)
    log_every = max(1, int(config.get("log_every_steps", 50)))
    eval_every = int(config.get("eval_every_steps", 0) or 0)
    ckpt_every = max(1, int(config.get("checkpoint_every_steps", 1000)))

    def meta():
        return {"step": step, "task": task.name, "seed": int(config.seed), "data_batches": train_batches.position}

    def check_finite():
        bad = [m for m in pending if int(m["nonfinite"]) > 0]
        if bad:
            mngr.wait_until_finished()
            last = mngr.latest_step()
            raise TrainingDiverged(
                f"the loss became NaN/inf near step {step}; training stopped. The last good "
                f"checkpoint (step {last}) in {mngr.directory} is kept. Lower optimizer.learning_rate "
                "or set optimizer.grad_clip_norm"
            )

    try:
        with _Preemption() as preemption, jax.set_mesh(mesh):
            while step < num_steps:
                batch, first_batch = (first_batch if first_batch is not None else next(train_batches)), None
                model_state, opt_state, metrics = train_step(model_state, opt_state, batch)
                step += 1
                faults.hit("train_step")
                stop = preemption.agreed()
                pending.append(metrics)
                final = step == num_steps
                if step % log_every == 0 or final or stop:
                    check_finite()
                    host = {k: float(np.mean([float(m[k]) for m in pending])) for k in pending[0]
                            if k != "nonfinite"}
                    pending.clear()
                    now = time.perf_counter()
                    advanced = step - last_step
                    rate = advanced / max(now - last_t, 1e-9)
                    last_t, last_step = now, step
                    host["steps_per_s"] = rate
                    log.scalars(step, "train", host)
                    log.progress(step, advanced, {"loss": f"{host['loss']:.4f}"}, num_steps, rate)
                if eval_every and (step % eval_every == 0 or final):
                    val = _evaluate_split(config, task, predict, model_state, mesh, "val")
                    scalars = {k: v for k, v in val.items() if isinstance(v, (int, float))}
                    log.scalars(step, "val", scalars)
                    if log.main:
                        print(f"step {step}: val " + " ".join(
                            f"{k}={v:.4f}" for k, v in scalars.items() if isinstance(v, float)), flush=True)
                if step % ckpt_every == 0 or final or stop:
                    check_finite()
                    checkpoint.save(mngr, step, model_state=model_state.to_pure_dict(),
                                    opt_state=opt_state.to_pure_dict(), meta=meta(), force=True)
                if stop:
                    checkpoint.wait_until_finished(mngr, step)
                    interrupted = stop
                    print(f"{interrupted}: saved checkpoint step {step} in {mngr.directory}; exiting "
                          "(run the same command again to resume)", flush=True)
                    break
    except BaseException:
        try:  # let the last save finish; the error already raised is the one to report
            mngr.wait_until_finished()
        except Exception:  # noqa: BLE001
            pass
        log.close()
        raise
    try:
        checkpoint.wait_until_finished(mngr, step)
    finally:
        log.close()
    nnx.update(model, model_state)
    parallel.barrier("training finished")  # process 0's last writes are done before anyone reads them
    outputs += [workdir / "metrics.jsonl", mngr.directory]
    return {"step": step, "outputs": outputs, "model_state": model_state, "interrupted": interrupted}


def _evaluate_split(config, task, predict, model_state, mesh, split):
    source = pipeline.build_source(config.data, split)
    if len(source) == 0:
        return {}
    return task.summarize(pipeline.predictions(config, split, mesh, predict, model_state, source=source))
