"""The compiled, batched image-optimisation loop behind feature inversion and class visualisation.

One loop serves both: `optimize` minimises any `Objective` over a batch of parameterised images;
`invert` plugs in feature matching against target activations, `class_visualize` the classifier's
head scores. The loop is written once (`_step`) and run in one of several loop forms:

- 'python':   a jitted single step called from a Python loop (the baseline);
- 'unrolled': one jit per chunk of k steps, the k steps unrolled in the traced function;
- 'scan':     one jit per chunk, the steps in a `lax.scan` (optionally partially unrolled);
- 'auto':     'unrolled' on CPU, 'scan' on accelerators.

Why several: on XLA:CPU (jax 0.10.2) a `lax.scan`/`fori_loop` whose body is a convolutional
forward+backward costs about 4x the CPU time per step of the same step outside a loop, while an unrolled
chunk runs at full speed or slightly faster than the Python loop (jaxface/bench/inversion_bench.py).
The compiled HLO shows why: outside loops every convolution becomes a YNNPACK fusion; inside the while
body the input-gradient convolutions keep the transposed-kernel form (dim_labels ..._01oi), which
neither YNNPACK nor Eigen take, and run as XLA's generic emitted loops. On accelerators a scan
avoids per-step dispatch. All forms compute the same steps, so they agree up to float rounding;
progress is reported on the host after every chunk.

Batch items are independent: the loss is a sum of per-item terms (so no gradient mixes items), the
optimisers are elementwise (Adam, SGD with momentum), and item i's randomness is
fold_in(fold_in(key, item_id_i), step). The batch axis is sharded over the mesh axis 'data'; the model
state is replicated and passed as an argument, not baked into the program as constants.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxface.invert import objectives as obj_lib
from jaxface.invert import param as param_lib
from jaxface.invert import transforms as tf_lib

LOOP_FORMS = ("auto", "python", "unrolled", "scan")
OPTIMIZERS = ("adam", "sgd")
DATA_AXIS = "data"
# Steps per compiled chunk when the caller does not say: long enough to amortise dispatch, short enough
# that unrolled compilation stays quick and progress is frequent. Unrolled: measured on 2 CPU cores
# (jaxface bench --suite=inversion), 4 steps beat the Python loop for every size (tiny 1.03x, full64
# 1.16x) where 10 were slower than it for the small network (0.91x) and 2 gained less.
DEFAULT_CHUNK = {"python": 10, "unrolled": 4, "scan": 50}


class RenderError(ValueError):
    """An invalid option for the optimisation loop or inputs that do not fit together."""


# ------------------------------------------------------------------------------------ model functions
@dataclasses.dataclass(frozen=True)
class _Closure:
    """apply(state, images) for a plain callable images -> outputs (its parameters are constants)."""

    fn: Callable[[jax.Array], Any]

    def __call__(self, state: Any, images: jax.Array) -> Any:
        del state
        return self.fn(images)


@dataclasses.dataclass(frozen=True, eq=False)
class NnxApply:
    """apply(state, images) = method(nnx.merge(graphdef, state), images).

    Compared by identity (a GraphDef may hold unhashable static attributes): build it once per model
    with `nnx_model_fn` and reuse it, and its compiled programs are reused too.
    """

    graphdef: Any
    method: Callable[[Any, jax.Array], Any]

    def __call__(self, state: Any, images: jax.Array) -> Any:
        from flax import nnx

        return self.method(nnx.merge(self.graphdef, state), images)


def nnx_model_fn(module: Any, method: Callable[[Any, jax.Array], Any]) -> tuple[NnxApply, Any]:
    """(apply_fn, state) for an NNX module, e.g.

        nnx_model_fn(model, lambda m, x: m.activations(x, ['conv5_3'])['conv5_3'])

    The state travels as a jit argument (replicated over the mesh), so the weights are not baked into
    the compiled program. Reuse the returned pair across calls to reuse the compiled programs.
    """
    from flax import nnx

    graphdef, state = nnx.split(module)
    return NnxApply(graphdef, method), state


def _as_model(model: Any) -> tuple[Callable[[Any, jax.Array], Any], Any]:
    if isinstance(model, tuple) and len(model) == 2 and callable(model[0]):
        return model[0], model[1]
    if callable(model):
        return _Closure(model), None
    raise RenderError(
        "model must be a callable images -> outputs, or a pair (apply_fn, state) with "
        "apply_fn(state, images) -> outputs (see nnx_model_fn)"
    )


# ------------------------------------------------------------------------------------------- spec
@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    name: str = "adam"
    lr: float = 0.05
    momentum: float = 0.9

    def build(self) -> optax.GradientTransformation:
        if self.name == "adam":
            return optax.adam(self.lr)
        return optax.sgd(self.lr, momentum=self.momentum)


def make_optimizer_spec(name: str, lr: float, momentum: float = 0.9) -> OptimizerSpec:
    if name not in OPTIMIZERS:
        raise RenderError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    if not lr > 0:
        raise RenderError(f"learning rate must be > 0, got {lr}")
    return OptimizerSpec(name, float(lr), float(momentum))


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """Everything static about one optimisation step (hashable: a jit static argument)."""

    apply_fn: Callable[[Any, jax.Array], Any]
    objective: obj_lib.Objective
    image_param: param_lib.ImageParam
    transform: tf_lib.TransformConfig
    optimizer: OptimizerSpec
    blur_every: int = 0
    blur_sigma: float = 0.0
    mesh: Any = None


class State(NamedTuple):
    params: jax.Array
    opt_state: Any
    step: jax.Array  # int32 scalar: the number of steps taken


class Inputs(NamedTuple):
    """Per-call arrays that stay fixed during the optimisation."""

    model_state: Any  # replicated
    targets: Mapping[str, Any]  # leading axis: batch
    draws: tf_lib.TransformDraws  # (B, steps, ...) the random transform parameters of every step
    prior: param_lib.ImagePrior | None = None  # replicated; param='pca' only


def _batch_sharding(spec: StepSpec):
    return None if spec.mesh is None else NamedSharding(spec.mesh, P(DATA_AXIS))


def _state_shardings(spec: StepSpec, state: State):
    mesh = spec.mesh
    data, replicated = NamedSharding(mesh, P(DATA_AXIS)), NamedSharding(mesh, P())
    # Optimiser slots have the parameters' shape (batch-leading); its counters are scalars.
    return jax.tree.map(lambda x: data if np.ndim(x) >= 1 else replicated, state)


def _mesh_is_explicit(mesh: Any) -> bool:
    axis_type = dict(zip(mesh.axis_names, mesh.axis_types))[DATA_AXIS]
    return axis_type == jax.sharding.AxisType.Explicit


def _constrain(spec: StepSpec, state: State, metrics: dict) -> tuple[State, dict]:
    """Keep the batch axis sharded over 'data' (needed on meshes whose axes are Auto; on Explicit
    meshes the shardings are part of the array types and propagate by themselves)."""
    if spec.mesh is None or _mesh_is_explicit(spec.mesh):
        return state, metrics
    state = jax.lax.with_sharding_constraint(state, _state_shardings(spec, state))
    batch_sharding = _batch_sharding(spec)
    metrics = jax.lax.with_sharding_constraint(metrics, jax.tree.map(lambda _: batch_sharding, metrics))
    return state, metrics


# ------------------------------------------------------------------------------------------- step
@functools.partial(jax.jit, static_argnames=("transform", "steps"))
def sample_all_draws(transform: tf_lib.TransformConfig, item_keys: jax.Array, steps: int):
    """Transform draws for every item and step, (B, steps, ...): item b's draws come from its own key
    item_keys[b] alone (one stream of steps x DRAW_WORDS random words).

    Drawing them up front, in one small program, keeps the PRNG out of the step: threefry hashing,
    unrolled k times in a chunk, made XLA:CPU compilation several times slower.
    """
    bits = jax.vmap(lambda k: jax.random.bits(k, (steps, tf_lib.DRAW_WORDS), jnp.uint32))(item_keys)
    return tf_lib.draws_from_bits(transform, bits)


def _loss(params, step, inputs: Inputs, spec: StepSpec):
    images = spec.image_param.to_image(params, inputs.prior)
    draws = jax.tree.map(
        lambda d: jax.lax.dynamic_index_in_dim(d, step, axis=1, keepdims=False), inputs.draws
    )
    seen = tf_lib.apply_drawn(spec.transform, images, draws)
    outputs = spec.apply_fn(inputs.model_state, seen)
    total, values = spec.objective.evaluate(obj_lib.ObjectiveInputs(images, outputs, inputs.targets, params))
    # Summing per-item objectives keeps every item's gradient its own.
    return jnp.sum(total), {"objective": total, **values}


def _blur_params(params, spec: StepSpec, prior):
    images = spec.image_param.to_image(params, prior)
    return spec.image_param.from_image(tf_lib.gaussian_blur(images, spec.blur_sigma), prior)


def _step(state: State, inputs: Inputs, spec: StepSpec) -> tuple[State, dict]:
    """One optimiser step; metrics are the per-item objective values before the update."""
    grads, metrics = jax.grad(_loss, has_aux=True)(state.params, state.step, inputs, spec)
    updates, opt_state = spec.optimizer.build().update(grads, state.opt_state, state.params)
    params = spec.image_param.project(optax.apply_updates(state.params, updates))
    step = state.step + 1
    if spec.blur_every > 0 and spec.blur_sigma > 0:
        # Blurring is a projection applied every blur_every steps, not a loss term.
        params = jax.lax.cond(
            step % spec.blur_every == 0, lambda p: _blur_params(p, spec, inputs.prior), lambda p: p, params
        )
    return _constrain(spec, State(params, opt_state, step), metrics)


def _single_step(state: State, inputs: Inputs, spec: StepSpec):
    return _step(state, inputs, spec)


def _unrolled_chunk(state: State, inputs: Inputs, spec: StepSpec, length: int):
    metrics = None
    for _ in range(length):  # unrolled at trace time on purpose (see module docstring)
        state, metrics = _step(state, inputs, spec)
    return state, metrics


def _scan_chunk(state: State, inputs: Inputs, spec: StepSpec, length: int, unroll: int):
    def body(carry, _):
        return _step(carry, inputs, spec)

    state, metrics = jax.lax.scan(body, state, None, length=length, unroll=unroll)
    return state, jax.tree.map(lambda m: m[-1], metrics)


single_step = jax.jit(_single_step, static_argnames=("spec",), donate_argnames=("state",))
unrolled_chunk = jax.jit(_unrolled_chunk, static_argnames=("spec", "length"), donate_argnames=("state",))
scan_chunk = jax.jit(_scan_chunk, static_argnames=("spec", "length", "unroll"), donate_argnames=("state",))


def _evaluate(params, inputs: Inputs, spec: StepSpec):
    """The objective on the final images, without random transforms."""
    images = spec.image_param.final_image(params, inputs.prior)
    outputs = spec.apply_fn(inputs.model_state, images)
    total, values = spec.objective.evaluate(obj_lib.ObjectiveInputs(images, outputs, inputs.targets, params))
    return images, {"objective": total, **values}


evaluate = jax.jit(_evaluate, static_argnames=("spec",))


def resolve_loop(loop: str, mesh: Any = None) -> str:
    """The concrete loop form for `loop`. 'auto': 'scan', except 'unrolled' on a CPU whose
    convolutions are XLA's: in a while loop those ran 3x slower per step than in an unrolled chunk
    (jaxface bench --suite=inversion). The oneDNN convolutions run as fast in a scan, which also
    computes the per-program weight transforms once per 50 steps instead of once per 4."""
    if loop not in LOOP_FORMS:
        raise RenderError(f"unknown loop form {loop!r}; valid: {', '.join(LOOP_FORMS)}")
    if loop != "auto":
        return loop
    platform = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
    if platform != "cpu":
        return "scan"
    from jaxface.kernels import onednn

    return "scan" if onednn.runs_here(1 if mesh is None else mesh.size) else "unrolled"


def run_steps(
    state: State,
    inputs: Inputs,
    spec: StepSpec,
    steps: int,
    *,
    loop: str = "auto",
    chunk: int | None = None,
    scan_unroll: int = 1,
    on_chunk: Callable[[int, dict], None] | None = None,
) -> State:
    """Advance `state` by `steps` steps in the chosen loop form; on_chunk(step, metrics) after each chunk.

    `metrics` are device arrays of the last step of the chunk; `state` is donated.
    """
    loop = resolve_loop(loop, spec.mesh)
    chunk = int(chunk or DEFAULT_CHUNK[loop])
    if chunk < 1:
        raise RenderError(f"chunk must be >= 1 step, got {chunk}")
    done = 0
    while done < steps:
        n = min(chunk, steps - done)
        if loop == "python":
            for _ in range(n):
                state, metrics = single_step(state, inputs, spec=spec)
        elif loop == "unrolled":
            state, metrics = unrolled_chunk(state, inputs, spec=spec, length=n)
        else:
            state, metrics = scan_chunk(state, inputs, spec=spec, length=n, unroll=max(1, int(scan_unroll)))
        done += n
        if on_chunk is not None:
            on_chunk(done, metrics)
    return state


# ------------------------------------------------------------------------------------------ results
@dataclasses.dataclass
class InversionResult:
    images: np.ndarray  # (B, H, W, 3) float32 in [0, 1]
    objective: np.ndarray  # (B,) final weighted objective, evaluated without random transforms
    feature_error: np.ndarray | None  # (B,) ||T - phi(x)||^2 / ||T||^2 (None for class visualisation)
    terms: dict[str, np.ndarray]  # unweighted final value of every objective term, (B,) each
    history: list[dict]  # per chunk: {'step': int, 'objective': (B,), <term>: (B,)}
    loop: str  # the loop form that ran
    seconds: float  # wall time of the optimisation, compilation included


def _leading_dims(tree: Any) -> set[int]:
    return {int(np.shape(x)[0]) if np.ndim(x) else -1 for x in jax.tree.leaves(tree)}


def _pad_batch(tree: Any, padded: int) -> Any:
    """Pad every leaf's leading axis to `padded` by repeating the last item (padded items are dropped)."""

    def pad(x):
        x = jnp.asarray(x) if not isinstance(x, jax.Array) else x
        extra = padded - x.shape[0]
        if extra == 0:
            return x
        return jnp.concatenate([x, jnp.repeat(x[-1:], extra, axis=0)], axis=0)

    return jax.tree.map(pad, tree)


