"""`jaxface serve` through FastAPI's TestClient: every route, every refused input, micro-batching."""
import asyncio
import base64
import concurrent.futures
import io
import json
import logging
import os
import struct
import tempfile
import threading
import zlib

import jax
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from jaxface import files
from jaxface.evaluate import detection
from jaxface.serve import app as app_lib
from jaxface.serve import batcher as batcher_lib
from jaxface.serve import engine as engine_lib
from jaxface.serve.options import ServeOptionError, ServeOptions
from serve_test_utils import detector_workdir, encode, face_images

pytestmark = pytest.mark.slow  # builds the shared classifier and cGMM, then a server engine

OPTIONS = ServeOptions(min_side=32, max_generate_steps=6)


@pytest.fixture(scope="module")
def engine(tmp_path_factory, cgmm_workdir):
    """Spectrum detector (32 px) + the tiny classifier's fitted cGMM, loaded and compiled once."""
    gen_dir = cgmm_workdir[0]
    return engine_lib.load_engine(detector_workdir(tmp_path_factory), gen_dir, OPTIONS)


def started(app):
    client = TestClient(app)
    client.__enter__()
    assert app.state.service.ready.wait(120)
    return client


@pytest.fixture(scope="module")
def client(engine):
    app = app_lib.create_app(lambda: engine, OPTIONS)
    c = started(app)
    yield c
    c.__exit__(None, None, None)


@pytest.fixture(scope="module")
def faces():
    return face_images(4, resolution=96)


def detect(client, data, name="face.png", ctype="image/png"):
    return client.post("/v1/detect", files={"file": (name, data, ctype)})


def assert_error(response, status, *fragments):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "message"}
    for fragment in fragments:
        assert fragment in body["message"], body["message"]
    return body


def test_healthz_is_503_until_the_models_are_loaded_and_compiled(engine):
    gate = threading.Event()
    app = app_lib.create_app(lambda: (gate.wait(60), engine)[1], OPTIONS)
    with TestClient(app) as c:
        health = c.get("/healthz")
        assert health.status_code == 503 and health.json()["status"] == "loading"
        assert_error(detect(c, encode(face_images(1)[0])), 503, "still loading")
        gate.set()
        assert app.state.service.ready.wait(30)
        assert c.get("/healthz").json() == {"status": "ready"}


def test_a_failed_load_is_reported_on_healthz():
    def load():
        raise engine_lib.EngineLoadError("no checkpoint in /nowhere")

    app = app_lib.create_app(load, OPTIONS)
    with TestClient(app) as c:
        assert app.state.service.ready.wait(30)
        health = c.get("/healthz")
        assert health.status_code == 503 and health.json() == {"status": "failed", "error": "no checkpoint in /nowhere"}
        assert_error(c.get("/v1/model"), 503, "failed to load", "/nowhere")


def test_detect_answers_with_the_calibrated_rule_and_the_same_answer_twice(client, engine, faces):
    first = detect(client, encode(faces[0]))
    assert first.status_code == 200, first.text
    record = first.json()
    assert set(record) == {"label", "p_fake", "threshold", "model", "checkpoint_step", "latency_ms"}
    assert record["model"] == "spectrum" and record["checkpoint_step"] == engine.detector.checkpoint_step
    assert record["threshold"] == 0.5 and record["label"] == ("fake" if record["p_fake"] >= 0.5 else "real")
    assert record["latency_ms"] > 0
    again = detect(client, encode(faces[0])).json()
    assert again["p_fake"] == record["p_fake"] and again["label"] == record["label"]
    # The score is the model's on the pipeline's centre-crop + resize, as `jaxface predict` computes it.
    expected = engine.detector.p_fake([engine_lib.prepare_upload(encode(faces[0]), engine.detector.preparer, max_pixels=10**6, min_side=1)])
    assert record["p_fake"] == pytest.approx(expected[0][0], abs=1e-6)


