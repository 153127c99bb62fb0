"""The HTTP/1.1 front door against hostile clients (review "Front door hardening"), on raw sockets and a real gateway
over the embedded Triton: each test starts its own gateway with the connection layer's limits made small.

After every hostile case the gateway must still serve a valid request (a KServe infer through to Triton).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.exceptions
import numpy as np
import pytest

from toolkit.gateway import h1_limits
from toolkit.gateway.core import GatewayOptions
from toolkit.gateway.h1 import MAX_PIPELINED, H1Server
from toolkit.gateway.models import RepositoryModels
from toolkit.gateway.server import Gateway, GatewayThread
from toolkit.server import EmbeddedTriton

MiB = 1024 * 1024
LIMIT = 16 * 1024
X = np.random.default_rng(11).random((3, 64), dtype=np.float32)
INFER = json.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": [3, 64], "data": X.ravel().tolist()}]})
INFER_REQ = (
    f"POST /v2/models/digits_mlp/infer HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
    f"Content-Length: {len(INFER)}\r\n\r\n{INFER}"
).encode()


_OPTION = {"request_timeout_s": "request_read_timeout_s"}  # H1Server's name -> GatewayOptions' name


@contextlib.contextmanager
def _gateway(
    triton: EmbeddedTriton, repo: Path, max_body: int = LIMIT, **h1: Any
) -> Iterator[tuple[str, GatewayThread]]:
    """A gateway whose HTTP servers get the limits ``h1`` (H1Server's parameter names, set through GatewayOptions);
    yields its HTTP address and its runner."""
    opts = GatewayOptions(http_port=0, max_body_bytes=max_body, **{_OPTION.get(k, k): v for k, v in h1.items()})
    runner = GatewayThread(Gateway(opts, triton.endpoint, models=RepositoryModels(triton.endpoint, repo)))
    addr = runner.start().http
    try:
        _serves(addr)  # loads digits_mlp
        yield addr, runner
    finally:
        runner.stop()


def _on_loop(runner: GatewayThread, fn: Any) -> Any:
    """``fn(h1_server)`` on the gateway's event loop (its state is not thread-safe)."""

    async def call() -> Any:
        return fn(runner.gateway._servers[0][0])

    assert runner.gateway.loop is not None
    return asyncio.run_coroutine_threadsafe(call(), runner.gateway.loop).result(10)


def _wait(runner: GatewayThread, cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not _on_loop(runner, cond):
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.02)


def _serves(addr: str) -> None:
    """A valid request (an infer through to Triton) is answered 200 on a fresh connection."""
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        c.request("POST", "/v2/models/digits_mlp/infer", INFER, {"Content-Type": "application/json"})
        r = c.getresponse()
        body = r.read()
        assert r.status == 200 and b'"outputs"' in body, (r.status, body[:300])
    finally:
        c.close()


def _connect(addr: str, source: str | None = None, rcvbuf: int | None = None) -> socket.socket:
    host, port = addr.rsplit(":", 1)
    s = socket.socket()
    if rcvbuf is not None:  # before connect: fixed small buffers, so the kernel holds little of the traffic
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, rcvbuf)
    if source is not None:
        s.bind((source, 0))
    s.settimeout(10)
    s.connect((host, int(port)))
    return s


