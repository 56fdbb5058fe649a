"""`jaxface serve` as a user runs it: a subprocess on a free loopback port, driven by headless Chromium,
loaded by 32 concurrent clients, fed an endless upload, and stopped with SIGTERM mid-request."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from jaxface.bench.serve_bench import ServerProcess
from jaxface.serve import loadgen
from serve_test_utils import REPO, detector_workdir, encode, face_images

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """The server's working directory and temporary directory (both must stay empty)."""
    root = tmp_path_factory.mktemp("serve_sandbox")
    (root / "cwd").mkdir()
    (root / "tmp").mkdir()
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory, sandbox, cgmm_workdir):
    gen_dir = cgmm_workdir[0]
    env = dict(os.environ, TMPDIR=str(sandbox / "tmp"))
    proc = ServerProcess([f"--workdir={detector_workdir(tmp_path_factory)}", f"--generator_workdir={gen_dir}",
                          "--min_side=32", "--max_upload_mb=1"], cwd=sandbox / "cwd", env=env)
    yield proc
    proc.stop()


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_the_page_in_a_real_browser(server, tmp_path, shared_data_or_synthetic):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no chromium on PATH (`make browser` installs Debian's chromium where apt-get can run)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[serve]')")
    upload = shared_data_or_synthetic(tmp_path)
    screenshot = tmp_path / "serve_page.png"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://{server.host}:{server.port}/")
            page.wait_for_selector("#generate-form:not([hidden])", timeout=30_000)
            assert "trained on the embedded synthetic faces" in page.inner_text("#trained-note")
            page.set_input_files("#file-input", str(upload))
            page.wait_for_selector("#verdict.real, #verdict.fake, #verdict.uncertain", timeout=30_000)
            assert page.inner_text("#verdict") in ("Real", "Fake", "Uncertain")
            assert "confident" in page.inner_text("#confidence-text") or "threshold" in page.inner_text("#confidence-text")
            assert page.eval_on_selector("#bar-threshold", "e => e.style.left") in ("50%", "50.0%")
            # The schema's groups: a softmax group is radio buttons (one choice), binary ones checkboxes.
            assert page.locator("input[type=radio][name='group-hair']").count() >= 2
            page.check("input[type=radio][name='group-hair'][value='Black Hair']")
            page.check("input[type=checkbox][value='Male']")
            page.click("#generate-button")
            page.wait_for_function("document.getElementById('generated').src.startsWith('data:image/png')",
                                   timeout=60_000)
            rows = page.locator("#probabilities tr")
            assert rows.count() == 2 and "Black Hair" in page.inner_text("#probabilities")
            assert "Hit rate" in page.inner_text("#generate-summary")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000


@pytest.fixture
def shared_data_or_synthetic():
    """A real JPEG face from ../shared/data/realfake when present, else a synthetic one."""
    from conftest import SHARED_DATA

    def pick(tmp_path):
        real = sorted((SHARED_DATA / "realfake" / "real").glob("*.jpg"))[:1] if SHARED_DATA.is_dir() else []
        if real:
            return real[0]
        path = tmp_path / "face.png"
        path.write_bytes(encode(face_images(1, resolution=128)[0]))
        return path

    return pick


def test_load_32_clients_500_requests_all_answered_once_and_memory_flat(server, sandbox):
    images = [encode(f) for f in face_images(4, resolution=96)]
    requests = []
    for data in images:
        body, ctype = loadgen.multipart("file", "face.png", data, "image/png")
        requests.append(loadgen.Request("POST", "/v1/detect", body, ctype))
    expected = [r.json()["p_fake"] for r in loadgen.run_sync(server.host, server.port, requests, 1)[0]]
    assert len(set(expected)) == 4  # distinct answers, so a mixed-up reply would show
    before_files = (set(os.listdir(sandbox / "cwd")), set(os.listdir(sandbox / "tmp")))
    loadgen.run_sync(server.host, server.port, requests * 25, 32)  # warm every batch bucket
    rss_before = server.rss_bytes()
    order = [requests[i % 4] for i in range(500)]
    responses, _ = loadgen.run_sync(server.host, server.port, order, 32, deadline_s=120)  # bounded in time
    assert len(responses) == 500 and all(r is not None and r.status == 200 for r in responses)
    for i, r in enumerate(responses):  # each reply is for its own image
        assert r.json()["p_fake"] == pytest.approx(expected[i % 4], abs=1e-5)
    rss_after = server.rss_bytes()
    assert rss_after <= 1.10 * rss_before, (rss_before, rss_after)
    assert (set(os.listdir(sandbox / "cwd")), set(os.listdir(sandbox / "tmp"))) == before_files
    metrics = loadgen.get(server.host, server.port, "/metrics").body.decode()
    batch_sum = next(float(line.split()[-1]) for line in metrics.splitlines()
                     if line.startswith("jaxface_detect_batch_size_sum"))
    batch_count = next(float(line.split()[-1]) for line in metrics.splitlines()
                       if line.startswith("jaxface_detect_batch_size_count"))
    assert batch_sum / batch_count > 1.5  # concurrent requests were batched together


