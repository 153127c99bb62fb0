"""Hostile input through the front door, against its own real Triton: every case gets its answer, and after each
the Triton process is alive and a valid request is served (nothing lost, nothing crashed).

Classes (the review's probes): shape claims beyond the data (Triton 2.51 aborts), deep nesting (it segfaults),
compression bombs (it inflates without limit), malformed binary headers, over the KServe and SageMaker routes and
over gRPC.
"""

from __future__ import annotations

import gzip
import http.client
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from toolkit.gateway.core import GatewayOptions
from toolkit.gateway.server import Gateway, GatewayAddresses, GatewayThread
from toolkit.mme.manager import ModelManager
from toolkit.server import EmbeddedTriton, ServerOptions
from toolkit.spec.models import Manifest

MiB = 1024 * 1024
X = np.random.default_rng(4).random((1, 64), dtype=np.float32)
GOOD = {"inputs": [{"name": "X", "shape": [1, 64], "datatype": "FP32", "data": X.ravel().tolist()}]}


class Stack:
    def __init__(self, triton: EmbeddedTriton, gw: GatewayAddresses) -> None:
        self.triton, self.gw = triton, gw


@pytest.fixture(scope="module")
def hostile(
    example_repo: Path, example_manifest: Manifest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("hostile")
    triton = EmbeddedTriton(ServerOptions(repository=example_repo, workdir=work, log_file=work / "t.log"))
    triton.start(timeout=90)
    opts = GatewayOptions(http_port=0, grpc_port=0, endpoints=list(example_manifest.endpoints))
    runner = GatewayThread(
        Gateway(opts, triton.endpoint, models=ModelManager(triton.endpoint, repository=example_repo))
    )
    try:
        yield Stack(triton, runner.start())
    finally:
        runner.stop()
        triton.stop()


def _post(addr: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        c.request("POST", path, body=body, headers=headers)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def _still_serving(s: Stack) -> None:
    assert s.triton.process is not None and s.triton.process.poll() is None, "tritonserver died"
    status, out = _post(s.gw.http, "/v2/models/digits_logreg/infer", json.dumps(GOOD).encode(), {})
    assert status == 200, out
    assert len(json.loads(out)["outputs"]) == 2


def _tensor(shape: list[Any], data: Any, **extra: Any) -> bytes:
    return json.dumps({"inputs": [{"name": "X", "shape": shape, "datatype": "FP32", "data": data, **extra}]}).encode()


def _nested(depth: int, inner: str = "1.0") -> bytes:
    return (
        '{"inputs":[{"name":"X","shape":[1],"datatype":"FP32","data":' + "[" * depth + inner + "]" * depth + "}]}"
    ).encode()


def _binary(size: int, tail: int, shape: list[int] | None = None) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(
        {
            "inputs": [
                {"name": "X", "shape": shape or [1, 64], "datatype": "FP32", "parameters": {"binary_data_size": size}}
            ]
        }
    ).encode()
    return head + bytes(tail), {"Inference-Header-Content-Length": str(len(head))}


def _bomb(inflated: int, compress: Any = gzip.compress) -> bytes:
    return compress(b"{" + b" " * (inflated - 2) + b"}")


VALUES = X.ravel().tolist()
JSON_CASES: list[tuple[str, bytes, dict[str, str], int]] = [
    ("huge shape, 64 values", _tensor([2147483648, 64], VALUES), {}, 400),
    ("shape product beyond data", _tensor([65536, 65536], VALUES), {}, 400),
    ("shape at int32 max", _tensor([2**31 - 1, 1], VALUES), {}, 400),
    ("negative dimension", _tensor([-1, 64], VALUES), {}, 400),
    ("fractional dimension", _tensor([1.5, 64], VALUES), {}, 400),
    ("boolean dimension", _tensor([True, 64], VALUES), {}, 400),
    ("shape is a string", _tensor("1,64", VALUES), {}, 400),  # type: ignore[arg-type]
    ("33 dimensions", _tensor([1] * 33, [1.0]), {}, 400),
    ("too few values", _tensor([1, 64], VALUES[:63]), {}, 400),
    ("too many values", _tensor([1, 64], [*VALUES, 1.0]), {}, 400),
    ("nested data, wrong count", _tensor([2, 64], [VALUES, VALUES[:10]]), {}, 400),
    ("object inside data", _tensor([1, 2], [1.0, {"a": 1}]), {}, 400),
    ("data nested 100000 deep", _nested(100_000), {}, 400),
    ("data nested 2000 deep", _nested(2000), {}, 400),
    ("data nested 100 deep", _nested(100), {}, 400),
    ("parameters nested 100000 deep", b'{"parameters":{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}}", {}, 400),
    ("inputs missing", b'{"outputs": []}', {}, 400),
    ("inputs not a list", b'{"inputs": {"name": "X"}}', {}, 400),
    ("input not an object", b'{"inputs": [1]}', {}, 400),
    ("not JSON", b"\x00\x01garbage", {}, 400),
    ("JSON array body", b"[1, 2, 3]", {}, 400),
    ("truncated JSON", json.dumps(GOOD).encode()[:-5], {}, 400),
    ("invalid UTF-8 in JSON", b'{"inputs": [{"name": "\xff"}]}', {}, 400),
    (
        "no data, no binary",
        json.dumps({"inputs": [{"name": "X", "shape": [1, 64], "datatype": "FP32"}]}).encode(),
        {},
        400,
    ),
    ("binary size beyond tail", *_binary(256, 100), 400),
    ("binary size below shape", *_binary(100, 100), 400),
    ("binary tail beyond sizes", *_binary(256, 300), 400),
    ("binary size negative", *_binary(-4, 0), 400),
    ("binary header length not a number", _binary(256, 256)[0], {"Inference-Header-Content-Length": "12abc"}, 400),
    ("binary header length beyond body", _binary(256, 256)[0], {"Inference-Header-Content-Length": "99999"}, 400),
    ("binary header length zero", _binary(256, 256)[0], {"Inference-Header-Content-Length": "0"}, 400),
    ("binary shape claim", *_binary(256, 256, [2147483648, 64]), 400),
    ("gzip bomb 261 KB -> 256 MiB", _bomb(256 * MiB), {"Content-Encoding": "gzip"}, 413),
    ("gzip bomb just over the limit", _bomb(6 * MiB + 1), {"Content-Encoding": "gzip"}, 413),
    ("deflate bomb", _bomb(64 * MiB, zlib.compress), {"Content-Encoding": "deflate"}, 413),
    ("truncated gzip", gzip.compress(json.dumps(GOOD).encode())[:-10], {"Content-Encoding": "gzip"}, 400),
    ("gzip header, plain body", json.dumps(GOOD).encode(), {"Content-Encoding": "gzip"}, 400),
    ("unknown encoding", json.dumps(GOOD).encode(), {"Content-Encoding": "br"}, 415),
    ("gzip of a hostile shape", gzip.compress(_tensor([2147483648, 64], VALUES)), {"Content-Encoding": "gzip"}, 400),
    ("gzip of deep data", gzip.compress(_nested(100_000)), {"Content-Encoding": "gzip"}, 400),
]


@pytest.mark.parametrize(("name", "body", "headers", "status"), JSON_CASES, ids=[c[0] for c in JSON_CASES])
def test_kserve_http(hostile: Stack, name: str, body: bytes, headers: dict[str, str], status: int) -> None:
    got, out = _post(hostile.gw.http, "/v2/models/digits_logreg/infer", body, headers)
    assert got == status, (name, out[:300])
    assert "error" in json.loads(out)
    _still_serving(hostile)


SM_CASES = [c for c in JSON_CASES if not c[2].get("Inference-Header-Content-Length")]


@pytest.mark.parametrize(("name", "body", "headers", "status"), SM_CASES, ids=[c[0] for c in SM_CASES])
def test_sagemaker_invocations(hostile: Stack, name: str, body: bytes, headers: dict[str, str], status: int) -> None:
    h = {"Content-Type": "application/json", "X-Amzn-SageMaker-Target-Container-Hostname": "digits_logreg", **headers}
    got, out = _post(hostile.gw.http, "/endpoints/digits-mce/invocations", body, h)
    assert got == status, (name, out[:300])
    assert json.loads(out)["__type"] in ("ValidationError",)
    _still_serving(hostile)


def test_valid_compressed_requests_are_served(hostile: Stack) -> None:
    plain = json.dumps(GOOD).encode()
    for enc, data in (("gzip", gzip.compress(plain)), ("deflate", zlib.compress(plain)), ("identity", plain)):
        got, out = _post(hostile.gw.http, "/v2/models/digits_logreg/infer", data, {"Content-Encoding": enc})
        assert got == 200, (enc, out)
        assert json.loads(out)["model_name"] == "digits_logreg"
    _still_serving(hostile)


def test_grpc_compression_bomb_is_refused(hostile: Stack) -> None:
    """A 64 KiB gzip message that would inflate to ~63 MiB: RESOURCE_EXHAUSTED, inflated in a worker thread."""
    c = grpcclient.InferenceServerClient(hostile.gw.grpc or "")
    zeros = np.zeros((1, 16 * MiB), np.float32)  # compresses ~1000:1
    i = grpcclient.InferInput("X", list(zeros.shape), "FP32")
    i.set_data_from_numpy(zeros)
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as e:
        c.infer("digits_logreg", [i], compression_algorithm="gzip", client_timeout=60)
    assert "RESOURCE_EXHAUSTED" in str(e.value.status()) or "INVALID_ARGUMENT" in str(e.value.status()), e.value
    ok = grpcclient.InferInput("X", list(X.shape), "FP32")
    ok.set_data_from_numpy(X)
    assert c.infer("digits_logreg", [ok], compression_algorithm="gzip").as_numpy("probabilities") is not None
    c.close()
    _still_serving(hostile)
