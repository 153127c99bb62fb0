"""The gateway's own HTTP/1.1 layer (toolkit.gateway.h1) and its callback-only hot path, on the real embedded Triton.

Raw sockets where a client library would hide the behaviour: pipelined requests answered in order, oversize heads,
URLs and bodies refused before the body is read, Expect: 100-continue, Connection: close and HTTP/1.0, garbage
bytes, idle and slow-head connections closed by the sweep. The hot path must answer exactly what Triton answers.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from toolkit.gateway.core import GatewayOptions
from toolkit.gateway.h1 import H1Connection, H1Server, Request, Response
from toolkit.gateway.models import RepositoryModels
from toolkit.gateway.server import Gateway, GatewayAddresses, GatewayThread
from toolkit.server import EmbeddedTriton

LIMIT = 16 * 1024
X = np.random.default_rng(7).random((3, 64), dtype=np.float32)


@pytest.fixture(scope="module")
def gw(triton: EmbeddedTriton, example_repo: Path) -> Iterator[GatewayAddresses]:
    models = RepositoryModels(triton.endpoint, example_repo)
    runner = GatewayThread(Gateway(GatewayOptions(http_port=0, max_body_bytes=LIMIT), triton.endpoint, models=models))
    yield runner.start()
    runner.stop()


def _infer_body(binary: bool) -> tuple[bytes, dict[str, str]]:
    if not binary:
        body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [3, 64], "data": X.ravel().tolist()}]}
        return json.dumps(body).encode(), {"Content-Type": "application/json"}
    head = json.dumps(
        {
            "inputs": [
                {"name": "X", "datatype": "FP32", "shape": [3, 64], "parameters": {"binary_data_size": X.nbytes}}
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return head + X.tobytes(), {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(head)),
    }


def _post(addr: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        c.request("POST", path, body=body, headers=headers)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def _hot_count(addr: str) -> int:
    text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=10).read().decode()
    line = next(ln for ln in text.splitlines() if ln.startswith("tritonctl_gateway_hot_path_total"))
    return int(float(line.split()[-1]))


def _recv_all(s: socket.socket, timeout: float = 10.0) -> bytes:
    s.settimeout(timeout)
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except (TimeoutError, ConnectionResetError):
            return out
        if not chunk:
            return out
        out += chunk


def _connect(addr: str) -> socket.socket:
    host, port = addr.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


@pytest.mark.parametrize("binary", [True, False])
def test_hot_path_answers_exactly_what_triton_answers(
    gw: GatewayAddresses, triton: EmbeddedTriton, binary: bool
) -> None:
    body, headers = _infer_body(binary)
    path = "/v2/models/digits_mlp/infer"
    assert _post(gw.http, path, body, headers)[0] == 200  # the first may load the model (the task path)
    before = _hot_count(gw.http)
    direct = _post(triton.endpoint.http, path, body, headers)
    for _ in range(3):
        status, hdrs, data = _post(gw.http, path, body, headers)
        assert (status, data) == (direct[0], direct[2])
        for h in ("content-type", "inference-header-content-length"):
            assert hdrs.get(h) == direct[1].get(h)
    assert _hot_count(gw.http) == before + 3  # and they really took the hot path
    c = httpclient.InferenceServerClient(gw.http)  # tritonclient, unchanged
    i = httpclient.InferInput("X", list(X.shape), "FP32")
    i.set_data_from_numpy(X, binary_data=binary)
    p = c.infer("digits_mlp", [i], model_version="1").as_numpy("probabilities")
    assert p.shape == (3, 10) and np.allclose(p.sum(axis=1), 1.0, atol=1e-4)
    c.close()


def test_hot_path_errors_keep_tritons_status(gw: GatewayAddresses) -> None:
    path = "/v2/models/digits_mlp/infer"
    _post(gw.http, path, *_infer_body(False))
    bad = json.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}).encode()
    status, _, data = _post(gw.http, path, bad, {"Content-Type": "application/json"})
    assert status == 400 and "shape" in json.loads(data)["error"]
    status, _, data = _post(gw.http, path, b"{not json", {"Content-Type": "application/json"})
    assert status == 400  # Triton says 500 to a body it cannot parse: the client's error
    lying = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": "99999"}
    assert _post(gw.http, path, b"{}", lying)[0] == 400


def test_pipelined_requests_are_answered_in_order(gw: GatewayAddresses) -> None:
    body, headers = _infer_body(False)
    _post(gw.http, "/v2/models/digits_mlp/infer", body, headers)  # warm
    host = gw.http
    infer = (
        f"POST /v2/models/digits_mlp/infer HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    meta = f"GET /v2/models/digits_mlp HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    ping = f"GET /ping HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    with _connect(host) as s:
        s.sendall(meta + infer + ping)  # one write: three requests
        raw = _recv_all(s)
    parts = raw.split(b"HTTP/1.1 ")[1:]
    assert [p[:3] for p in parts] == [b"200", b"200", b"200"], raw[:300]
    assert b'"platform"' in parts[0] and b'"outputs"' in parts[1] and b"model_name" in parts[1]
    assert b"Connection: close" in parts[2]


def test_connection_layer_refuses_oversize_and_garbage(gw: GatewayAddresses) -> None:
    host = gw.http
    cases = [
        (b"GET /v2/health/ready HTTP/1.1\r\nHost: h\r\nX-Big: " + b"x" * 9000 + b"\r\n\r\n", b"431"),
        (b"GET /v2/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: h\r\n\r\n", b"414"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: -5\r\n\r\n", b"400"),
    ]
    for data, code in cases:
        with _connect(host) as s:
            s.sendall(data)
            got = _recv_all(s)
        assert got.startswith(b"HTTP/1.1 " + code), (data[:40], got[:200])
    # A declared body over the limit is refused from the head alone: the client never has to send it.
    with _connect(host) as s:
        s.sendall(
            f"POST /v2/models/digits_mlp/infer HTTP/1.1\r\nHost: h\r\nContent-Length: {LIMIT + 1}\r\n\r\n".encode()
        )
        got = _recv_all(s)
    assert got.startswith(b"HTTP/1.1 413") and b"exceeds the limit" in got
    # A chunked body is counted as it arrives, and refused at the limit (SageMaker path: SageMaker's error shape).
    with _connect(host) as s:
        s.sendall(b"POST /endpoints/x/invocations HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (4096, b"y" * 4096)
        try:
            for _ in range(LIMIT // 4096 + 2):
                s.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the gateway has already answered and closed
        got = _recv_all(s)
    assert got.startswith(b"HTTP/1.1 413") and b"x-amzn-ErrorType: ValidationError" in got, got[:300]
    assert json.loads(got.split(b"\r\n\r\n", 1)[1])["message"].startswith("Request body exceeds the limit")
    assert _post(host, "/v2/models/digits_mlp/infer", *_infer_body(False))[0] == 200  # still serving


def test_expect_continue_connection_close_and_http10(gw: GatewayAddresses) -> None:
    body, _ = _infer_body(False)
    head = (
        f"POST /v2/models/digits_mlp/infer HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
    ).encode()
    with _connect(gw.http) as s:
        s.sendall(head)
        s.settimeout(10)
        assert s.recv(25).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        s.sendall(body)
        s.sendall(b"GET /ping HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        got = _recv_all(s)  # returns: the server closed the connection after the second answer
    assert got.count(b"HTTP/1.1 200") == 2
    with _connect(gw.http) as s:
        s.sendall(b"GET /ping HTTP/1.0\r\n\r\n")
        got = _recv_all(s)
    assert got.startswith(b"HTTP/1.1 200") and b"Connection: close" in got
    with _connect(gw.http) as s:  # HEAD mirrors GET without the body; the next request on the connection still works
        s.sendall(b"HEAD /v2/models/digits_mlp HTTP/1.1\r\nHost: h\r\n\r\nGET /ping HTTP/1.1\r\nHost: h\r\n\r\n")
        s.settimeout(10)
        got = b""
        while got.count(b"HTTP/1.1 200") < 2:
            got += s.recv(65536)
    first, second = got.split(b"HTTP/1.1 200")[1:3]
    assert b"Content-Length: " in first and first.endswith(b"\r\n\r\n") and b"platform" not in first
    assert int(first.split(b"Content-Length: ")[1].split(b"\r\n")[0]) > 0 and second.endswith(b"\r\n\r\n")
    with _connect(gw.http) as s:  # a client that half-closes after its request still gets the answer
        s.sendall(head.replace(b"Expect: 100-continue\r\n", b"") + body)
        s.shutdown(socket.SHUT_WR)
        got = _recv_all(s)
    assert got.startswith(b"HTTP/1.1 200") and b"model_name" in got, got[:200]


def test_idle_and_slow_head_connections_are_swept() -> None:
    """H1Server alone, with a one-line dispatcher: keep-alive and slow-head timeouts close connections."""

    def dispatch(conn: H1Connection, req: Request) -> None:
        conn.send_response(Response(200, text=req.path))

    def reject(path: str, status: int, message: str) -> Response:
        return Response(status, text=message)

    async def scenario() -> tuple[float, float, bytes]:
        server = H1Server(dispatch, reject, max_body=1024, keepalive_s=0.3, head_timeout_s=0.3)
        port = await server.start("127.0.0.1", 0)
        loop = asyncio.get_running_loop()

        async def closed_after(first: bytes) -> tuple[float, bytes]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            t0 = loop.time()
            writer.write(first)
            data = await asyncio.wait_for(reader.read(), 10)  # until the server closes
            writer.close()
            return loop.time() - t0, data

        idle, answer = await closed_after(b"GET /hello%20world HTTP/1.1\r\nHost: h\r\n\r\n")
        slow, _ = await closed_after(b"GET /never-finished HTTP/1.1\r\nHost: h\r\n")
        await server.close()
        return idle, slow, answer

    idle, slow, answer = asyncio.run(scenario())
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"/hello world")
    assert 0.3 <= idle < 3.0 and 0.3 <= slow < 3.0


def test_hot_path_timeout_and_unreachable_triton(triton: EmbeddedTriton, example_repo: Path) -> None:
    """The hot path maps Triton's failures like the task path: 503 with the reason when the connection fails."""
    models = RepositoryModels(triton.endpoint, example_repo)
    runner = GatewayThread(Gateway(GatewayOptions(http_port=0), triton.endpoint, models=models))
    addrs = runner.start()
    try:
        body, headers = _infer_body(False)
        assert _post(addrs.http, "/v2/models/digits_mlp/infer", body, headers)[0] == 200
        # Point the pool at a port nothing listens on: the next warm infer must fail cleanly, not hang.
        core = runner.gateway.core
        assert core.upstream is not None
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))
        port = dead.getsockname()[1]
        dead.close()
        pool = core.upstream
        loop = runner.gateway.loop
        assert loop is not None

        async def reset() -> None:
            pool.reset()

        asyncio.run_coroutine_threadsafe(reset(), loop).result(5)
        pool.port = port
        t0 = time.monotonic()
        status, _, data = _post(addrs.http, "/v2/models/digits_mlp/infer", body, headers)
        assert status == 503 and "Triton is unavailable" in json.loads(data)["error"]
        assert time.monotonic() - t0 < 5
    finally:
        runner.stop()