def test_an_oversized_upload_is_refused_while_it_streams(server):
    def raw_request(head: bytes, body_chunks) -> bytes:
        with socket.create_connection((server.host, server.port), timeout=20) as sock:
            sock.sendall(head)
            try:
                for chunk in body_chunks:
                    sock.sendall(chunk)
            except OSError:
                pass  # the server answered and closed before we finished: that is the point
            reply = b""
            while True:  # a 413 closes the connection: read to the end
                data = sock.recv(65536)
                if not data:
                    return reply
                reply += data

    boundary = "b0undary"
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()
    head = (f"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    chunk = b"\xff" * 65536
    # A body that never ends (no final chunk), whose file part passes the 1 MB limit by one byte with
    # the last bytes sent: only a server that checks while reading can answer. (Sending more than it
    # reads would make its close a reset that can swallow the reply.)
    frames = [f"{len(part):x}\r\n".encode() + part + b"\r\n"]
    frames += [f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"] * 16 + [b"1\r\n\xff\r\n"]
    reply = raw_request(head, frames)
    assert reply.startswith(b"HTTP/1.1 413") and b"larger than the limit of 1 MB" in reply
    declared = (f"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
                "Content-Length: 50000000\r\n\r\n").encode()
    reply = raw_request(declared, [])
    assert reply.startswith(b"HTTP/1.1 413") and b"the limit is 1 MB per file" in reply
    assert loadgen.get(server.host, server.port, "/healthz").status == 200


def test_serve_command_mistakes_are_one_line(server, tmp_path_factory, cgmm_workdir):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    missing = subprocess.run([sys.executable, "-m", "jaxface", "serve"], cwd=REPO, capture_output=True, text=True,
                             timeout=300, env=env)
    assert missing.returncode == 2 and missing.stderr.startswith("error: --workdir is required")
    assert "runs/demo/detect" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    from jaxface.serve import engine, server as server_lib
    from jaxface.serve.options import ServeOptionError

    with pytest.raises(engine.EngineLoadError, match="not a deepfake detector.*--generator_workdir"):
        server_lib.serve_command(cgmm_workdir[0], port=0)
    with pytest.raises(ServeOptionError, match=f"port {server.port} on 127.0.0.1 is already in use"):
        server_lib.serve_command(detector_workdir(tmp_path_factory), port=server.port)
    with pytest.raises(ServeOptionError, match="holds no fitted cGMM"):
        server_lib.serve_command(detector_workdir(tmp_path_factory), port=0,
                                 generator_workdir=detector_workdir(tmp_path_factory))


def test_a_model_that_fails_to_load_stops_the_command_with_its_reason(tmp_path, tmp_path_factory):
    from jaxface.serve import server as server_lib
    from jaxface.serve.options import ServeOptionError

    # Passes the quick checks (a detector config, a checkpoint directory) but the checkpoint is empty:
    # the failure comes from the background load, and the command must still end with its reason.
    shutil.copy(detector_workdir(tmp_path_factory) / "config.json", tmp_path / "config.json")
    (tmp_path / "checkpoints" / "5").mkdir(parents=True)
    with pytest.raises(ServeOptionError, match="could not load the models: every checkpoint .* is unreadable"):
        server_lib.serve_command(tmp_path, port=0)


def test_sigterm_finishes_the_request_in_flight_and_exits_0(server):
    body, ctype = loadgen.multipart("file", "face.png", encode(face_images(1, resolution=96)[0]), "image/png")
    head = (f"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection((server.host, server.port), timeout=30) as sock:
        sock.sendall(head + body[: len(body) // 2])  # a request in flight: half its body sent
        time.sleep(0.3)
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(OSError):  # no longer accepting new connections
            socket.create_connection((server.host, server.port), timeout=2).close()
        sock.sendall(body[len(body) // 2:])
        reply = b""
        while b"}" not in reply:
            data = sock.recv(65536)
            if not data:
                break
            reply += data
    assert reply.startswith(b"HTTP/1.1 200") and b'"label"' in reply
    assert server.proc.wait(60) == 0
    assert "Traceback" not in "".join(server.output)