def test_detect_accepts_jpeg_png_webp_and_bmp(client, faces):
    scores = {}
    for fmt, ctype in (("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp"), ("BMP", "image/bmp")):
        r = detect(client, encode(faces[1], fmt, **({"quality": 95} if fmt != "BMP" else {})), f"x.{fmt}", ctype)
        assert r.status_code == 200, (fmt, r.text)
        scores[fmt] = r.json()["p_fake"]
    assert scores["PNG"] == scores["BMP"]  # lossless: identical pixels
    assert_error(detect(client, encode(faces[1], "GIF"), "x.gif", "image/gif"), 415, "GIF", "JPEG, PNG, WebP or BMP")


def test_real_photographs_when_the_shared_data_is_present(client, shared_data):
    real = sorted((shared_data / "realfake" / "real").glob("*.jpg"))[:2]
    fake = sorted((shared_data / "realfake" / "fake").glob("*.jpg"))[:2]
    if not real or not fake:
        pytest.skip("../shared/data/realfake has no real/ and fake/ JPEGs")
    for path in real + fake:
        r = detect(client, path.read_bytes(), path.name, "image/jpeg")
        assert r.status_code == 200 and r.json()["label"] in ("real", "fake")


def test_batch_answers_every_file_and_reports_unreadable_ones(client, faces):
    singles = [detect(client, encode(f)).json()["p_fake"] for f in faces[:3]]
    upload = [("files", (f"f{i}.png", encode(f), "image/png")) for i, f in enumerate(faces[:3])]
    upload.insert(1, ("files", ("notes.txt", b"not an image at all", "text/plain")))
    r = client.post("/v1/detect/batch", files=upload)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["filename"] for x in results] == ["f0.png", "notes.txt", "f1.png", "f2.png"]
    assert results[1]["label"] is None and results[1]["error"]["status"] == 415
    good = [results[0], results[2], results[3]]
    assert all(x["error"] is None and x["label"] in ("real", "fake") for x in good)
    np.testing.assert_allclose([x["p_fake"] for x in good], singles, atol=1e-5)  # batch of 3 vs batches of 1
    assert_error(client.post("/v1/detect/batch", files={"other": ("a.png", encode(faces[0]), "image/png")}),
                 422, "'files'")


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with a tiny (truncated) pixel stream."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_every_bad_input_is_a_clear_error_and_the_server_keeps_serving(engine, faces):
    options = ServeOptions(min_side=48, max_upload_bytes=200_000, max_generate_steps=6)
    no_generator = engine_lib.Engine(engine.detector, None, 0, engine.runtime)
    app = app_lib.create_app(lambda: no_generator, options)
    c = started(app)
    try:
        good = encode(faces[0])
        assert_error(detect(c, os.urandom(300_000), "big.jpg", "image/jpeg"), 413, "0.191 MB")
        assert_error(detect(c, b"%PDF-1.4 this is a document", "doc.pdf", "application/pdf"), 415, "not a recognised image")
        jpeg = encode(faces[0], "JPEG")
        assert_error(detect(c, jpeg[: len(jpeg) // 2], "cut.jpg", "image/jpeg"), 400, "cannot decode the JPEG", "truncated")
        assert_error(detect(c, _png_header_only(30000, 30000)), 400, "900000000 pixels", "decompression bomb")
        assert_error(detect(c, encode(face_images(1, resolution=40)[0])), 400, "40x40", "at least 48 pixels")
        assert_error(detect(c, b""), 400, "empty")
        assert_error(c.post("/v1/detect", files={"image": ("a.png", good, "image/png")}), 422, "no multipart field 'file'")
        assert_error(c.post("/v1/detect", content=good, headers={"content-type": "image/png"}), 415, "multipart/form-data")
        assert_error(c.post("/v1/generate", json={"attributes": ["Male"]}), 404, "jaxface fit-cgmm")
        assert_error(c.get("/v1/nothing"), 404, "/v1/nothing")
        r = detect(c, good)
        assert r.status_code == 200 and r.json()["label"] in ("real", "fake")
    finally:
        c.__exit__(None, None, None)


def test_generate_request_mistakes_are_422_with_the_valid_choices(client):
    unknown = assert_error(client.post("/v1/generate", json={"attributes": ["Mael", "Smiling"]}), 422,
                           "unknown attribute 'Mael'", "closest: Male")
    assert "valid names:" in unknown["message"]
    assert_error(client.post("/v1/generate", json={"seed": 3}), 422, "attributes: Field required")
    assert_error(client.post("/v1/generate", json={"attributes": []}), 422, "attributes")
    assert_error(client.post("/v1/generate", json={"attributes": ["Male"], "mode": "median"}), 422, "mode", "'mean'")
    assert_error(client.post("/v1/generate", json={"attributes": ["Male"], "steps": 7}), 422, "cap of 6")
    assert_error(client.post("/v1/generate", json={"attributes": ["Male"], "atributes": 1}), 422, "atributes")
    assert_error(client.post("/v1/generate", json={"attributes": ["Black Hair", "Blond Hair"]}), 422,
                 "mutually exclusive")


def test_generate_returns_json_or_png_and_the_same_seed_gives_the_same_face(client, engine):
    body = {"attributes": ["male", "Black Hair"], "seed": 5, "steps": 3, "mode": "mean", "model": "cgmm"}
    r = client.post("/v1/generate", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["attributes"] == ["Male", "Black Hair"] and out["seed"] == 5 and out["steps"] == 3
    assert set(out["attribute_probs"]) == {"Male", "Black Hair"}
    assert all(0 <= p <= 1 for p in out["attribute_probs"].values())
    assert out["hit_rate"] == np.mean(list(out["detected"].values()))
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(out["image_png_base64"]))))
    assert image.shape == (engine.generator.input_size,) * 2 + (3,)
    png = client.post("/v1/generate", json=body, headers={"Accept": "image/png"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png.content))), image)
    assert set(json.loads(png.headers["x-attribute-probs"])) == {"Male", "Black Hair"}
    other = client.post("/v1/generate", json=dict(body, seed=6)).json()
    assert other["image_png_base64"] != out["image_png_base64"]