def test_upstream_close_fails_in_flight_requests_without_reconnecting(triton: EmbeddedTriton) -> None:
    """Stopping the gateway with requests in flight (one on a reused connection, two waiting for new ones): each
    fails at once with a clear reason; none is retried on a fresh connection, which would outlive the loop."""
    from toolkit.gateway.upstream import UpstreamError, UpstreamPool

    host, _, port = triton.endpoint.http.rpartition(":")

    async def scenario() -> tuple[list[BaseException], int, int]:
        pool = UpstreamPool(host, int(port), timeout=30)
        assert (await pool.request("GET", "/v2/health/ready", None, {}))[0] == 200  # the connection is now reused
        errors: list[BaseException] = []
        for _ in range(3):
            pool.send(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n", lambda *a: None, errors.append)
        await pool.close()
        await asyncio.sleep(0.2)  # a retry would be connecting now
        after = len([t for t in asyncio.all_tasks() if t is not asyncio.current_task()])
        return errors, len(pool._all), after

    errors, conns, tasks = asyncio.run(scenario())
    assert len(errors) == 3 and all(isinstance(e, UpstreamError) for e in errors), errors
    assert all("stopping" in str(e) for e in errors), errors
    assert conns == 0 and tasks == 0


def test_hot_path_pins_in_flight_models_and_counts_cache_hits(tmp_path: Path) -> None:
    """With room for one model, a cold request must wait while a warm one is in flight on the hot path (never
    evicted under it); the warm request counts as a ModelCacheHit, as it did on the task path."""
    from concurrent.futures import ThreadPoolExecutor

    from toolkit.mme.manager import ModelManager
    from toolkit.repository.samples import write_scale_model
    from toolkit.server import ServerOptions

    repo = tmp_path / "repo"
    write_scale_model(repo, "slow", sleep_ms=1500)
    write_scale_model(repo, "other")
    server = EmbeddedTriton(ServerOptions(repository=repo, workdir=tmp_path, log_file=tmp_path / "triton.log"))
    server.start(timeout=90)
    manager = ModelManager(server.endpoint, repository=repo, max_models=1)
    runner = GatewayThread(Gateway(GatewayOptions(http_port=0), server.endpoint, models=manager))
    addrs = runner.start()
    body = json.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0]}]}).encode()
    j = {"Content-Type": "application/json"}

    def call(model: str) -> tuple[int, float]:
        status, _, data = _post(addrs.http, f"/v2/models/{model}/infer", body, j)
        assert status == 200, data
        return status, time.monotonic()

    try:
        call("slow")  # cold: loaded on the task path
        hits = manager.metrics.cache_hit.get(model="slow")
        hot = runner.gateway.core.hot_path
        with ThreadPoolExecutor(2) as pool:
            warm = pool.submit(call, "slow")  # in flight for 1.5 s on the hot path
            time.sleep(0.4)
            cold = pool.submit(call, "other")  # needs slow's slot
            _, t_warm = warm.result(30)
            _, t_cold = cold.result(30)
        assert t_cold >= t_warm  # "other" could only load after "slow" was released
        assert runner.gateway.core.hot_path == hot + 1
        assert manager.metrics.cache_hit.get(model="slow") == hits + 1
        states = {s.name: str(s.state) for s in manager.states()}
        assert states.get("other") == "READY" and states.get("slow") != "READY"
        # The hot path keeps the request timeout: a warm model slower than it gets 504 at the deadline. (A second
        # gateway over the same Triton, without a manager: the first one's manager, which adopts and trims whatever
        # Triton holds, is stopped first, so one controller decides what is loaded.)
        runner.stop()
        impatient = GatewayThread(Gateway(GatewayOptions(http_port=0, timeout_s=0.5), server.endpoint))
        addr = impatient.start().http
        try:
            assert _post(addr, "/v2/models/other/infer", body, j)[0] == 200
            for _ in range(20):  # loads it (504 or 200: the load and first run are slow; on a busy machine the
                _post(addr, "/v2/models/slow/infer", body, j)  # load itself can outlast the 0.5 s: tried again)
                if impatient.gateway.core.models.is_resident("slow"):
                    break
            hot = impatient.gateway.core.hot_path
            t0 = time.monotonic()
            status, _, data = _post(addr, "/v2/models/slow/infer", body, j)
            took = time.monotonic() - t0
            assert status == 504 and "did not answer within 0.5 s" in json.loads(data)["error"], data
            assert 0.45 < took < 1.4 and impatient.gateway.core.hot_path == hot + 1
            assert _post(addr, "/v2/models/other/infer", body, j)[0] == 200  # and it keeps serving
        finally:
            impatient.stop()
    finally:
        runner.stop()
        server.stop()
