"""oneDNN convolutions under XLA:CPU: build, load, choose and call them.

XLA:CPU computes a convolution as an Eigen tensor contraction. oneDNN's brgemm kernels, what PyTorch
calls on x86, ran the VGG-16 3x3 layers of feature inversion 1.1-1.3x faster on the same two cores
(forward and input gradient), so the VGG-Face convolutions call them through XLA FFI handlers
(`onednn_conv.cc`) wrapped in a custom_vjp, where they apply.

Which convolution runs is chosen when a function is traced, by JAXFACE_CONV:
  auto    (default) oneDNN for float32 2-D convolutions when JAX has a single CPU device and the
          extension is built; XLA's convolution everywhere else.
  xla     XLA's convolution always.
  onednn  oneDNN for every float32 2-D convolution on the CPU, also with several devices (replicated
          there: an FFI call has no partitioning rule); an error if the extension is missing.
Under a mesh of several devices (jax.set_mesh) XLA's convolution always runs: the FFI call is not
partitioned there and, under explicit sharding, gave wrong results.

On oneDNN, 3x3 stride-1 pad-1 convolutions with enough channels and work (VGG's conv2_1 onwards at
full width) run the Winograd F(2x2, 3x3) algorithm (onednn_conv.cc): 2.25x fewer multiply-adds, the
same result to float32 rounding (relative differences about 1e-6), 1.1-1.8x faster per layer on two
cores. JAXFACE_WINOGRAD chooses: auto (default: where it measured faster, see uses_winograd),
always (every such convolution, for tests) or off (oneDNN's direct convolution only).

Built once per environment: by `make`, by `python -m jaxface.kernels.onednn build`, or else at the
first convolution that would use it (a few seconds, said on stderr). It needs a C++17 compiler and the
`onednn` extra (`pip install -e '.[onednn]'`, Linux x86-64). The library goes next to libdnnl in the
environment, or to ~/.cache/jaxface/kernels when that is not writable ($JAXFACE_KERNELS_DIR chooses),
named by a hash of the source, so an edited source is never run stale. Without it a run says once why
it uses XLA's convolution. `python -m jaxface.kernels.onednn status` says what a run would use and why.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxface import files, parallel

ENV = "JAXFACE_CONV"
MODES = ("auto", "xla", "onednn")
KERNELS_DIR_ENV = "JAXFACE_KERNELS_DIR"
WINOGRAD_ENV = "JAXFACE_WINOGRAD"
WINOGRAD_MODES = ("auto", "always", "off")
WINOGRAD_GEOMETRY = ((3, 3), (1, 1), ((1, 1), (1, 1)))  # kernel size, strides, padding
SOURCE = Path(__file__).with_name("onednn_conv.cc")
CALL_MARKER = "JaxfaceConv"  # in the HLO of every program that calls these convolutions
_TARGETS = ("JaxfaceConvForward", "JaxfaceConvBackwardData", "JaxfaceConvBackwardWeights", "JaxfaceConvPackWeights",
            "JaxfaceConvBiasReluForward", "JaxfaceConvWinograd", "JaxfaceConvWinogradKernel")
_FORWARD, _BACKWARD_DATA, _FORWARD_BIAS_RELU = 0, 1, 3


class ConvBackendError(ValueError):
    """A bad JAXFACE_CONV value, or oneDNN asked for but not available."""


# ------------------------------------------------------------------------------------------ build
def _environment_dirs() -> tuple[Path, Path]:
    """(include, lib) where the onednn wheels put dnnl headers and libdnnl in this environment."""
    prefix = Path(sys.prefix)
    return prefix / "include", prefix / "lib"


def _ffi_include() -> Path:
    spec = importlib.util.find_spec("jaxlib")
    if spec is None or not spec.submodule_search_locations:
        raise ConvBackendError("jaxlib is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "include"


def _library_dirs() -> list[Path]:
    """Where the built library is looked for, in order: $JAXFACE_KERNELS_DIR alone when set; else the
    environment's lib/jaxface, then the per-user cache (for an environment the user cannot write)."""
    explicit = os.environ.get(KERNELS_DIR_ENV, "").strip()
    if explicit:
        return [Path(explicit).expanduser()]
    return [_environment_dirs()[1] / "jaxface", Path(parallel.user_cache_dir()) / "kernels"]


