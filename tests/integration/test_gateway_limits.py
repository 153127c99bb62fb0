"""The gateway's limits at their exact boundaries, through a real gateway in front of a real Triton.

- The default body limit (``GatewayOptions().max_body_bytes``, SageMaker's 6 MiB): a body of exactly 6 MiB is served,
  one byte more is 413, whether the size is announced (Content-Length), discovered (chunked), on the SageMaker route or
  a gRPC message (RESOURCE_EXHAUSTED there).
- The concurrency slot: with ``max_concurrency=N``, N requests held in flight by a slow model are all served, and
  the next one, while they are held, is 429 ThrottlingException (KServe and SageMaker alike); once they are
  answered the slots are free again.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from toolkit.gateway.options import GatewayOptions, MiB
from toolkit.gateway.server import Gateway, GatewayAddresses, GatewayThread
from toolkit.repository.samples import write_scale_model
from toolkit.server import EmbeddedTriton, ServerOptions
from toolkit.spec.models import EndpointSpec

LIMIT = 6 * MiB
SLOTS = 3
SLOW_MS = 4000  # each held request: long enough to see all of them in flight on a busy machine
BODY = json.dumps({"inputs": [{"name": "X", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]}]}).encode()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayAddresses]:
    base = tmp_path_factory.mktemp("gw_limits")
    repo = base / "repo"
    write_scale_model(repo, "fast")
    write_scale_model(repo, "slow", sleep_ms=SLOW_MS)
    triton = EmbeddedTriton(ServerOptions(repository=repo, workdir=base, log_file=base / "triton.log"))
    triton.start(timeout=90)
    opts = GatewayOptions(  # the default body limit: not set here
        http_port=0, grpc_port=0, max_concurrency=SLOTS, repository=Path(repo),
        endpoints=[EndpointSpec(name="fast", mode="single", model="fast"),
                   EndpointSpec(name="slow", mode="single", model="slow")],
    )  # fmt: skip
    assert opts.max_body_bytes == LIMIT
    runner = GatewayThread(Gateway(opts, triton.endpoint))
    try:
        yield runner.start()
    finally:
        runner.stop()
        triton.stop()


def _post(
    addr: str, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        c.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def _raw(addr: str, path: str, body: bytes, chunked: bool = False, pieces: int = 7) -> tuple[int, bytes]:
    """POST ``body`` on a socket of its own, with its Content-Length or chunked (the gateway then learns its size
    only as it arrives); keep reading when the gateway answers before the body is sent (it refuses from the head).
    (status, the whole response)."""
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=60) as s:
        head = f"POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nConnection: close\r\n"
        framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}"
        s.sendall(f"{head}{framing}\r\n\r\n".encode())
        step = -(-len(body) // pieces)
        try:
            for i in range(0, len(body), step):
                part = body[i : i + step]
                s.sendall(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
            if chunked:
                s.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed before the end: the answer is still there to read
        raw = bytearray()
        while chunk := s.recv(65536):
            raw += chunk
    return int(raw.split(b" ", 2)[1]), bytes(raw)


def padded(size: int) -> bytes:
    """A valid infer request of exactly ``size`` bytes (JSON allows any whitespace after the document)."""
    assert size >= len(BODY)
    return BODY + b" " * (size - len(BODY))


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_of_exactly_6_mib_is_served_and_one_byte_more_is_413(gw: GatewayAddresses, chunked: bool) -> None:
    status, raw = _raw(gw.http, "/v2/models/fast/infer", padded(LIMIT), chunked)
    assert status == 200 and b'"outputs"' in raw and b"[2.0,4.0]" in raw.replace(b" ", b""), raw[:300]
    status, raw = _raw(gw.http, "/v2/models/fast/infer", padded(LIMIT + 1), chunked)
    assert status == 413 and b"limit of 6291456" in raw, raw[:300]


def test_the_sagemaker_route_has_the_same_limit(gw: GatewayAddresses) -> None:
    status, raw = _raw(gw.http, "/endpoints/fast/invocations", padded(LIMIT))
    assert status == 200 and b'"outputs"' in raw, raw[:300]
    status, raw = _raw(gw.http, "/endpoints/fast/invocations", padded(LIMIT + 1))
    assert status == 413 and b"x-amzn-ErrorType: ValidationError" in raw, raw[:300]


def _grpc_request(size: int) -> bytes:
    """A serialized ModelInferRequest for ``fast`` of exactly ``size`` bytes (padded with a request parameter)."""
    req = service_pb2.ModelInferRequest(model_name="fast")
    req.inputs.add(name="X", datatype="FP32", shape=[2])
    req.raw_input_contents.append(b"\x00\x00\x80\x3f\x00\x00\x00\x40")  # 1.0, 2.0
    pad = size - req.ByteSize()
    req.parameters["pad"].string_param = "x" * pad
    while req.ByteSize() > size:  # the parameter's own framing
        pad -= req.ByteSize() - size
        req.parameters["pad"].string_param = "x" * pad
    data = req.SerializeToString()
    assert len(data) == size
    return data


def test_a_grpc_message_of_exactly_6_mib_is_served_and_one_byte_more_is_refused(gw: GatewayAddresses) -> None:
    assert gw.grpc
    opts = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(gw.grpc, options=opts) as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        raw = ch.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda b: b,
            response_deserializer=service_pb2.ModelInferResponse.FromString,
        )
        assert stub.ServerLive(service_pb2.ServerLiveRequest()).live
        r = raw(_grpc_request(LIMIT), timeout=60)
        assert r.model_name == "fast" and len(r.raw_output_contents[0]) == 8
        with pytest.raises(grpc.RpcError) as e:
            raw(_grpc_request(LIMIT + 1), timeout=60)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def _inflight(gw: GatewayAddresses) -> int:
    with urllib.request.urlopen(f"{gw.http_url}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("tritonctl_gateway_inflight "):
                return int(float(line.split()[1]))
    raise AssertionError("no tritonctl_gateway_inflight in /metrics")


def test_exactly_max_concurrency_in_flight_are_served_and_the_next_is_429(gw: GatewayAddresses) -> None:
    assert _post(gw.http, "/v2/models/slow/infer", BODY)[0] == 200  # loaded: the slots below are held by execution
    assert _post(gw.http, "/v2/models/fast/infer", BODY)[0] == 200
    results: list[int] = []
    held = [
        threading.Thread(target=lambda: results.append(_post(gw.http, "/v2/models/slow/infer", BODY)[0]))
        for _ in range(SLOTS)
    ]
    for t in held:
        t.start()
    deadline = time.monotonic() + SLOW_MS / 1000
    while _inflight(gw) < SLOTS:
        assert time.monotonic() < deadline, f"only {_inflight(gw)} of {SLOTS} requests in flight"
        time.sleep(0.01)
    assert _inflight(gw) == SLOTS  # all admitted: none was refused
    for path in ("/v2/models/fast/infer", "/endpoints/fast/invocations"):  # the next one, on any route or model
        status, headers, out = _post(gw.http, path, BODY)
        assert status == 429, out[:300]
        assert headers.get("x-amzn-errortype") == "ThrottlingException" or b"Too many concurrent" in out, out[:300]
    assert _inflight(gw) == SLOTS  # the refused ones held nothing
    for t in held:
        t.join(timeout=60)
    assert results == [200] * SLOTS
    assert _inflight(gw) == 0
    assert _post(gw.http, "/v2/models/fast/infer", BODY)[0] == 200  # slots given back
