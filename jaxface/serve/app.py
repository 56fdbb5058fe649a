"""The HTTP service: FastAPI routes, errors, metrics and the web page.

    create_app(load, options) -> FastAPI

`load()` builds the engine (engine.load_engine: detector, optional generator, compiled). It runs in
a background thread once the app starts, so the server answers /healthz with 503 while it loads and
compiles and 200 once every route can answer without compiling. Every error is JSON
{"error": code, "message": text} with the status saying who is at fault.
"""
from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import json
import logging
import pathlib
import threading
import time
from typing import Callable, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from jaxface.serve import batcher as batcher_lib
from jaxface.serve import engine as engine_lib
from jaxface.serve import metrics as metrics_lib
from jaxface.serve import uploads
from jaxface.serve.options import ServeOptions

STATIC_DIR = pathlib.Path(__file__).resolve().parent / "static"
log = logging.getLogger("jaxface.serve")


class ServeError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = int(status), code, message, headers


class GenerateRequest(BaseModel):
    """POST /v1/generate. Unknown keys are refused, so a misspelt field is an error, not ignored."""

    model_config = ConfigDict(extra="forbid")
    attributes: list[str] = Field(min_length=1, description='Attribute names, e.g. ["Male", "Smiling"]; '
                                  "GET /v1/model lists them by group")
    seed: int = Field(0, ge=0, le=engine_lib.MAX_SEED, description="Same seed, same face")
    steps: int | None = Field(None, ge=1, description="Optimisation steps (default and cap: GET /v1/model)")
    mode: Literal["mean", "sample"] = "mean"
    model: Literal["cgmm", "joint"] = "cgmm"
    strength: float | None = Field(None, gt=0, allow_inf_nan=False,
                                   description="Scale of the target's departure from the mean face (default: the fit's)")


_UPLOAD_SCHEMA = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary", "description": "JPEG, PNG, WebP or BMP"}}}}}}}
_BATCH_SCHEMA = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["files"],
    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}}}}


class Service:
    """Everything a request needs: options, the engine once loaded, the batcher, executors, metrics."""

    def __init__(self, load: Callable[[], engine_lib.Engine], options: ServeOptions,
                 on_load_failed: Callable[[str], None] | None = None):
        self.load = load
        self.options = options
        self.on_load_failed = on_load_failed
        self.engine: engine_lib.Engine | None = None
        self.status = "loading"
        self.error: str | None = None
        self.ready = threading.Event()
        self.metrics = metrics_lib.Metrics()
        self.decode_pool = concurrent.futures.ThreadPoolExecutor(options.decode_threads, "jaxface-decode")
        self.detect_pool = concurrent.futures.ThreadPoolExecutor(1, "jaxface-detect")  # one model call at a time
        self.generate_pool = concurrent.futures.ThreadPoolExecutor(1, "jaxface-generate")
        self.generate_pending = 0
        self.batcher = batcher_lib.MicroBatcher(
            self._run_detector, max_batch=options.max_batch, max_wait_s=options.batch_wait_ms / 1000.0,
            max_queue=options.max_queue, executor=self.detect_pool,
            on_batch=self.metrics.batch_size.observe, on_depth=self.metrics.queue_depth.set)

    # ------------------------------------------------------------------------------ lifecycle
    def _load_in_background(self) -> None:
        try:
            engine = self.load()
        except Exception as err:  # noqa: BLE001 - reported on /healthz and by the command
            self.error = f"{type(err).__name__}: {err}" if not isinstance(err, ValueError) else str(err)
            self.status = "failed"
            log.error("loading failed: %s", self.error)
            if self.on_load_failed is not None:
                self.on_load_failed(self.error)
        else:
            self.engine = engine
            self.status = "ready"
            self.metrics.ready.set(1)
        finally:
            self.ready.set()

    async def start(self) -> None:
        self.batcher.start()
        threading.Thread(target=self._load_in_background, name="jaxface-load", daemon=True).start()

    async def stop(self) -> None:
        await self.batcher.stop()
        for pool in (self.decode_pool, self.detect_pool, self.generate_pool):
            pool.shutdown(wait=True)

    def require_engine(self) -> engine_lib.Engine:
        if self.engine is None:
            if self.status == "failed":
                raise ServeError(503, "load_failed", f"the model failed to load: {self.error}")
            raise ServeError(503, "loading", "the model is still loading and compiling; retry shortly "
                             "(GET /healthz answers 200 when ready)", {"Retry-After": "2"})
        return self.engine

    # ------------------------------------------------------------------------------ detection
    def _run_detector(self, images):
        return self.engine.detector.p_fake(images)

    def uncertain_band(self) -> float:
        """--uncertain_band, else the band calibrated with the detector's threshold, else 0 (off)."""
        if self.options.uncertain_band is not None:
            return float(self.options.uncertain_band)
        return float(self.engine.detector.calibrated_band or 0.0)

    def verdict(self, p_fake: float, logit: float) -> str:
        detector = self.engine.detector
        band = self.uncertain_band()
        if band > 0 and abs(p_fake - detector.threshold) < band:
            return "uncertain"
        return "fake" if detector.is_fake(logit) else "real"

    def record(self, p_fake: float, logit: float, started: float) -> dict:
        detector = self.engine.detector
        return {"label": self.verdict(p_fake, logit), "p_fake": p_fake, "threshold": detector.threshold,
                "model": detector.name, "checkpoint_step": detector.checkpoint_step,
                "latency_ms": round((time.perf_counter() - started) * 1000.0, 3)}

    async def decode(self, data: bytes):
        detector = self.engine.detector
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.decode_pool, lambda: engine_lib.prepare_upload(
                bytes(data), detector.preparer, max_pixels=self.options.max_pixels,
                min_side=self.options.min_side))

    async def classify(self, images: list) -> list:
        try:
            return await self.batcher.submit_many(images)
        except batcher_lib.QueueFull as err:
            raise ServeError(503, "queue_full", f"the server is busy ({err}); retry shortly",
                             {"Retry-After": "1"}) from None