def test_model_endpoint_describes_both_models(client, engine):
    info = client.get("/v1/model").json()
    det = info["detector"]
    assert det["name"] == "spectrum" and det["input_size"] == 32 and det["threshold"] == 0.5
    assert det["batch_buckets"] == [8, 16, 32] and "calibration" in det["threshold_source"]
    assert "synthetic" in det["trained_on"]
    gen = info["generator"]
    groups = {g["name"]: g for g in gen["schema"]["groups"]}
    assert groups["hair"]["kind"] == "softmax" and "Black Hair" in groups["hair"]["attributes"]
    assert groups["Male"]["kind"] == "binary"
    assert "Gray Hair" in gen["schema"]["excluded"] and "Gray Hair" not in groups["hair"]["attributes"]
    assert gen["max_steps"] == 6 and gen["default_steps"] == 3 and set(gen["models"]) == {"cgmm", "joint"}
    assert info["runtime"]["backend"] == "cpu" and len(info["runtime"]["devices"]) == jax.device_count()
    assert info["limits"]["accepted_formats"] == ["BMP", "JPEG", "PNG", "WebP"]
    assert "/v1/detect" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200


def test_metrics_count_requests_by_route_and_status(client, faces):
    detect(client, encode(faces[0]))
    detect(client, b"junk")
    text = client.get("/metrics").text
    assert 'jaxface_requests_total{method="POST",route="/v1/detect",status="200"}' in text
    assert 'jaxface_requests_total{method="POST",route="/v1/detect",status="415"}' in text
    for name in ("jaxface_request_duration_seconds_bucket", "jaxface_detect_batch_size_bucket",
                 "jaxface_detect_queue_depth", "jaxface_ready 1.0"):
        assert name in text