@functools.partial(jax.jit, static_argnames=("optimizer", "transform", "steps"))
def start_state(
    params, key, item_ids, *, optimizer: OptimizerSpec, transform: tf_lib.TransformConfig, steps: int
) -> tuple[State, tf_lib.TransformDraws]:
    """The initial optimiser state and the transform draws of all steps."""
    state = State(params, optimizer.build().init(params), jnp.zeros((), jnp.int32))
    return state, sample_all_draws(transform, param_lib.item_keys(key, item_ids), steps)


def _check_fit(spec: StepSpec, model_state: Any, targets: Mapping[str, Any], batch: int) -> None:
    """Trace the model and objective abstractly so mismatched targets fail before compilation."""
    ip = spec.image_param
    image_shape = jax.ShapeDtypeStruct((batch, ip.height, ip.width, 3), jnp.float32)
    param_shape = jax.ShapeDtypeStruct(ip.param_shape(batch), jnp.float32)
    try:
        out_shape = jax.eval_shape(spec.apply_fn, model_state, image_shape)
        jax.eval_shape(
            lambda i, o, t, p: spec.objective.evaluate(obj_lib.ObjectiveInputs(i, o, t, p)),
            image_shape, out_shape, targets, param_shape,
        )
    except obj_lib.ObjectiveError as e:
        raise RenderError(
            f"targets do not fit the model outputs for {batch} images of {ip.height}x{ip.width}: {e}"
        ) from e