def library_path() -> Path:
    """The library built from this source: where it is, else where a build puts it (the first
    writable folder of _library_dirs). Named by a hash of the source, so an edit is never run stale."""
    name = f"onednn_conv-{hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]}.so"
    folders = _library_dirs()
    for folder in folders:
        if (folder / name).exists():
            return folder / name
    return next((folder for folder in folders if files.writable(folder)), folders[0]) / name


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


def build_problems() -> list[str]:
    """What stops a build here, as sentences; empty when it can build."""
    include, lib = _environment_dirs()
    problems = []
    if not (include / "oneapi" / "dnnl" / "dnnl.hpp").exists() or not any(lib.glob("libdnnl.so*")):
        problems.append(f"oneDNN is not installed in {sys.prefix} (pip install -e '.[onednn]'; "
                        "Linux x86-64 only)")
    if _compiler() is None:
        problems.append("no C++ compiler (set CXX, or install g++)")
    try:
        if not (_ffi_include() / "xla" / "ffi" / "api" / "ffi.h").exists():
            problems.append("this jaxlib ships no XLA FFI headers")
    except ConvBackendError as e:
        problems.append(str(e))
    return problems


def build(force: bool = False) -> Path:
    """Compile onednn_conv.cc into library_path() (atomically) unless it is there; return the path."""
    target = library_path()
    if target.exists() and not force:
        return target
    problems = build_problems()
    if problems:
        raise ConvBackendError("cannot build the oneDNN convolution: " + "; ".join(problems))
    include, lib = _environment_dirs()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        libdnnl = min(lib.glob("libdnnl.so*"), key=lambda p: len(p.name))
        cmd = [_compiler(), "-O3", "-std=c++17", "-shared", "-fPIC", "-fopenmp",
               f"-I{include}", f"-I{_ffi_include()}", str(SOURCE), "-o", str(out),
               str(libdnnl), f"-Wl,-rpath,{lib}"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise ConvBackendError(f"compiling {SOURCE.name} failed:\n{result.stderr[-4000:]}")
        os.replace(out, target)
    for stale in target.parent.glob("onednn_conv-*.so"):  # builds of earlier sources
        if stale != target:
            stale.unlink(missing_ok=True)
    return target


# ------------------------------------------------------------------------------------------- load
@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str | None]:
    """(library, None) once its handlers are registered with XLA, or (None, why not)."""
    path = library_path()
    if not path.exists():
        # Built at first use where it can be (`pip install` does not run `make`): once per environment
        # and source, a few seconds, said on stderr.
        problems = build_problems()
        if problems:
            return None, "the oneDNN convolution cannot be built here: " + "; ".join(problems)
        print(f"jaxface: building the oneDNN convolution once for this environment ({path}) ...",
              file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            path = build()
        except (ConvBackendError, OSError) as e:
            return None, (f"building the oneDNN convolution failed ({(str(e).splitlines() or [''])[0][:200]}); "
                          "`python -m jaxface.kernels.onednn build` shows the whole error")
        print(f"jaxface: built in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    try:
        lib = ctypes.CDLL(str(path))
        handlers = {name: getattr(lib, name) for name in _TARGETS}
    except (OSError, AttributeError) as e:
        return None, f"cannot load {path}: {e} (rebuild: `python -m jaxface.kernels.onednn build --force`)"
    for name, handler in handlers.items():
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(handler), platform="cpu")
    lib.JaxfaceConvWeightsBlock.restype = ctypes.c_int64
    lib.JaxfaceConvWeightsBlock.argtypes = [ctypes.POINTER(ctypes.c_int64)]
    lib.JaxfaceOneDnnVersion.restype = ctypes.c_int64
    return lib, None


def unavailable_reason() -> str | None:
    """Why oneDNN cannot run here, or None when it can."""
    return _load()[1]


# ------------------------------------------------------------------------------------------ choose
_overrides: dict[str, list[str]] = {ENV: [], WINOGRAD_ENV: []}


def _setting(env: str, modes: tuple[str, ...]) -> str:
    """The mode of `env` in force (innermost `forced` first), checked against `modes`."""
    value = _overrides[env][-1] if _overrides[env] else os.environ.get(env, "auto").strip().lower() or "auto"
    return _checked(env, value, modes)


def _checked(env: str, value: str, modes: tuple[str, ...]) -> str:
    if value not in modes:
        raise ConvBackendError(f"{env}={value!r} is not a valid setting; valid: {', '.join(modes)}")
    return value


def mode() -> str:
    """The JAXFACE_CONV mode in force."""
    return _setting(ENV, MODES)


def winograd_mode() -> str:
    """The JAXFACE_WINOGRAD mode in force."""
    return _setting(WINOGRAD_ENV, WINOGRAD_MODES)


@contextlib.contextmanager
def forced(value: str | None = None, *, winograd: str | None = None):
    """Trace with JAXFACE_CONV=value and/or JAXFACE_WINOGRAD=winograd inside the block. Clears JAX's
    caches on entry and exit, since the choice is made at trace time and cached traces would
    otherwise keep the other backend."""
    pushed = [(env, _checked(env, v, modes)) for env, v, modes in
              ((ENV, value, MODES), (WINOGRAD_ENV, winograd, WINOGRAD_MODES)) if v is not None]
    for env, v in pushed:
        _overrides[env].append(v)
    jax.clear_caches()
    try:
        yield
    finally:
        for env, _ in pushed:
            _overrides[env].pop()
        jax.clear_caches()


def _chosen(mesh_devices: int) -> bool:
    """Does JAXFACE_CONV put a float32 2-D convolution traced now, under a mesh of `mesh_devices`
    devices, on oneDNN (if it is built)? Never under a mesh of several devices: the FFI call, which has
    no partitioning rule, is not split by batch there, and under explicit sharding it computed wrong
    results."""
    chosen = mode()
    if chosen == "xla" or jax.default_backend() != "cpu" or mesh_devices > 1:
        return False
    return not (chosen == "auto" and jax.device_count() > 1)


def applies(inputs, kernel, *, feature_group_count: int = 1, dilated: bool = False) -> bool:
    """Should this convolution (NHWC inputs, HWIO kernel) run on oneDNN? Raises when JAXFACE_CONV=onednn
    and the extension is unavailable."""
    mesh = jax.sharding.get_abstract_mesh()
    if not _chosen(1 if mesh.empty else mesh.size):
        return False
    reason = unavailable_reason()
    if reason is not None:
        if mode() == "onednn":
            raise ConvBackendError(f"{ENV}=onednn but {reason}")
        _note_fallback(reason)
        return False
    return (getattr(inputs, "ndim", 0) == 4 and getattr(kernel, "ndim", 0) == 4 and inputs.dtype == jnp.float32
            and kernel.dtype == jnp.float32 and feature_group_count == 1 and not dilated)


@functools.cache
def _note_fallback(reason: str) -> None:
    """Once per process: a run that could have used oneDNN says why it does not (not silently slower)."""
    print(f"jaxface: VGG-Face convolutions run on XLA's convolution, 1.5-3x slower on CPU, because {reason} "
          f"(set {ENV}=xla to choose it and silence this)", file=sys.stderr, flush=True)


def runs_here(mesh_devices: int = 1) -> bool:
    """Would a float32 2-D convolution traced now, under a mesh of `mesh_devices` devices, run on
    oneDNN (subject to the per-problem checks of applies and supports)?"""
    return _chosen(mesh_devices) and unavailable_reason() is None


def supports(x_shape, kernel_shape, strides, padding) -> bool:
    """Does oneDNN take this problem (NHWC input, HWIO kernel, 2 strides, 2 (lo, hi) pads)? It has
    rejected no convolution we tried, but a rejected one runs on XLA rather than failing mid-run."""
    try:
        return all(_weights_block(_key(kind, x_shape, kernel_shape, strides, padding)) >= 0
                   for kind in (_FORWARD, _FORWARD_BIAS_RELU, _BACKWARD_DATA))
    except (ConvBackendError, ValueError, TypeError):
        return False


def describe() -> str:
    """One line for logs and benchmark records: which convolution a single-device CPU run uses."""
    chosen = mode()
    if chosen == "xla":
        return f"xla ({ENV}=xla)"
    lib, reason = _load()
    if lib is None:
        return f"xla ({reason})"
    v = int(lib.JaxfaceOneDnnVersion())
    winograd = {"auto": "Winograd F(2x2,3x3) where it pays", "always": "Winograd F(2x2,3x3) for every 3x3",
                "off": f"direct only, {WINOGRAD_ENV}=off"}[winograd_mode()]
    return f"onednn {v // 10000}.{v // 100 % 100}.{v % 100} ({winograd})"


# -------------------------------------------------------------------------------------------- call
def _output_hw(x_shape, k_shape, strides, padding) -> tuple[int, int]:
    (sh, sw), ((pt, pb), (pl, pr)) = strides, padding
    return ((x_shape[1] + pt + pb - k_shape[0]) // sh + 1, (x_shape[2] + pl + pr - k_shape[1]) // sw + 1)


def _key(kind: int, x_shape, k_shape, strides, padding) -> tuple[int, ...]:
    oh, ow = _output_hw(x_shape, k_shape, strides, padding)
    (pt, pb), (pl, pr) = padding
    n, h, w, c = x_shape
    return (kind, n, h, w, c, k_shape[0], k_shape[1], k_shape[3], oh, ow, *strides, pt, pb, pl, pr)


def _library() -> ctypes.CDLL:
    """The loaded extension (its handlers registered with XLA), or ConvBackendError saying why not."""
    lib, reason = _load()
    if lib is None:
        raise ConvBackendError(reason)
    return lib


@functools.cache
def _weights_block(key: tuple[int, ...]) -> int:
    return int(_library().JaxfaceConvWeightsBlock((ctypes.c_int64 * 16)(*key)))


def _weights_for(kind: int, kernel, key):
    """(weights, block): the kernel reordered by oneDNN into the primitive's blocked layout, when that
    layout is one BlockOf describes, else the plain HWIO kernel and block 0 (the handler then reorders
    it at every call). Packing is a pure function of the kernel, so XLA computes it once per compiled
    program when the weights do not change, as in an unrolled chunk of inversion steps."""
    block = _weights_block(key)
    if block <= 0:
        return kernel, 0
    kh, kw, i, o = kernel.shape
    shape = (-(-i // block), kh, kw, o, block) if kind == _BACKWARD_DATA else (-(-o // block), kh, kw, i, block)
    packed = jax.ffi.ffi_call("JaxfaceConvPackWeights", _result(shape, kernel))(
        kernel, key=np.asarray(key, np.int64), block=np.int64(block))
    return packed, block


def _attrs(k_shape, strides, padding, block: int) -> dict:
    (pt, pb), (pl, pr) = padding
    values = dict(kernel_h=k_shape[0], kernel_w=k_shape[1], stride_h=strides[0], stride_w=strides[1],
                  pad_top=pt, pad_bottom=pb, pad_left=pl, pad_right=pr, packed=block)
    return {name: np.int64(v) for name, v in values.items()}


def _result(shape, like) -> jax.ShapeDtypeStruct:
    """An FFI result of `shape` typed like `like` (same dtype; under explicit sharding the same
    sharding, which custom_vjp checks: batch-sharded activations, replicated kernels). Only used
    where nothing is partitioned (see _chosen), so the sharding is a type, not a split."""
    sharding = getattr(jax.typeof(like), "sharding", None)
    spec = getattr(sharding, "spec", None)
    if spec is None or getattr(sharding.mesh, "empty", True):
        return jax.ShapeDtypeStruct(shape, like.dtype)
    return jax.ShapeDtypeStruct(shape, like.dtype, sharding=sharding.update(spec=P(*spec[:1])))


def uses_winograd(x_shape, kernel_shape, strides, padding) -> bool:
    """Does this oneDNN convolution (NHWC input, HWIO kernel) run on the Winograd algorithm?

    Under `auto`, when it measured faster than oneDNN's direct convolution on two cores, forward and
    input gradient: at least C*O/(C+O) = 40 (64 -> 128 channels; 64 -> 64 was 0.9-1.0x, since the
    transforms move 4x the activations) and N*H*W*C*O >= 2^23 (smaller calls lose to the fixed
    costs: 128 channels at 4x4 by 8 images ran 0.6-1.0x).
    """
    if (tuple(kernel_shape[:2]), tuple(strides), tuple(padding)) != WINOGRAD_GEOMETRY:
        return False
    chosen = winograd_mode()
    if chosen != "auto":
        return chosen == "always"
    n, h, w, c = x_shape
    o = kernel_shape[3]
    return c * o >= 40 * (c + o) and n * h * w * c * o >= 2 ** 23


def _forward(x, kernel, strides, padding, bias=None):
    """conv(x, kernel), or relu(conv(x, kernel) + bias) in the same oneDNN call when bias is given."""
    if uses_winograd(x.shape, kernel.shape, strides, padding):
        return _winograd(x, _winograd_kernel(kernel), bias=bias, relu=bias is not None)
    kind = _FORWARD if bias is None else _FORWARD_BIAS_RELU
    key = _key(kind, x.shape, kernel.shape, strides, padding)
    weights, block = _weights_for(kind, kernel, key)
    out = _result((x.shape[0], *key[8:10], kernel.shape[3]), x)
    target, operands = ("JaxfaceConvForward", (x, weights)) if bias is None else (
        "JaxfaceConvBiasReluForward", (x, weights, bias))
    return jax.ffi.ffi_call(target, out)(*operands, **_attrs(kernel.shape, strides, padding, block))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, kernel, strides, padding):
    return _forward(x, kernel, strides, padding)


def _conv_fwd(x, kernel, strides, padding):
    return _forward(x, kernel, strides, padding), (x, kernel)


def _winograd_kernel(kernel):
    """The kernel transformed for the Winograd convolution, (16, C, O). A pure function of the
    weights: XLA computes it once per compiled program when they do not change."""
    _library()
    c, o = kernel.shape[2:]
    return jax.ffi.ffi_call("JaxfaceConvWinogradKernel", _result((16, c, o), kernel))(kernel)


def _winograd(x, transformed, *, bias=None, mask=None, relu=False, input_gradient=False):
    """relu(conv(x) + bias) (or conv(x)) on the Winograd algorithm; with input_gradient, the input
    gradient of the convolution whose transformed kernel this is, given the output gradient x
    (masked by mask > 0 if given)."""
    _library()
    o = transformed.shape[1 if input_gradient else 2]
    empty = jnp.zeros((0,), x.dtype)
    return jax.ffi.ffi_call("JaxfaceConvWinograd", _result((*x.shape[:3], o), x))(
        x, empty if mask is None else mask, transformed, empty if bias is None else bias,
        relu=relu, input_gradient=input_gradient)


def _conv_bwd(strides, padding, residuals, g, mask=None):
    """Gradients of conv(x, kernel) given the output gradient g; with `mask` (the output of a ReLU
    applied to the convolution), of relu(conv): g then only flows where mask > 0."""
    x, kernel = residuals
    masked = g if mask is None else jnp.where(mask > 0, g, 0.0)
    if uses_winograd(x.shape, kernel.shape, strides, padding):  # folds the mask into its tiles
        dx = _winograd(g, _winograd_kernel(kernel), mask=mask, input_gradient=True)
    else:
        key = _key(_BACKWARD_DATA, x.shape, kernel.shape, strides, padding)
        weights, block = _weights_for(_BACKWARD_DATA, kernel, key)
        dx = jax.ffi.ffi_call("JaxfaceConvBackwardData", _result(x.shape, x))(
            masked, weights, **_attrs(kernel.shape, strides, padding, block))
    # Dead (and removed by XLA) when only the input gradient is used, as in feature inversion.
    dkernel = jax.ffi.ffi_call("JaxfaceConvBackwardWeights", _result(kernel.shape, kernel))(
        x, masked, **_attrs(kernel.shape, strides, padding, 0))
    return dx, dkernel


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv2d(x, kernel, *, strides=(1, 1), padding=((0, 0), (0, 0))):
    """lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=('NHWC','HWIO','NHWC'))
    on oneDNN: float32, no groups or dilation. Differentiable in both arguments."""
    return _conv(x, kernel, *_geometry(x, kernel, strides, padding))


def _geometry(x, kernel, strides, padding):
    strides = tuple(int(s) for s in strides)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    if len(strides) != 2 or len(padding) != 2 or min(strides) < 1 or min(min(p) for p in padding) < 0:
        raise ValueError(f"oneDNN conv2d takes 2 positive strides and 2 non-negative (lo, hi) pads, "
                         f"got strides={strides} padding={padding}")
    if x.shape[3] != kernel.shape[2]:
        raise ValueError(f"input has {x.shape[3]} channels but the kernel expects {kernel.shape[2]}")
    return strides, padding


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _conv_bias_relu(x, kernel, bias, strides, padding):
    return _forward(x, kernel, strides, padding, bias)


def _conv_bias_relu_fwd(x, kernel, bias, strides, padding):
    y = _forward(x, kernel, strides, padding, bias)
    return y, (x, kernel, y)


def _conv_bias_relu_bwd(strides, padding, residuals, g):
    x, kernel, y = residuals
    dx, dkernel = _conv_bwd(strides, padding, (x, kernel), g, mask=y)
    return dx, dkernel, jnp.sum(jnp.where(y > 0, g, 0.0), axis=(0, 1, 2))


_conv_bias_relu.defvjp(_conv_bias_relu_fwd, _conv_bias_relu_bwd)


def conv2d_bias_relu(x, kernel, bias, *, strides=(1, 1), padding=((0, 0), (0, 0))):
    """relu(conv2d(x, kernel) + bias) in one oneDNN call (bias and ReLU applied as the convolution
    writes its output, saving a pass over the activations). Differentiable in all three arguments."""
    if bias.shape != (kernel.shape[3],):
        raise ValueError(f"bias must have shape ({kernel.shape[3]},), got {bias.shape}")
    return _conv_bias_relu(x, kernel, bias, *_geometry(x, kernel, strides, padding))


# -------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv else "status"
    try:
        return _command(command, argv)
    except ConvBackendError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _command(command: str, argv: list[str]) -> int:
    if command == "build":
        try:
            print(f"oneDNN convolution: {build(force='--force' in argv)}")
        except ConvBackendError as e:
            # Optional: without it every convolution runs on XLA, correct and somewhat slower.
            print(f"oneDNN convolution not built, XLA's convolution will run: {e}")
        return 0
    if command == "status":
        print(f"{ENV}={mode()}: {describe()}")
        return 0
    print(f"unknown command {command!r}; valid: build [--force], status", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