def _error(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def _validation_message(err: RequestValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        lines.append(f"{where}: {e.get('msg', 'invalid')}")
    return "; ".join(lines)


def create_app(load: Callable[[], engine_lib.Engine], options: ServeOptions | None = None, *,
               on_load_failed: Callable[[str], None] | None = None) -> FastAPI:
    options = (options or ServeOptions()).validate()
    service = Service(load, options, on_load_failed)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="jaxface", version="0.1.0", lifespan=lifespan,
                  description="Deepfake detection and attribute-conditioned face generation. Uploads are "
                              "decoded in memory and never stored.")
    app.state.service = service
    app.add_middleware(metrics_lib.RequestMetricsMiddleware, metrics=service.metrics)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.exception_handler(ServeError)
    async def _serve_error(request, err: ServeError):
        return _error(err.status, err.code, err.message, err.headers)

    @app.exception_handler(engine_lib.RequestRejected)
    async def _rejected(request, err: engine_lib.RequestRejected):
        return _error(err.status, err.code, err.message)

    @app.exception_handler(uploads.UploadError)
    async def _upload_error(request, err: uploads.UploadError):
        return _error(err.status, err.code, err.message, {"Connection": "close"} if err.status == 413 else None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, err: RequestValidationError):
        return _error(422, "invalid_request", _validation_message(err))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, err: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        return _error(err.status_code, code, f"{request.method} {request.url.path}: {err.detail}", err.headers)

    # ------------------------------------------------------------------------------------ routes
    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/healthz", summary="200 once the models are loaded and compiled, 503 before")
    async def healthz():
        if service.status == "ready":
            return {"status": "ready"}
        body = {"status": service.status}
        if service.error:
            body["error"] = service.error
        return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})

    @app.get("/v1/model", summary="Detector and generator: names, input size, schema, threshold, runtime")
    async def model_info():
        engine = service.require_engine()
        d, g = engine.detector, engine.generator
        detector = {"name": d.name, "input_size": d.input_size, "checkpoint_step": d.checkpoint_step,
                    "threshold": d.threshold, "threshold_source": d.threshold_source, "trained_on": d.trained_on,
                    "batch_buckets": list(d.buckets), "uncertain_band": service.uncertain_band(),
                    "temperature": d.temperature}
        generator = None
        if g is not None:
            generator = {"name": g.name, "input_size": g.input_size, "checkpoint_step": g.checkpoint_step,
                         "schema": g.schema(), "models": list(g.models), "modes": list(engine_lib.GENERATE_MODES),
                         "default_steps": engine.generate_steps, "max_steps": options.max_generate_steps,
                         "default_strength": g.default_strength}
        limits = {"max_upload_bytes": options.max_upload_bytes, "max_batch_files": options.max_batch_files,
                  "max_pixels": options.max_pixels, "min_side": options.min_side,
                  "accepted_formats": sorted(set(engine_lib.ACCEPTED_FORMATS.values()))}
        return {"detector": detector, "generator": generator, "limits": limits, "runtime": engine.runtime}

    @app.post("/v1/detect", summary="Real or fake for one image (multipart field 'file')",
              openapi_extra=_UPLOAD_SCHEMA)
    async def detect(request: Request):
        started = time.perf_counter()
        service.require_engine()
        parts = await uploads.read_parts(request, max_file_bytes=options.max_upload_bytes, max_files=1)
        files = [p for p in parts if p.name == "file"]
        if not files:
            raise ServeError(422, "missing_file", "no multipart field 'file': send the image as "
                             "file=@face.jpg (fields received: " + (", ".join(repr(p.name) for p in parts) or "none") + ")")
        image = await service.decode(files[0].data)
        [(p_fake, logit)] = await service.classify([image])
        return service.record(p_fake, logit, started)

    @app.post("/v1/detect/batch", summary="Real or fake for several images (multipart fields 'files')",
              openapi_extra=_BATCH_SCHEMA)
    async def detect_batch(request: Request):
        started = time.perf_counter()
        service.require_engine()
        parts = await uploads.read_parts(request, max_file_bytes=options.max_upload_bytes,
                                         max_files=options.max_batch_files)
        files = [p for p in parts if p.name in ("files", "file")]
        if not files:
            raise ServeError(422, "missing_files", "no multipart field 'files': send one or more images as "
                             "files=@a.jpg files=@b.png")
        decoded = await asyncio.gather(*(service.decode(p.data) for p in files), return_exceptions=True)
        good = [i for i, d in enumerate(decoded) if not isinstance(d, BaseException)]
        for d in decoded:
            if isinstance(d, BaseException) and not isinstance(d, engine_lib.RequestRejected):
                raise d
        scores = await service.classify([decoded[i] for i in good]) if good else []
        by_index = dict(zip(good, scores))
        results = []
        for i, part in enumerate(files):
            if i in by_index:
                results.append({"filename": part.filename, **service.record(*by_index[i], started), "error": None})
            else:
                err = decoded[i]
                results.append({"filename": part.filename, "label": None, "p_fake": None,
                                "error": {"status": err.status, "code": err.code, "message": err.message}})
        return {"results": results, "latency_ms": round((time.perf_counter() - started) * 1000.0, 3)}

    @app.post("/v1/generate", summary="A face with the given attributes (PNG, or JSON with a base64 PNG)",
              responses={200: {"content": {"image/png": {}, "application/json": {}}}})
    async def generate(body: GenerateRequest, request: Request):
        started = time.perf_counter()
        engine = service.require_engine()
        if engine.generator is None:
            raise ServeError(404, "no_generator",
                             "no face generator is loaded: fit one with `jaxface fit-cgmm "
                             "--config=configs/generate/synthfaces_tiny.py --workdir=W` on a trained attribute "
                             "classifier, then restart with `jaxface serve --generator_workdir=W`")
        steps = engine.generate_steps if body.steps is None else body.steps
        if steps > options.max_generate_steps:
            raise ServeError(422, "too_many_steps", f"steps={steps} is above this server's cap of "
                             f"{options.max_generate_steps} (--max_generate_steps)")
        engine.generator.resolve(body.attributes)  # unknown names: 422 before queueing
        if service.generate_pending >= options.max_generate_pending:
            raise ServeError(503, "generator_busy", f"{service.generate_pending} generations are running or "
                             "waiting; retry shortly", {"Retry-After": "5"})
        service.generate_pending += 1
        try:
            face = await asyncio.get_running_loop().run_in_executor(
                service.generate_pool, lambda: engine.generator.generate(
                    body.attributes, seed=body.seed, steps=steps, mode=body.mode, model=body.model,
                    strength=body.strength))
        finally:
            service.generate_pending -= 1
        latency_ms = round((time.perf_counter() - started) * 1000.0, 3)
        info = {"attributes": face.attributes, "attribute_probs": face.attribute_probs, "detected": face.detected,
                "hit_rate": face.hit_rate, "seed": face.seed, "steps": face.steps, "mode": face.mode,
                "model": face.model, "strength": face.strength, "generator": engine.generator.name,
                "latency_ms": latency_ms}
        accept = request.headers.get("accept", "")
        if "image/png" in accept and "application/json" not in accept:
            return Response(face.png, media_type="image/png", headers={
                "X-Attribute-Probs": json.dumps(face.attribute_probs), "X-Hit-Rate": str(face.hit_rate),
                "X-Latency-Ms": str(latency_ms)})
        return {"image_png_base64": base64.b64encode(face.png).decode("ascii"), **info}

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus():
        service.metrics.queue_depth.set(service.batcher.depth)
        body, content_type = service.metrics.exposition()
        return Response(body, media_type=content_type)

    return app