def _read_answer(s: socket.socket, buf: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One whole answer (status, lower-case headers, body by Content-Length) from ``s``; ``buf`` keeps the rest."""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError(f"closed before an answer: {bytes(buf[:200])!r}")
        buf += chunk
    head, _, _ = bytes(buf).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    n = int(headers["content-length"])
    start = len(head) + 4
    while len(buf) < start + n:
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError("closed inside an answer's body")
        buf += chunk
    body = bytes(buf[start : start + n])
    del buf[: start + n]
    return int(lines[0].split()[1]), headers, body


def _closed(s: socket.socket, buf: bytearray, timeout: float = 10.0) -> bool:
    """True when the server has closed (EOF or reset) with nothing more to read."""
    s.settimeout(timeout)
    try:
        while chunk := s.recv(65536):
            buf += chunk
    except ConnectionResetError:
        pass
    return not buf


def _request_on(s: socket.socket, path: str = "/v2/health/live") -> tuple[int, dict[str, str], bytes]:
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    return _read_answer(s, bytearray())


# -- 1. backpressure ---------------------------------------------------------------------------------------------------
def test_pipelined_requests_never_read_cost_bounded_memory(triton: EmbeddedTriton, example_repo: Path) -> None:
    """A client pipelines thousands of requests and reads nothing: reading stops while the answers do not drain,
    so the gateway holds at most its write buffer's high-water mark plus one answer; read afterwards, every answer
    comes, in order (each odd request names its index in its 404)."""
    n, pad = 4000, "p" * 6000  # each 404 echoes its path: 6 kB answers
    reqs = [
        b"GET /metrics HTTP/1.1\r\nHost: h\r\n\r\n"
        if i % 2 == 0
        else f"GET /nope/{i}/{pad} HTTP/1.1\r\nHost: h\r\n\r\n".encode()
        for i in range(n)
    ]
    assert n // 2 * len(pad) > 8 * MiB  # what the gateway would hold if it read on (the client's window is 64 kB)
    with _gateway(triton, example_repo) as (addr, runner):

        def held(srv: H1Server) -> tuple[int, int]:
            conns = [c for c in srv.connections if c.transport is not None]
            pending = max((len(c._pending) for c in conns), default=0)
            return sum(c.transport.get_write_buffer_size() for c in conns), pending

        s = _connect(addr, rcvbuf=64 * 1024)
        sent = [0]

        def send() -> None:
            with contextlib.suppress(OSError):
                for i in range(0, n, 100):
                    s.sendall(b"".join(reqs[i : i + 100]))
                    sent[0] = i + 100

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        peak_bytes = peak_pending = 0
        last, still = -1, time.monotonic()
        while time.monotonic() - still < 1.5:  # until the sender has been stuck (or done) for 1.5 s
            b, p = _on_loop(runner, held)
            peak_bytes, peak_pending = max(peak_bytes, b), max(peak_pending, p)
            if sent[0] != last:
                last, still = sent[0], time.monotonic()
            time.sleep(0.05)
        assert sent[0] < n, "the gateway read every request although no answer was read"
        # 64 kB (the transport's high-water mark) plus one answer; 16 requests plus what one 512-byte slice holds
        assert peak_bytes < 1 * MiB and peak_pending <= MAX_PIPELINED + 512 // 38, (peak_bytes, peak_pending)
        print(f"held at most {peak_bytes} bytes of answers and {peak_pending} parsed requests")
        buf = bytearray()
        for i in range(n):
            status, _, body = _read_answer(s, buf)
            if i % 2 == 0:
                assert status == 200 and b"tritonctl_gateway" in body, (i, status, body[:200])
            else:
                assert status == 404 and f"/nope/{i}/pp".encode() in body, (i, status, body[:200])
        sender.join(10)
        assert sent[0] == n
        s.close()
        _serves(addr)


# -- 2. deadlines, not idle timers -------------------------------------------------------------------------------------
def _trickle(s: socket.socket, data: bytes, every: float, for_s: float) -> tuple[float, bytes]:
    """Send ``data`` a byte at a time until the server answers or closes; (seconds from the first byte, answer)."""
    t0 = time.monotonic()
    for i in range(len(data)):
        if time.monotonic() - t0 > for_s:
            break
        try:
            s.sendall(data[i : i + 1])
        except OSError:
            break
        if select.select([s], [], [], every)[0]:
            break
    took = time.monotonic() - t0
    buf = bytearray()
    _closed(s, buf, timeout=for_s)
    return took, bytes(buf)


def test_slow_head_and_slow_body_hit_a_deadline_from_the_first_byte(triton: EmbeddedTriton, example_repo: Path) -> None:
    """One byte every 0.25 s keeps arriving, yet the head is cut at its deadline (1 s from its first byte) and the
    whole request at its own (2 s): 408, then close. Bare CRLFs (which HTTP allows between requests) do not keep an
    idle keep-alive connection open either: it closes its keep-alive time after its last answer."""
    limits = {"head_timeout_s": 1.0, "request_timeout_s": 2.0, "keepalive_s": 1.0}
    with _gateway(triton, example_repo, **limits) as (addr, _):
        head = b"GET /v2/health/ready HTTP/1.1\r\nHost: h\r\n" + b"X-Slow: " + b"a" * 200 + b"\r\n\r\n"
        with _connect(addr) as s:
            took, got = _trickle(s, head, 0.25, 8.0)
        assert took < 3.5 and got.startswith(b"HTTP/1.1 408"), (took, got[:200])
        assert b"head did not arrive within 1 s" in got and b"Connection: close" in got
        _serves(addr)
        body = b"{" + b" " * 200 + b"}"
        head = b"POST /v2/models/digits_mlp/infer HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(body)
        with _connect(addr) as s:
            s.sendall(head)
            took, got = _trickle(s, body, 0.25, 8.0)
        assert 1.5 < took < 4.5 and got.startswith(b"HTTP/1.1 408"), (took, got[:200])
        assert b"request did not arrive within 2 s" in got
        _serves(addr)
        with _connect(addr) as s:
            assert _request_on(s)[0] == 200
            took, got = _trickle(s, b"\r\n" * 40, 0.25, 8.0)
        assert took < 3.5 and got == b"", (took, got[:200])
        _serves(addr)


# -- 3. connection caps ------------------------------------------------------------------------------------------------
def test_connection_caps_in_all_and_per_client(
    triton: EmbeddedTriton, example_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over a cap, a connection's request is answered a readable 503 (the API's error shape, Connection: close);
    once connections close, new ones are served. Loopback addresses other than 127.0.0.1 stand for other clients."""
    with _gateway(triton, example_repo, max_connections=4, max_connections_per_client=2) as (addr, runner):
        with contextlib.ExitStack() as stack:
            mine = [stack.enter_context(_connect(addr)) for _ in range(2)]
            assert all(_request_on(s)[0] == 200 for s in mine)
            with _connect(addr) as s:  # a third from 127.0.0.1
                status, headers, body = _request_on(s, "/v2/health/ready")
                assert status == 503 and headers.get("connection") == "close", (status, headers)
                assert "Too many connections from 127.0.0.1 (limit 2)" in json.loads(body)["error"]  # KServe shape
                assert _closed(s, bytearray())
            other = stack.enter_context(_connect(addr, source="127.0.0.2"))  # another client: served
            assert _request_on(other)[0] == 200
            third = stack.enter_context(_connect(addr, source="127.0.0.3"))
            assert _request_on(third)[0] == 200  # 4 open: the total cap
            with _connect(addr, source="127.0.0.4") as s:
                status, headers, body = _request_on(s, "/endpoints/x/invocations")
                assert status == 503 and headers.get("connection") == "close"
                assert json.loads(body)["message"].startswith("Too many connections to the gateway (limit 4)")
                assert headers.get("x-amzn-errortype")  # SageMaker's shape
            mine.pop().close()
            _wait(runner, lambda srv: srv.limits.total == 3)
            with _connect(addr, source="127.0.0.4") as s:  # a slot is free again
                assert _request_on(s)[0] == 200
        # Over-cap connections waiting for their 503 are capped too: beyond that, closed at accept, no answer.
        monkeypatch.setattr(h1_limits, "MAX_EXCESS", 2)
        _wait(runner, lambda srv: srv.limits.total == srv.limits.excess == 0)
        with contextlib.ExitStack() as stack:
            for _ in range(2):
                stack.enter_context(_connect(addr))
            waiting = [stack.enter_context(_connect(addr)) for _ in range(2)]  # over the per-client cap
            _wait(runner, lambda srv: srv.limits.excess == 2)
            with _connect(addr) as s:
                assert _closed(s, bytearray(), timeout=5)  # closed at accept
            assert _request_on(waiting[0])[0] == 503
        _serves(addr)


# -- 4. lingering close ------------------------------------------------------------------------------------------------
def test_oversize_upload_reads_its_413_not_a_reset(triton: EmbeddedTriton, example_repo: Path) -> None:
    """A client that streams a body over the limit (6 MiB + 1) reads the whole 413 afterwards: the gateway answers
    from the head, half-closes and drops the body instead of resetting the connection under the client."""
    with _gateway(triton, example_repo, max_body=6 * MiB) as (addr, _):
        body = b"x" * (6 * MiB + 1)
        with _connect(addr) as s:
            s.sendall(b"POST /endpoints/x/invocations HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(body))
            s.sendall(body)
            buf = bytearray()
            status, headers, data = _read_answer(s, buf)
            assert status == 413 and headers.get("x-amzn-errortype") == "ValidationError"
            assert json.loads(data)["message"].startswith(f"Request body of {len(body)} bytes exceeds the limit")
            assert _closed(s, buf)
        _serves(addr)


def test_boto3_gets_a_413_validation_error_for_an_oversize_payload(
    triton: EmbeddedTriton, example_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3
    from botocore.config import Config

    for k, v in (("AWS_ACCESS_KEY_ID", "x"), ("AWS_SECRET_ACCESS_KEY", "x"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(k, v)
    with _gateway(triton, example_repo, max_body=6 * MiB) as (addr, _):
        client = boto3.client(
            "sagemaker-runtime", endpoint_url=f"http://{addr}", config=Config(retries={"max_attempts": 1})
        )
        with pytest.raises(botocore.exceptions.ClientError) as err:
            client.invoke_endpoint(EndpointName="x", Body=b"1" * (6 * MiB + 1), ContentType="application/json")
        r = err.value.response
        assert r["ResponseMetadata"]["HTTPStatusCode"] == 413 and r["Error"]["Code"] == "ValidationError", r
        _serves(addr)


# -- 5. and 6. refusals after pipelined requests, HTTP versions ------------------------------------------------------
META = b"GET /v2/models/digits_mlp HTTP/1.1\r\nHost: h\r\n\r\n"


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (b"\x16\x03\x01 not http\r\n\r\n", 400),
        (b"POST /v2/models/digits_mlp/infer HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % (LIMIT + 1), 413),
        (b"GET /v2/health/ready HTTP/2.0\r\nHost: h\r\n\r\n", 505),
    ],
)
def test_requests_before_a_refused_one_are_answered_in_order(
    triton: EmbeddedTriton, example_repo: Path, bad: bytes, code: int
) -> None:
    with _gateway(triton, example_repo) as (addr, _), _connect(addr) as s:
        s.sendall(INFER_REQ + META + bad)  # one write: good, good, refused
        buf = bytearray()
        answers = [_read_answer(s, buf) for _ in range(3)]
        assert [a[0] for a in answers] == [200, 200, code], answers
        assert b'"outputs"' in answers[0][2] and b'"platform"' in answers[1][2]
        assert answers[2][1].get("connection") == "close" and _closed(s, buf)
        _serves(addr)


def test_a_half_closed_pipeline_is_answered_in_full(triton: EmbeddedTriton, example_repo: Path) -> None:
    """A client that sends its requests and then half-closes gets every answer, the last with Connection: close."""
    with _gateway(triton, example_repo) as (addr, _), _connect(addr) as s:
        s.sendall(INFER_REQ + META + META)
        s.shutdown(socket.SHUT_WR)
        buf = bytearray()
        answers = [_read_answer(s, buf) for _ in range(3)]
        assert [a[0] for a in answers] == [200, 200, 200]
        assert [a[1].get("connection") for a in answers] == [None, None, "close"] and _closed(s, buf)
        _serves(addr)


@pytest.mark.parametrize(
    ("request_line", "shape"),
    [(b"GET /\r\n\r\n", "message"), (b"GET /v2/health/ready HTTP/2.0\r\nHost: h\r\n\r\n", "error")],
)
def test_only_http_1_0_and_1_1_are_served(
    triton: EmbeddedTriton, example_repo: Path, request_line: bytes, shape: str
) -> None:
    """HTTP/0.9 (a request line without a version) and HTTP/2.0 in an HTTP/1 request line: 505, then close."""
    with _gateway(triton, example_repo) as (addr, _), _connect(addr) as s:
        s.sendall(request_line)
        buf = bytearray()
        status, headers, body = _read_answer(s, buf)
        assert status == 505 and headers.get("connection") == "close"
        assert "is not supported: use HTTP/1.1" in json.loads(body)[shape]
        assert _closed(s, buf)
        _serves(addr)
