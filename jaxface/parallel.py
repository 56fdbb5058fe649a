"""Meshes, shardings, multi-host initialisation and host-local -> global arrays.

Nothing here runs at import time: a process decides its topology when a command starts, so the same code
serves one laptop core, 8 simulated CPU devices in tests, and a TPU pod slice.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxface import faults

DATA_AXIS = "data"
MODEL_AXIS = "model"


# XLA:CPU's YNNPACK fusions run VGG's 3x3 convolutions slower than its default convolution path on the
# 2-core x86 machine we measure on (jax 0.10): inversion step full64 1.18x, full112 1.13x, training
# step tiny 1.19x, full112 1.33x faster without them (jaxface bench; MobileNetV3 training 1.08x too),
# but ResNet-18 training 0.9x. So the VGG commands (and MobileNetV3 training) turn them off; the flag
# exists in these jaxlibs only (an unknown XLA flag aborts the process); a user's own XLA_FLAGS win.
VGG_CPU_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=",)
_VGG_FLAG_JAXLIBS = ("0.10.",)


def apply_vgg_cpu_xla_flags(environ: dict | None = None) -> bool:
    """Add VGG_CPU_XLA_FLAGS to XLA_FLAGS (before JAX starts its backends); True if added.

    No-op when JAXFACE_XLA_DEFAULTS=0, when XLA_FLAGS already names the flag, or on a jaxlib whose
    flags were not checked. Flags only take effect if no JAX backend has started in this process.
    """
    environ = os.environ if environ is None else environ
    if environ.get("JAXFACE_XLA_DEFAULTS", "1") == "0":
        return False
    import jaxlib

    if not str(getattr(jaxlib, "__version__", "")).startswith(_VGG_FLAG_JAXLIBS):
        return False
    current = environ.get("XLA_FLAGS", "")
    added = [f for f in VGG_CPU_XLA_FLAGS if f.split("=")[0] not in current]
    if not added:
        return False
    environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return True


COMPILATION_CACHE_ENV = "JAXFACE_COMPILATION_CACHE"
COMPILATION_CACHE_MAX_BYTES = 4 << 30  # least recently used programs are dropped beyond this
CACHE_MIN_COMPILE_SECONDS = 0.05


def compilation_cache_dir(environ: Mapping[str, str] | None = None) -> str | None:
    """Where compiled programs are kept between commands: $JAXFACE_COMPILATION_CACHE, else
    $XDG_CACHE_HOME/jaxface/xla (~/.cache/jaxface/xla); None when that variable is 'off'."""
    environ = os.environ if environ is None else environ
    value = environ.get(COMPILATION_CACHE_ENV, "").strip()
    if value.lower() in ("off", "0", "none", "false", "no"):
        return None
    if value:
        return os.path.expanduser(value)
    return os.path.join(user_cache_dir(environ), "xla")


def user_cache_dir(environ: Mapping[str, str] | None = None) -> str:
    """This user's jaxface cache folder: $XDG_CACHE_HOME/jaxface, else ~/.cache/jaxface."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jaxface")


def enable_compilation_cache() -> str | None:
    """Turns on JAX's persistent compilation cache for this process; -> the folder, or None when off.

    A second `jaxface` command of the same model reuses the first one's compiled programs instead of
    compiling them again; processes may share the folder (entries are written whole, then renamed).
    JAX_COMPILATION_CACHE_DIR, when set, is JAX's own setting and wins. A folder that cannot be created
    turns the cache off with one warning.
    """
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    path = compilation_cache_dir()
    if path is None:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        logging.warning("compilation cache off: cannot create %s (%s); set %s to another folder or to off",
                        path, err.strerror or err, COMPILATION_CACHE_ENV)
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    # JAX keeps only programs that took 1 s to compile by default; a generate command also compiles about
    # 30 small ones (0.1 s each, 3 s together), worth keeping too.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_SECONDS)
    try:  # JAX bounds the folder (least recently used first) only with filelock installed
        import filelock  # noqa: F401

        jax.config.update("jax_compilation_cache_max_size", COMPILATION_CACHE_MAX_BYTES)
    except ImportError:
        pass
    return path