def test_uncertain_band_around_the_calibrated_threshold(engine, faces, tmp_path_factory):
    workdir = detector_workdir(tmp_path_factory)
    image = engine_lib.prepare_upload(encode(faces[2]), engine.detector.preparer, max_pixels=10**6, min_side=1)
    p, logit = engine.detector.p_fake([image])[0]
    cal = workdir / detection.CALIBRATION_FILE
    files.write_json(cal, {"threshold_logit": logit - 1e-3, "threshold": p, "method": "balanced_accuracy",
                           "step": engine.detector.checkpoint_step})
    try:
        calibrated = engine_lib.Engine(engine_lib.Detector(workdir, OPTIONS.buckets), None, 0, engine.runtime)
        calibrated.detector.warm_up()
    finally:
        cal.unlink()
    assert "calibrated" in calibrated.detector.threshold_source
    for band, label in ((0.0, "fake"), (0.05, "uncertain")):
        c = started(app_lib.create_app(lambda: calibrated, ServeOptions(min_side=32, uncertain_band=band)))
        try:
            r = detect(c, encode(faces[2])).json()
            assert r["label"] == label and r["threshold"] == pytest.approx(p, abs=1e-3)
        finally:
            c.__exit__(None, None, None)


def test_requests_never_compile_write_files_or_log_image_content(client, faces, tmp_path, monkeypatch, caplog):
    compiles = []
    watching = False
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, duration, **kw: compiles.append(event) if watching and "compile" in event else None)
    temp_dir = tmp_path / "tmp"
    temp_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp_dir))

    def no_temp_files(*args, **kwargs):
        raise AssertionError("an upload touched a temporary file")

    for name in ("TemporaryFile", "NamedTemporaryFile", "SpooledTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, no_temp_files)
    before_cwd, before_tmp = set(os.listdir(".")), set(os.listdir(temp_dir))
    big = encode(np.asarray(Image.fromarray(faces[0]).resize((1100, 1100))), "BMP")  # 3.6 MB: Starlette would spool it
    marker = b"SECRET-IMAGE-CONTENT-1234"
    watching = True
    with caplog.at_level(logging.DEBUG):
        for n in (1, 5, 9, 20):
            upload = [("files", (f"{i}.png", encode(faces[i % 4]), "image/png")) for i in range(n)]
            assert client.post("/v1/detect/batch", files=upload).status_code == 200
        assert detect(client, big, "big.bmp", "image/bmp").status_code == 200
        bad = detect(client, marker + b"\0" * 100, "x.jpg", "image/jpeg")
    watching = False
    assert bad.status_code == 415 and marker.decode() not in bad.text
    assert marker.decode() not in caplog.text
    assert compiles == []
    assert set(os.listdir(".")) == before_cwd and set(os.listdir(temp_dir)) == before_tmp


def test_micro_batcher_groups_concurrent_items_and_refuses_when_full():
    calls = []

    def run(items):
        calls.append(list(items))
        return [x * 10 for x in items]

    async def scenario():
        pool = concurrent.futures.ThreadPoolExecutor(1)
        b = batcher_lib.MicroBatcher(run, max_batch=4, max_wait_s=0.05, max_queue=12, executor=pool)
        b.start()
        results = await asyncio.gather(*(b.submit(i) for i in range(10)))
        assert results == [i * 10 for i in range(10)]  # each caller gets its own item's result
        with pytest.raises(batcher_lib.QueueFull):
            await b.submit_many(list(range(13)))
        await b.stop()
        pool.shutdown()

    asyncio.run(scenario())
    assert [len(c) for c in calls] == [4, 4, 2]
    assert sorted(x for c in calls for x in c) == list(range(10))


def test_options_are_validated():
    with pytest.raises(ServeOptionError, match="--max_batch must be an integer >= 1"):
        ServeOptions(max_batch=0).validate()
    with pytest.raises(ServeOptionError, match="uncertain_band"):
        ServeOptions(uncertain_band=0.7).validate()
    assert ServeOptions(max_batch=32).buckets(8) == (8, 16, 32)
    assert ServeOptions(max_batch=1).buckets(1) == (1,)
    assert ServeOptions(max_batch=20).buckets(1) == (1, 4, 16, 20)
