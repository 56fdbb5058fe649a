"""`jaxface serve`: the app under uvicorn on a socket bound before anything loads.

Binding first means a port in use is one clear error at once, --port=0 picks a free port (printed),
and /healthz can answer 503 while the models load. SIGTERM or Ctrl-C: uvicorn stops accepting, lets
in-flight requests finish (up to graceful_shutdown_s), then the process exits 0.
"""
from __future__ import annotations

import contextlib
import errno
import pathlib
import signal
import socket
import sys

from jaxface.serve.options import ServeOptionError, ServeOptions

NO_WORKDIR = ("--workdir is required: pass the workdir of a trained detector, e.g. --workdir=runs/demo/detect "
              "(`jaxface demo` trains one) or one from `jaxface train --config=configs/detect/synthfakes_mobilenet.py "
              "--workdir=W`")


def bind(host: str, port: int) -> socket.socket:
    if not 0 <= int(port) <= 65535:
        raise ServeOptionError(f"--port must be in 0..65535 (0: any free port), got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise ServeOptionError(f"--host={host!r} cannot be resolved ({err.strerror})") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise ServeOptionError(f"port {port} on {host} is already in use; pass another --port (0: any free port)") from None
        raise ServeOptionError(f"cannot listen on {host}:{port} ({err.strerror})") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _server_class():
    import uvicorn

    class GracefulServer(uvicorn.Server):
        """uvicorn re-raises a caught SIGTERM/SIGINT after its graceful shutdown, which ends the process
        with the signal's status; here the signal means "drain and exit 0"."""

        @contextlib.contextmanager
        def capture_signals(self):
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return GracefulServer


def serve_command(workdir, *, host: str = "127.0.0.1", port: int = 8000, generator_workdir=None,
                  options: ServeOptions | None = None, access_log: bool = False) -> int:
    if not workdir:
        raise ServeOptionError(NO_WORKDIR)
    options = (options or ServeOptions()).validate()
    import uvicorn

    from jaxface.serve import app as app_lib
    from jaxface.serve import engine

    workdir = pathlib.Path(workdir)
    engine.check_detector_workdir(workdir)
    if generator_workdir is not None:
        generator_workdir = pathlib.Path(generator_workdir)
        if not engine.has_generator(generator_workdir):
            raise ServeOptionError(f"--generator_workdir={generator_workdir} holds no fitted cGMM; run `jaxface "
                                   f"fit-cgmm --config=configs/generate/synthfaces_tiny.py --workdir={generator_workdir}` first")
    sock = bind(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    failures: list[str] = []
    server_ref: list = []

    def on_load_failed(message: str) -> None:
        failures.append(message)
        if server_ref:
            server_ref[0].should_exit = True

    def load():
        loaded = engine.load_engine(workdir, generator_workdir, options)
        gen = loaded.generator
        print(f"ready: detector {loaded.detector.name} (step {loaded.detector.checkpoint_step}, threshold "
              f"{loaded.detector.threshold:.4f}, batch buckets {list(loaded.detector.buckets)}, compiled in "
              f"{loaded.detector.compile_seconds:.1f} s); generator "
              + (f"{gen.name} ({loaded.generate_steps} steps by default)" if gen else "none"), flush=True)
        return loaded

    app = app_lib.create_app(load, options, on_load_failed=on_load_failed)
    config = uvicorn.Config(app, log_level="warning", access_log=access_log, lifespan="on",
                            timeout_graceful_shutdown=options.graceful_shutdown_s, server_header=False)
    server = _server_class()(config)
    server_ref.append(server)
    url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    print(f"serving http://{url_host}:{bound_port}/ (loading {workdir}"
          + (f" and the generator in {generator_workdir}" if generator_workdir else "")
          + "; GET /healthz is 200 once loaded; Ctrl-C stops)", flush=True)
    server.run(sockets=[sock])
    if failures:
        raise ServeOptionError(f"could not load the models: {failures[0]}")
    print("stopped", file=sys.stderr, flush=True)
    return 0