def maybe_initialize_distributed(config: Any = None) -> None:
    """Calls jax.distributed.initialize() when a multi-process launch asks for it, once.

    A launch asks through config.distributed.enabled, or the environment that TPU VMs and our local
    launcher set (JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES; JAX_COORDINATOR_ADDRESS=auto: let jax
    discover the topology, as on TPU VMs). On a single process it does nothing.

    How soon the processes give up on each other, in whole seconds (the environment overrides):
      JAXFACE_DIST_INIT_TIMEOUT_S      (120) for every process to connect at the start;
      JAXFACE_DIST_HEARTBEAT_S         (30)  after a process stopped (killed, crashed, preempted), before
                                             the others stop too, instead of waiting in a collective;
      JAXFACE_DIST_SHUTDOWN_TIMEOUT_S  (120) at exit, for the others to finish too (keep it above the
                                             longest time process 0 writes after the others are done).
    jax's defaults are 300, 100 and 300. In jax 0.10 each of these timeouts ends the waiting processes
    through the runtime's fatal error ("Terminating process because the JAX distributed service detected
    fatal errors ... another task died"), not a Python exception: jax offers no hook that could turn it
    into one line (its missed_heartbeat_callback cannot be given a Python function). launch/local/run.sh
    stops the survivors itself and names the process that failed first.
    """
    import inspect  # local: only a multi-process start needs it

    dist = getattr(config, "distributed", None) if config is not None else None
    enabled = bool(getattr(dist, "enabled", False)) or "JAX_COORDINATOR_ADDRESS" in os.environ
    if not enabled or jax.distributed.is_initialized():
        return
    kwargs = {}
    # launch/local/run.sh sets these; on TPU VMs jax discovers the topology by itself.
    env = {"coordinator_address": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
           "process_id": "JAX_PROCESS_ID"}
    for key, var in env.items():
        value = getattr(dist, key, None) if dist is not None else None
        if value in (None, "", -1) and os.environ.get(var):
            value = os.environ[var] if key == "coordinator_address" else int(os.environ[var])
        if value not in (None, "", -1, "auto"):  # "auto": let jax discover (TPU VMs)
            kwargs[key] = value
    timeouts = {"initialization_timeout": ("JAXFACE_DIST_INIT_TIMEOUT_S", 120),
                "heartbeat_timeout_seconds": ("JAXFACE_DIST_HEARTBEAT_S", 30),
                "shutdown_timeout_seconds": ("JAXFACE_DIST_SHUTDOWN_TIMEOUT_S", 120)}
    accepted = inspect.signature(jax.distributed.initialize).parameters  # older jax lacks some of them
    for key, (var, default) in timeouts.items():
        raw = os.environ.get(var, "").strip()
        if raw and not (raw.isdigit() and int(raw) >= 1):
            raise ValueError(f"{var}={raw!r}: must be a whole number of seconds, at least 1")
        if key in accepted:
            kwargs[key] = int(raw) if raw else default
    if jax.config.jax_platforms in ("cpu",) or os.environ.get("JAX_PLATFORMS") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
    # jax reads JAX_COORDINATOR_ADDRESS itself: hide the "auto" placeholder while it discovers the address.
    auto = os.environ.get("JAX_COORDINATOR_ADDRESS") == "auto" and "coordinator_address" not in kwargs
    if auto:
        del os.environ["JAX_COORDINATOR_ADDRESS"]
    try:
        jax.distributed.initialize(**kwargs)
    finally:
        if auto:
            os.environ["JAX_COORDINATOR_ADDRESS"] = "auto"
    logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
    start_peer_watch()


# ------------------------------------------------------------------------------------ peer watch
PEER_TIMEOUT_ENV = "JAXFACE_DIST_PEER_TIMEOUT_S"
DEFAULT_PEER_TIMEOUT_S = 15  # below the runtime's heartbeat timeout, so that this fires first
_PEER_KEY = "jaxface/peer"
_peer_watch = None