def _check_mesh(mesh: Any, batch: int) -> int:
    if mesh is None:
        return batch
    if DATA_AXIS not in mesh.axis_names:
        raise RenderError(f"the mesh needs an axis named {DATA_AXIS!r}; it has {tuple(mesh.axis_names)}")
    n = int(mesh.shape[DATA_AXIS])
    return -(-batch // n) * n


def optimize(
    model: Any,
    objective: obj_lib.Objective,
    targets: Mapping[str, Any] | None = None,
    *,
    key: jax.Array,
    steps: int,
    size: int | Sequence[int],
    batch: int | None = None,
    param: str = "pixels",
    pixel_mode: str = "sigmoid",
    decorrelate: bool | None = None,
    decay_power: float = 1.0,
    image_prior: param_lib.ImagePrior | None = None,
    prior_weight: float = 0.0,
    init_image: Any = None,
    noise_std: float = 0.05,
    item_ids: Sequence[int] | None = None,
    lr: float = 0.05,
    optimizer: str = "adam",
    momentum: float = 0.9,
    jitter: int = 0,
    pad: int = 0,
    scales: Sequence[float] | None = None,
    rotate_degrees: float = 0.0,
    blur_every: int = 0,
    blur_sigma: float = 0.0,
    loop: str = "auto",
    chunk: int | None = None,
    scan_unroll: int = 1,
    mesh: Any = None,
    progress: Callable[[int, dict], None] | None = None,
    feature_target_key: str | None = None,
) -> InversionResult:
    """Minimise `objective` over a batch of images; the general loop behind invert/class_visualize.

    Args:
      model: callable images -> outputs, or (apply_fn, state) with apply_fn(state, images) -> outputs.
      objective: an `objectives.Objective` (per-item, lower is better).
      targets: dict of per-item arrays with leading axis B (may be empty if `batch` is given).
      key: base PRNG key. Item i uses fold_in(key, item_ids[i]) for its initial noise and transforms.
      steps: number of optimiser steps (>= 1).
      size: image size, int or (height, width).
      batch: number of images; inferred from `targets` when omitted.
      param, pixel_mode, decorrelate, decay_power, init_image, noise_std: see `param.make_param`.
      image_prior: the `param.ImagePrior` behind param='pca'; prior_weight: weight of the Gaussian
        prior on its coefficients (objectives.coefficient_prior), added to `objective`.
      item_ids: stable item identities (default 0..B-1): an item's result depends on its id, not on
        its position or on the other items in the batch.
      lr, optimizer ('adam' | 'sgd' with `momentum`): the optax optimiser.
      jitter, pad, scales, rotate_degrees: random transforms before every forward pass.
      blur_every, blur_sigma: Gaussian-blur the images every `blur_every` steps (a projection).
      loop: 'auto' | 'python' | 'unrolled' | 'scan'; chunk: steps per compiled chunk (and per progress
        report); scan_unroll: `unroll` of the scan form.
      mesh: optional jax Mesh with a 'data' axis; the batch is sharded over it (padded to a multiple of
        its size; the pads are dropped) and the model state replicated.
      progress: host callback progress(step, metrics) after every chunk; metrics maps 'objective' and
        every term name to a (B,) numpy array (values at the chunk's last step, before its update).
      feature_target_key: if set, the result's feature_error is that term's final value.
    """
    targets = dict(targets or {})
    if int(steps) < 1:
        raise RenderError(f"steps must be >= 1, got {steps}")
    loop_form = resolve_loop(loop, mesh)
    optimizer_spec = make_optimizer_spec(optimizer, lr, momentum)
    transform = tf_lib.make_transform_config(
        pad=pad, jitter=jitter, scales=scales, rotate_degrees=rotate_degrees
    )
    if int(blur_every) < 0 or blur_sigma < 0:
        raise RenderError(f"blur_every and blur_sigma must be >= 0, got {blur_every}, {blur_sigma}")
    if not prior_weight >= 0:
        raise RenderError(f"prior_weight must be >= 0, got {prior_weight}")
    if prior_weight and param != "pca":
        raise RenderError(f"prior_weight is the Gaussian prior of param='pca'; it has no meaning for param={param!r}")
    if prior_weight:
        objective = objective + float(prior_weight) * obj_lib.coefficient_prior()
    if not objective.terms:
        raise RenderError("the objective has no terms")
    dims = _leading_dims(targets)
    if batch is None:
        if len(dims) != 1 or -1 in dims:
            raise RenderError(
                f"cannot infer the batch size: target arrays have leading sizes {sorted(dims)}; give batch="
            )
        batch = dims.pop()
    batch = int(batch)
    if batch < 1:
        raise RenderError(f"batch must be >= 1, got {batch}")
    if dims and dims != {batch}:
        raise RenderError(f"every target must have leading (batch) size {batch}; got sizes {sorted(dims)}")
    if item_ids is None:
        item_ids = np.arange(batch)
    item_ids = np.asarray(item_ids)
    if item_ids.shape != (batch,):
        raise RenderError(f"item_ids must have shape ({batch},), got {item_ids.shape}")

    apply_fn, model_state = _as_model(model)
    try:
        image_param = param_lib.make_image_param(
            param, size, pixel_mode=pixel_mode, decorrelate=decorrelate, decay_power=decay_power,
            prior=image_prior,
        )
    except param_lib.ParamError as e:
        raise RenderError(str(e)) from None
    prior = None
    if param == "pca":  # on device once, float32; other parameterisations ignore it
        prior = param_lib.ImagePrior(*(jnp.asarray(a, jnp.float32) for a in image_prior))
    if blur_every and blur_sigma:
        radius = (len(tf_lib.gaussian_kernel(blur_sigma)) - 1) // 2
        if radius >= min(image_param.height, image_param.width):
            raise RenderError(f"blur_sigma {blur_sigma} is too large for {size} images")
    spec = StepSpec(
        apply_fn, objective, image_param, transform, optimizer_spec,
        int(blur_every), float(blur_sigma), mesh,
    )
    _check_fit(spec, model_state, targets, batch)

    padded = _check_mesh(mesh, batch)
    if padded != batch:
        # Pads repeat the last item; they are computed like any other item and dropped at the end.
        item_ids = np.concatenate([item_ids, np.repeat(item_ids[-1:], padded - batch)])
        if init_image is not None and np.ndim(init_image) == 4:
            init_image = np.asarray(init_image)
            init_image = np.concatenate([init_image, np.repeat(init_image[-1:], padded - batch, axis=0)])
        targets = _pad_batch(targets, padded)
    params, _ = param_lib.make_param(
        param, padded, size, key, init_image,
        noise_std=noise_std, pixel_mode=pixel_mode, decorrelate=decorrelate,
        decay_power=decay_power, item_ids=item_ids, prior=prior,
    )
    state, draws = start_state(
        params, key, jnp.asarray(item_ids), optimizer=optimizer_spec, transform=transform, steps=int(steps)
    )
    # On device once: host (numpy) arrays passed to a jitted function are copied on every call.
    inputs = Inputs(model_state, jax.tree.map(jnp.asarray, targets), draws, prior)
    if mesh is not None:
        data, replicated = NamedSharding(mesh, P(DATA_AXIS)), NamedSharding(mesh, P())
        state = jax.device_put(state, _state_shardings(spec, state))
        inputs = Inputs(
            jax.device_put(model_state, replicated),
            jax.device_put(targets, data),
            jax.device_put(draws, data),
            None if prior is None else jax.device_put(prior, replicated),
        )

    history: list[dict] = []

    def on_chunk(step: int, metrics: dict) -> None:
        host = {k: np.asarray(v)[:batch] for k, v in metrics.items()}
        history.append({"step": step, **host})
        if progress is not None:
            progress(step, host)

    start = time.perf_counter()
    state = run_steps(
        state, inputs, spec, int(steps), loop=loop_form, chunk=chunk, scan_unroll=scan_unroll,
        on_chunk=on_chunk,
    )
    # Only the model, objective and parameterisation matter for the final evaluation; dropping the rest
    # from its static spec lets runs that differ in optimiser or transforms share its compiled program.
    eval_spec = StepSpec(spec.apply_fn, spec.objective, spec.image_param, tf_lib.TransformConfig(),
                         OptimizerSpec(), mesh=spec.mesh)
    images, final = evaluate(state.params, inputs, spec=eval_spec)
    images = np.asarray(images)[:batch]
    seconds = time.perf_counter() - start
    final = {k: np.asarray(v)[:batch] for k, v in final.items()}
    objective_values = final.pop("objective")
    return InversionResult(
        images=images.astype(np.float32),
        objective=objective_values,
        feature_error=None if feature_target_key is None else final[feature_target_key],
        terms=final,
        history=history,
        loop=loop_form,
        seconds=seconds,
    )


def invert(
    model: Any,
    targets: Any,
    *,
    key: jax.Array,
    steps: int,
    size: int | Sequence[int],
    tv_weight: float = 0.0,
    l2_weight: float = 0.0,
    range_weight: float = 0.0,
    extra_objective: obj_lib.Objective | None = None,
    extra_targets: Mapping[str, Any] | None = None,
    **kwargs,
) -> InversionResult:
    """Feature inversion: x* = argmin ||T - phi(x)||^2 / ||T||^2 + R(x) for a batch of targets.

    model: phi, as a callable images -> activations or (apply_fn, state) (see `optimize`); its output
    must have the structure and shapes of `targets` (an array or pytree with leading axis B) for
    images of `size`. R is tv_weight * TV + l2_weight * L2 + range_weight * range (+ extra_objective);
    blur, jitter and the rest of the settings are `optimize`'s keyword arguments. extra_targets: more
    per-item arrays for extra_objective's terms (e.g. a conditional coefficient prior's mean and std).
    Returns images, the final objective and the normalised feature error per item.
    """
    objective = obj_lib.feature_match("features", name="feature_match")
    objective = objective + obj_lib.regularizers(tv_weight, l2_weight, range_weight)
    if extra_objective is not None:
        objective = objective + extra_objective
    extra_targets = dict(extra_targets or {})
    if "features" in extra_targets:
        raise RenderError("extra_targets cannot replace 'features', the inversion's own target")
    return optimize(
        model, objective, {"features": targets, **extra_targets}, key=key, steps=steps, size=size,
        feature_target_key="feature_match", **kwargs,
    )


def class_visualize(
    model: Any,
    head_targets: Any,
    *,
    key: jax.Array,
    steps: int,
    size: int | Sequence[int],
    head_mode: str = "log_prob",
    select: Callable[[Any], Sequence[jax.Array]] | None = None,
    tv_weight: float = 0.0,
    l2_weight: float = 0.0,
    range_weight: float = 0.0,
    **kwargs,
) -> InversionResult:
    """Class visualisation (the report's baseline): push the chosen heads towards target classes.

    model: callable images -> head logits (a sequence of (B, n_h) arrays; or any output with `select`
    picking them out) or (apply_fn, state). head_targets: int (B, num_heads), -1 for heads left alone
    (schema.head_targets gives this from attribute vectors). Start from the dataset mean image with
    init_image=..., noise_std=... (see `optimize`).
    """
    head_targets = jnp.asarray(head_targets)
    if not jnp.issubdtype(head_targets.dtype, jnp.integer) or head_targets.ndim != 2:
        raise RenderError(
            f"head_targets must be an int array (batch, num_heads), got {head_targets.dtype} "
            f"{tuple(head_targets.shape)}"
        )
    objective = obj_lib.head_objective("heads", select=select, mode=head_mode)
    objective = objective + obj_lib.regularizers(tv_weight, l2_weight, range_weight)
    return optimize(model, objective, {"heads": head_targets}, key=key, steps=steps, size=size, **kwargs)
