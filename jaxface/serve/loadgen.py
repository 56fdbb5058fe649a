"""A small keep-alive HTTP/1.1 client on asyncio streams, for the load test and `jaxface bench --suite=serve`.

Much lighter per request than a general client (no header objects, no redirects, no TLS), so on a
2-core machine the clients take little CPU from the server being measured. Responses must carry a
Content-Length (uvicorn's JSON and PNG responses do).
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from typing import Sequence


def multipart(field: str, filename: str, data: bytes, content_type: str) -> tuple[bytes, str]:
    """(body, Content-Type header) of a multipart/form-data body with one file."""
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@dataclasses.dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes = b""
    content_type: str | None = None

    def encode(self, host: str, port: int) -> bytes:
        head = f"{self.method} {self.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        if self.content_type:
            head += f"Content-Type: {self.content_type}\r\n"
        head += f"Content-Length: {len(self.body)}\r\n\r\n"
        return head.encode() + self.body


@dataclasses.dataclass
class Response:
    status: int
    headers: dict
    body: bytes
    seconds: float

    def json(self):
        return json.loads(self.body)


class Connection:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def _open(self):
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self):
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
            self.reader = self.writer = None

    async def send(self, raw: bytes) -> Response:
        if self.writer is None:
            await self._open()
        start = time.perf_counter()
        self.writer.write(raw)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection without answering")
        status = int(status_line.split()[1])
        headers = {}
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            key, _, value = line.decode("latin-1").partition(":")
            headers[key.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        seconds = time.perf_counter() - start
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return Response(status, headers, body, seconds)


async def run(host: str, port: int, requests: Sequence[Request], concurrency: int,
              deadline_s: float | None = None) -> tuple[list[Response], float]:
    """Sends every request once over `concurrency` keep-alive connections; -> (responses in request
    order, wall seconds). A request whose connection fails is retried once on a new connection. With
    `deadline_s` the run is bounded in time: past it, TimeoutError says how many were answered."""
    raw = [r.encode(host, port) for r in requests]
    responses: list[Response | None] = [None] * len(raw)
    next_index = 0

    async def client():
        nonlocal next_index
        conn = Connection(host, port)
        try:
            while next_index < len(raw):
                i = next_index
                next_index += 1
                try:
                    responses[i] = await conn.send(raw[i])
                except (ConnectionError, asyncio.IncompleteReadError):
                    await conn.close()
                    responses[i] = await conn.send(raw[i])
        finally:
            await conn.close()

    start = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.gather(*(client() for _ in range(max(1, int(concurrency))))), deadline_s)
    except asyncio.TimeoutError:
        answered = sum(r is not None for r in responses)
        raise TimeoutError(f"{answered} of {len(raw)} requests answered within {deadline_s:g} s") from None
    return responses, time.perf_counter() - start


def run_sync(host: str, port: int, requests: Sequence[Request], concurrency: int,
             deadline_s: float | None = None) -> tuple[list[Response], float]:
    return asyncio.run(run(host, port, requests, concurrency, deadline_s))


def get(host: str, port: int, path: str) -> Response:
    return run_sync(host, port, [Request("GET", path)], 1)[0][0]