class PeerWatch:
    """Turns a lost peer into one error line and exit status 1 in every other process, before jax's
    runtime would end them with a native crash dump (it declares a peer dead only after its heartbeat
    timeout, then aborts the survivors; jax offers no hook to make that a Python error).

    Each process counts up a key in the coordination service's key-value store every second, and notes
    when it last saw each peer's count change (its own clock: hosts' clocks never meet). A peer whose
    count stood still for JAXFACE_DIST_PEER_TIMEOUT_S (15) seconds was killed, crashed or lost its host;
    a peer that posted a failure (`mark`, from the CLI's error paths) failed with that reason. A peer
    that posted "done" has finished and is not waited for. The count is kept by a daemon thread, which
    runs during compiles and device work (they release the GIL)."""

    def __init__(self, client, me: int, count: int, timeout_s: float):
        import threading
        import time

        self.client, self.me, self.count, self.timeout_s = client, me, count, timeout_s
        self._time = time.monotonic
        self._beats = 0
        self._seen = {j: (None, self._time()) for j in range(count) if j != me}
        self._thread = threading.Thread(target=self._run, name="jaxface-peer-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def mark(self, state: str) -> None:
        """Posts this process's end: "done", or "failed: REASON" (the first post wins)."""
        try:
            self.client.key_value_set(f"{_PEER_KEY}/state/{self.me}", state)
        except Exception:  # noqa: BLE001 - already posted, or the service is gone
            pass

    def _get(self, key: str):
        try:
            return self.client.key_value_try_get(key)
        except Exception:  # noqa: BLE001 - not posted yet
            return None

    def failure_of(self, j: int) -> str | None:
        """'process J of N failed: REASON' when peer J posted a failure, else None."""
        state = self._get(f"{_PEER_KEY}/state/{j}")
        return f"process {j} of {self.count} {state}" if state is not None and state.startswith("failed") else None

    def _stop(self, message: str) -> None:
        import sys

        print(f"error: {message}; stopping process {self.me} of {self.count} too", file=sys.stderr, flush=True)
        os._exit(1)  # skip jax's shutdown barrier, which would wait for the lost peer

    def check_once(self) -> None:
        self._beats += 1
        try:
            self.client.key_value_set(f"{_PEER_KEY}/alive/{self.me}", str(self._beats), allow_overwrite=True)
        except Exception as err:  # noqa: BLE001 - the coordinator (process 0) is gone
            if self.me != 0:
                self._stop(f"lost the coordination service in process 0 ({type(err).__name__})")
            return
        now = self._time()
        for j, (last, since) in list(self._seen.items()):
            if self._get(f"{_PEER_KEY}/state/{j}") == "done":
                del self._seen[j]
                continue
            failure = self.failure_of(j)
            if failure is not None:
                self._stop(failure)
            beat = self._get(f"{_PEER_KEY}/alive/{j}")
            if beat != last:
                self._seen[j] = (beat, now)
            elif now - since > self.timeout_s:
                self._stop(f"process {j} of {self.count} stopped responding {now - since:.0f} s ago "
                           "(killed, crashed, or its host was lost)")

    def _run(self) -> None:
        import time

        while self._seen:
            self.check_once()
            time.sleep(1.0)


def start_peer_watch() -> None:
    """Starts the PeerWatch of a multi-process run (once; JAXFACE_DIST_PEER_TIMEOUT_S=0 turns it off)."""
    global _peer_watch
    import atexit

    raw = os.environ.get(PEER_TIMEOUT_ENV, "").strip()
    if raw and not raw.isdigit():
        raise ValueError(f"{PEER_TIMEOUT_ENV}={raw!r}: must be a whole number of seconds (0: off)")
    timeout = int(raw) if raw else DEFAULT_PEER_TIMEOUT_S
    if _peer_watch is not None or timeout == 0 or jax.process_count() < 2:
        return
    from jax._src import distributed as jax_distributed  # the runtime's client: no public handle

    client = getattr(jax_distributed.global_state, "client", None)
    if client is None or not hasattr(client, "key_value_try_get"):
        logging.warning("no peer watch: this jax has no distributed key-value client")
        return
    _peer_watch = PeerWatch(client, jax.process_index(), jax.process_count(), timeout)
    atexit.register(_peer_watch.mark, "done")  # after a failure, mark() already posted "failed"
    _peer_watch.start()


def mark_process_end(state: str) -> None:
    """Tells the other processes how this one ends ("done" or "failed: REASON"); no-op alone."""
    if _peer_watch is not None:
        _peer_watch.mark(state)


def lost_peer(err: BaseException | None = None) -> str | None:
    """Why this process cannot go on because of another one, or None: a peer that posted its failure, or
    a collective broken by a peer that went away (`err`, e.g. gloo's "Connection closed by peer")."""
    if _peer_watch is not None:
        failures = [_peer_watch.failure_of(j) for j in range(_peer_watch.count) if j != _peer_watch.me]
        failure = next((f for f in failures if f is not None), None)
        if failure is not None:
            return failure
    text = str(err or "")
    if distributed_started() and any(s in text for s in ("Connection closed by peer", "Connection reset by peer")):
        line = (text.strip().splitlines() or [""])[0]
        return f"a peer process went away during a collective ({line[:200]})"
    return None


def exit_failed(code: int, reason: str) -> None:
    """Ends a failed command: alone, sys.exit(code); in a multi-process run, posts the failure for the
    others (PeerWatch) and leaves at once, since jax's exit barrier would wait for peers that are
    still computing and then abort with a crash dump."""
    import sys

    if not distributed_started():
        sys.exit(code)
    mark_process_end(f"failed: {reason}")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def make_mesh(data: int = -1, model: int = 1, num_devices: int = -1) -> jax.sharding.Mesh:
    """A ('data', 'model') mesh over the first num_devices devices (-1: all); data=-1 fills the rest."""
    devices = jax.devices()
    if num_devices not in (-1, None):
        if not 1 <= num_devices <= len(devices):
            raise ValueError(f"mesh.num_devices={num_devices}: this host has {len(devices)} devices")
        devices = devices[:num_devices]
    n = len(devices)
    if model < 1 or n % model:
        raise ValueError(f"mesh.model={model} must be a positive divisor of the {n} devices")
    if data == -1:
        data = n // model
    if data * model != n:
        raise ValueError(
            f"mesh data={data} x model={model} does not cover the {n} devices; use data=-1 or "
            f"sizes whose product is {n}"
        )
    return jax.make_mesh((data, model), (DATA_AXIS, MODEL_AXIS), devices=devices)


def local_mesh() -> jax.sharding.Mesh:
    """A ('data', 'model') mesh over this process's own devices: for work that each process does on its
    own share (a generation sweep's items, predict's files) and gathers afterwards, never in lockstep."""
    devices = jax.local_devices()
    return jax.make_mesh((len(devices), 1), (DATA_AXIS, MODEL_AXIS), devices=devices)


def own_share_mesh() -> jax.sharding.Mesh | None:
    """The mesh for a model that scores or renders this process's share alone: local_mesh() in a
    multi-process run, None (the config's own mesh) in one process."""
    return local_mesh() if jax.process_count() > 1 else None


def localize(tree, mesh: jax.sharding.Mesh):
    """A model state replicated over every process's devices -> the same values replicated over MESH
    (this process's devices), read from this process's own copy: no communication."""
    def move(x):
        if not isinstance(x, jax.Array) or not any(d.process_index != jax.process_index() for d in x.sharding.device_set):
            return x
        if not x.sharding.is_fully_replicated:
            raise ValueError("a model state split over several processes' devices (mesh.model > 1 or "
                             "shard_large_params) cannot be used by one process alone")
        return jax.device_put(x.addressable_data(0), NamedSharding(mesh, P()))

    return jax.tree.map(move, tree)


def process_share(items: Sequence) -> list:
    """This process's share of a list that every process holds in the same order: items p, p+P, ..."""
    return list(items[jax.process_index()::jax.process_count()])


def gather_objects(obj: Any) -> list:
    """Every process's `obj` (anything picklable), in process order, in every process; [obj] alone.
    Two all-gathers: the pickled sizes, then the bytes padded to the largest."""
    if jax.process_count() == 1:
        return [obj]
    import pickle

    data = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.asarray([data.size], np.int64))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: data.size] = data
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
    return [pickle.loads(rows[i, : int(n)].tobytes()) for i, n in enumerate(sizes)]


def mesh_from_config(config: Any) -> jax.sharding.Mesh:
    mesh_cfg = getattr(config, "mesh", None)
    data = int(getattr(mesh_cfg, "data", -1)) if mesh_cfg is not None else -1
    model = int(getattr(mesh_cfg, "model", 1)) if mesh_cfg is not None else 1
    num_devices = int(getattr(mesh_cfg, "num_devices", -1) or -1) if mesh_cfg is not None else -1
    return make_mesh(data, model, num_devices)


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh) -> NamedSharding:
    """Leading (batch) axis split over 'data'; the rest replicated."""
    return NamedSharding(mesh, P(DATA_AXIS))


def data_parallel_size(mesh) -> int:
    return mesh.shape[DATA_AXIS]


def check_batch_size(global_batch: int, mesh) -> int:
    """The per-process batch; the global batch must split evenly over processes and data shards."""
    shards = data_parallel_size(mesh)
    if global_batch % shards or global_batch % jax.process_count():
        raise ValueError(
            f"batch_size={global_batch} must be divisible by the {shards} data-parallel devices "
            f"(and {jax.process_count()} processes); try {max(shards, global_batch // shards * shards)}"
        )
    return global_batch // jax.process_count()


def host_to_global(batch: Mapping[str, np.ndarray], mesh) -> dict[str, jax.Array]:
    """This process's slice of a batch -> globally sharded jax.Arrays (batch axis over 'data')."""
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
    }


def distributed_started() -> bool:
    """Whether this is a multi-process run (jax.distributed initialised); asks no device."""
    return jax.distributed.is_initialized()


def barrier(name: str) -> None:
    """Every process waits here for the others (no-op in one process): after process 0 wrote files that
    the others read next (a fitted model, a calibration), so that none reads ahead of the write."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def is_main_process() -> bool:
    return jax.process_index() == 0


def gather_outputs(predict, state, batches) -> dict[str, np.ndarray]:
    """Runs predict(state, batch) over every batch, gathers every process's rows and keeps those whose
    batch['valid'] is set: -> host numpy arrays, or {} when there was no batch."""
    chunks: dict[str, list] = {}
    for batch in batches:
        out = dict(predict(state, batch))
        out["valid"] = batch["valid"]
        out = multihost_utils.process_allgather(out, tiled=True)
        valid = np.asarray(out.pop("valid"), bool)
        for k, v in out.items():
            chunks.setdefault(k, []).append(np.asarray(v)[valid])
        faults.hit("eval_batch")
    return {k: np.concatenate(v) for k, v in chunks.items()}
