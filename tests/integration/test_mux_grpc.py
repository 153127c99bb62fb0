"""Multiplexed models over the gateway's gRPC port (issue #17): tritonclient.grpc unchanged, as for a model of its own.

Against the real thing (``tritonctl serve``'s stack: embedded Triton, gateway, a model host): predictions, readiness,
metadata and config equal the HTTP path's under the model's name; a denied model is refused and the host's own name
stays unreachable; a client's own ``tritonctl_mux_model`` (also as raw bytes in odd encodings) never picks the model;
flow control stays exact over hundreds of calls on one connection and with a request that fills Triton's stream
window; ModelStreamInfer and statistics are refused in one line; hostile bytes leave the gateway serving.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from examples.housing import generate
from examples.mme import build_city_store, expected_prices
from toolkit import ServeConfig, Serving, start
from toolkit.gateway.mux_rewrite import MUX_PARAM
from toolkit.loadtest.serverstats import parse_prometheus
from toolkit.mme.muxspec import HOST_PREFIX

LONG = "housing_" + "L" * 120  # a 128-character name: ~190 bytes added to each request, ~130 to each answer
AUTH = """
region: us-east-1
account: "123456789012"
principals:
  - name: alice
    api_keys: [alice-grpc-key]
    policy:
      - {Effect: Allow, Action: invoke, Resource: "*",
         Condition: {StringLike: {"sagemaker:TargetModel": ["housing_*"]}}}
      - {Effect: Deny, Action: invoke, Resource: "*",
         Condition: {StringLike: {"sagemaker:TargetModel": ["housing_Houston*"]}}}
  - name: ops
    api_keys: [ops-grpc-key]
    policy: [{Effect: Allow, Action: [invoke, admin, metrics], Resource: "*"}]
"""
ALICE = {"x-api-key": "alice-grpc-key"}
OPS = {"x-api-key": "ops-grpc-key"}
INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    tmp = tmp_path_factory.mktemp("muxgrpc")
    store = tmp / "store"
    arts = build_city_store(store, n=5)
    (store / f"{LONG}.tar.gz").write_bytes(arts["housing_NewYork_NY"].read_bytes())
    (tmp / "auth.yaml").write_text(AUTH)
    root = Path(__file__).resolve().parents[2]
    manifest = tmp / "m.yaml"
    manifest.write_text(
        "models:\n  - {name: placeholder, framework: numpy, artifact: %s, inputs: [{name: X, dtype: FP32, dims: [64]}],"
        " outputs: [{name: label, dtype: INT64, dims: [1]}]}\n"
        % (root / "examples/artifacts/digits_mlp.py")
        + f"endpoints:\n  - {{name: cities, mode: multi-model, store: {store}, multiplex: true}}\n"
    )
    (tmp / "repo").mkdir()
    cfg = ServeConfig(
        repository=tmp / "repo", manifest=manifest, store=str(store), auth=tmp / "auth.yaml",
        http_port=0, grpc_port=0, metrics_port=0, gateway_port=0, gateway_grpc_port=0,
    )  # fmt: skip
    with start(cfg) as s:
        yield s


def _ginput(x: np.ndarray) -> grpcclient.InferInput:
    i = grpcclient.InferInput("raw", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    return i


def _hinput(x: np.ndarray) -> httpclient.InferInput:
    i = httpclient.InferInput("raw", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    return i


def _grpc(s: Serving) -> grpcclient.InferenceServerClient:
    assert s.grpc is not None
    return grpcclient.InferenceServerClient(s.grpc)


def _host(s: Serving) -> str:
    assert s.triton is not None
    with httpclient.InferenceServerClient(s.triton.http) as c:
        return next(m["name"] for m in c.get_model_repository_index() if m["name"].startswith(HOST_PREFIX))


def _raw_call(s: Serving, body: bytes, key: str = "alice-grpc-key") -> pb.ModelInferResponse:
    """A serialized request sent as it is (grpc's own client, no tritonclient encoding)."""
    assert s.grpc is not None
    with grpc.insecure_channel(s.grpc) as ch:
        call = ch.unary_unary(
            INFER, request_serializer=lambda b: b, response_deserializer=pb.ModelInferResponse.FromString
        )
        return call(body, metadata=(("x-api-key", key),), timeout=30)


def _request(model: str, x: np.ndarray) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model)
    t = req.inputs.add(name="raw", datatype="FP32")
    t.shape.extend(x.shape)
    req.raw_input_contents.append(x.tobytes())
    return req


def test_infer_ready_metadata_and_config_equal_the_http_paths_under_the_models_name(served: Serving) -> None:
    x, _ = generate("Chicago_IL", 5, seed=7)
    with _grpc(served) as g, httpclient.InferenceServerClient(served.http) as h:
        for model in ("housing_Chicago_IL", "housing_NewYork_NY"):
            res = g.infer(model, [_ginput(x)], headers=ALICE)
            assert res.get_response().model_name == model
            got = res.as_numpy("price")
            want = h.infer(model, [_hinput(x)], headers={**ALICE}).as_numpy("price")  # a copy: it adds headers
            assert got is not None and np.array_equal(got, want)
            assert np.allclose(got.reshape(-1), expected_prices(model.removeprefix("housing_"), x), rtol=1e-4)
            assert g.is_model_ready(model, headers=ALICE)
            md = g.get_model_metadata(model, headers=ALICE, as_json=True)
            for t in md["inputs"] + md["outputs"]:  # (int64 as JSON strings over gRPC)
                t["shape"] = [int(d) for d in t["shape"]]
            assert md == {**h.get_model_metadata(model, headers={**ALICE}), "name": model} and md["name"] == model
            cfg = g.get_model_config(model, headers=ALICE, as_json=True)["config"]
            assert cfg["name"] == model
            assert cfg["input"][0]["name"] == h.get_model_config(model, headers={**ALICE})["input"][0]["name"] == "raw"
        with pytest.raises(InferenceServerException) as err:  # statistics: the host's count every model
            g.get_inference_statistics("housing_Chicago_IL", headers=ALICE)
        assert "multiplexed" in str(err.value) and "/metrics" in str(err.value)


def test_a_denied_model_is_refused_and_the_host_stays_unreachable(served: Serving) -> None:
    x, _ = generate("Houston_TX", 2, seed=1)
    with _grpc(served) as g:
        g.infer("housing_Chicago_IL", [_ginput(x)], headers=ALICE)  # the host is loaded
        host = _host(served)
        with pytest.raises(InferenceServerException) as err:
            g.infer("housing_Houston_TX", [_ginput(x)], headers=ALICE)
        assert "PERMISSION_DENIED" in str(err.value.status())
        for headers, code in ((ALICE, "PERMISSION_DENIED"), (OPS, "NOT_FOUND")):  # ops may invoke everything
            with pytest.raises(InferenceServerException) as herr:
                g.infer(host, [_ginput(x)], headers=headers, parameters={MUX_PARAM: "housing_Chicago_IL"})
            assert str(herr.value.status()) == f"StatusCode.{code}"
            for ask in (g.is_model_ready, g.get_model_metadata, g.get_model_config):
                with pytest.raises(InferenceServerException) as rerr:
                    ask(host, headers=headers)
                assert str(rerr.value.status()) == f"StatusCode.{code}", ask
        got = g.infer("housing_Houston_TX", [_ginput(x)], headers=OPS).as_numpy("price")
        assert got is not None and np.allclose(got.reshape(-1), expected_prices("Houston_TX", x), rtol=1e-4)


def test_a_clients_own_mux_parameter_never_picks_the_model(served: Serving) -> None:
    x, _ = generate("Chicago_IL", 3, seed=5)
    want = expected_prices("Chicago_IL", x)
    with _grpc(served) as g:
        g.infer("housing_Houston_TX", [_ginput(x)], headers=OPS)  # resident in the host
        res = g.infer("housing_Chicago_IL", [_ginput(x)], headers=ALICE, parameters={MUX_PARAM: "housing_Houston_TX"})
    got = res.as_numpy("price")
    assert got is not None and np.allclose(got.reshape(-1), want, rtol=1e-4)
    assert not np.allclose(got.reshape(-1), expected_prices("Houston_TX", x), rtol=1e-2)
    req = _request("housing_Chicago_IL", x)
    entry = pb.ModelInferRequest()
    entry.parameters[MUX_PARAM].string_param = "housing_Houston_TX"
    entry_bytes = entry.SerializeToString()
    key = b"\x0a\x13" + MUX_PARAM.encode()
    value = b"\x12\x14\x1a\x12housing_Houston_TX"
    odd = [
        entry_bytes + req.SerializeToString() + entry_bytes,  # before and after the name, twice
        req.SerializeToString() + b"\x22" + bytes([len(value + key)]) + value + key,  # value before key
        req.SerializeToString() + b"\xa2\x80\x00" + bytes([len(key + value)]) + key + value,  # a non-canonical tag
        req.SerializeToString() + b"\x22" + bytes([len(key + key + value)]) + key + key + value,  # key twice
    ]
    for body in odd:
        assert pb.ModelInferRequest.FromString(body).parameters[MUX_PARAM].string_param == "housing_Houston_TX"
        out = _raw_call(served, body)
        assert out.model_name == "housing_Chicago_IL"
        assert np.allclose(np.frombuffer(out.raw_output_contents[0], np.float32), want, rtol=1e-4)


def test_hundreds_of_calls_on_one_connection_keep_flow_control_exact(served: Serving) -> None:
    """More than 64 KiB added each way (the initial window): the slack the gateway keeps back must refill."""
    x, _ = generate("NewYork_NY", 1, seed=2)
    want = expected_prices("NewYork_NY", x)
    with _grpc(served) as g:
        for _ in range(5):  # concurrent calls on one connection, 100 at a time
            pending = [g.async_infer(LONG, [_ginput(x)], callback=_collect, headers=ALICE) for _ in range(100)]
            del pending
            _wait(100)
        for _ in range(60):
            res = g.infer(LONG, [_ginput(x)], headers=ALICE)
            assert res.get_response().model_name == LONG
        got = res.as_numpy("price")
        assert got is not None and np.allclose(got.reshape(-1), want, rtol=1e-4)


_done: list[Any] = []


def _collect(result: Any, error: Any) -> None:
    _done.append(error if error is not None else result)


def _wait(n: int) -> None:
    import time

    deadline = time.monotonic() + 60
    while len(_done) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    got, _done[:] = list(_done), []
    assert len(got) == n
    for r in got:
        assert not isinstance(r, InferenceServerException), r
        assert r.get_response().model_name == LONG


def test_messages_filling_the_stream_windows(served: Serving) -> None:
    """A request that leaves Triton's 4 MiB stream window 3 bytes short of the suffix (padded with an unknown field,
    which protobuf keeps and Triton ignores): the suffix waits for Triton's WINDOW_UPDATE. Then the same size as a
    request id, which Triton echoes: the answer fills the client's stream window the same way."""
    window = 4 * 1024 * 1024
    x = generate("Phoenix_AZ", 32, seed=3)[0]
    want = expected_prices("Phoenix_AZ", x)
    base = _request("housing_Phoenix_AZ", x).SerializeToString()
    pad = window - 3 - 5 - len(base) - 5  # field 15: a 1-byte tag, a 4-byte length
    body = base + b"\x7a" + _varint(pad) + b"p" * pad
    assert len(body) + 5 == window - 3
    out = _raw_call(served, body)
    assert out.model_name == "housing_Phoenix_AZ"
    assert np.allclose(np.frombuffer(out.raw_output_contents[0], np.float32), want, rtol=1e-4)
    req = _request("housing_Phoenix_AZ", x)
    req.id = "p" * pad
    out = _raw_call(served, req.SerializeToString())
    assert out.model_name == "housing_Phoenix_AZ" and out.id == req.id
    assert np.allclose(np.frombuffer(out.raw_output_contents[0], np.float32), want, rtol=1e-4)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out) + bytes((n,))


def test_stream_infer_is_refused_in_one_line_and_hostile_bytes_leave_it_serving(served: Serving) -> None:
    x, _ = generate("Chicago_IL", 2, seed=4)
    errors: list[Any] = []
    with _grpc(served) as g:
        g.start_stream(callback=lambda result, error: errors.append(error), headers=ALICE)
        g.async_stream_infer("housing_Chicago_IL", [_ginput(x)])
        g.stop_stream()
    assert errors and errors[0] is not None
    assert "multiplexed" in str(errors[0]) and "ModelStreamInfer" in str(errors[0]) and "\n" not in str(errors[0])
    z = np.tile(x[:1], (32, 1))  # (grpc sends a message that does not shrink uncompressed)
    with _grpc(served) as g, pytest.raises(InferenceServerException) as zerr:  # the suffix is for plain bytes
        g.infer("housing_Chicago_IL", [_ginput(z)], headers=ALICE, compression_algorithm="gzip")
    assert "UNIMPLEMENTED" in str(zerr.value.status()) and "uncompressed" in str(zerr.value)
    req = _request("housing_Chicago_IL", x).SerializeToString()
    hostile = [
        req + b"\x0a\x12housing_Houston_TX",  # a second model name
        req[:-3],  # cut inside a field
        req + b"\x22\x05\x0a\x03abc" + b"\x0b",  # a group start
        req + b"\xff" * 11,  # a varint too long
    ]
    for body in hostile:
        with pytest.raises(grpc.RpcError) as err:
            _raw_call(served, body)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, body[-20:]
    with _grpc(served) as g:
        got = g.infer("housing_Chicago_IL", [_ginput(x)], headers=ALICE).as_numpy("price")
    assert got is not None and np.allclose(got.reshape(-1), expected_prices("Chicago_IL", x), rtol=1e-4)


def _frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big") + payload


class _Raw:
    """A hand-driven HTTP/2 client: it grants window only when told, so the gateway's waiting is deterministic."""

    def __init__(self, addr: str, window: int) -> None:
        import socket

        import hpack

        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.enc, self.dec, self.buf = hpack.Encoder(), hpack.Decoder(), b""
        settings = (4).to_bytes(2, "big") + window.to_bytes(4, "big")  # SETTINGS_INITIAL_WINDOW_SIZE
        self.sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, settings))

    def call(self, sid: int, body: bytes) -> None:
        block = self.enc.encode(
            [(":method", "POST"), (":scheme", "http"), (":path", INFER), (":authority", "gw"), ("te", "trailers"),
             ("content-type", "application/grpc"), ("x-api-key", "alice-grpc-key")]
        )  # fmt: skip
        msg = b"\0" + len(body).to_bytes(4, "big") + body
        self.sock.sendall(_frame(1, 0x4, sid, block) + _frame(0, 0x1, sid, msg))

    def read(self, sid: int, seconds: float, want: int = 1 << 30) -> tuple[bytes, dict[str, str], bool]:
        """What arrives for ``sid`` within ``seconds`` (or until ``want`` bytes): (DATA payload, headers, ended)."""
        import time

        data, deadline = b"", time.monotonic() + seconds
        headers: dict[str, str] = {}
        while time.monotonic() < deadline and len(data) < want:
            while len(self.buf) >= 9 and len(self.buf) >= 9 + int.from_bytes(self.buf[:3], "big"):
                n = int.from_bytes(self.buf[:3], "big")
                t, flags, fsid, payload = (
                    self.buf[3],
                    self.buf[4],
                    int.from_bytes(self.buf[5:9], "big"),
                    self.buf[9 : 9 + n],
                )
                self.buf = self.buf[9 + n :]
                if t == 4 and not flags & 1:
                    self.sock.sendall(_frame(4, 1, 0))
                elif t == 6 and not flags & 1:
                    self.sock.sendall(_frame(6, 1, 0, payload))
                elif t == 1:
                    headers.update((str(k), str(v)) for k, v in self.dec.decode(payload))
                if fsid == sid and t == 0:
                    data += payload
                if fsid == sid and t in (0, 1) and flags & 1:
                    return data, headers, True
                if len(data) >= want:
                    return data, headers, False
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                break
            assert chunk, "connection closed"
            self.buf += chunk
        return data, headers, False


def test_an_answers_suffix_waits_for_the_clients_credit_then_triton_goes_on(served: Serving) -> None:
    """A client that grants no connection credit beyond the initial 64 KiB: the host's answer comes, the model's name
    appended to it waits (with Triton's trailers behind it) until the client's WINDOW_UPDATE pays for it. A client
    whose stream windows are under 2 KiB is refused such a call (the gateway keeps 2 KiB of each off Triton's view,
    for the suffix)."""
    assert served.grpc is not None
    model = "housing_LosAngeles_CA"
    x = generate("LosAngeles_CA", 2, seed=8)[0]
    want = expected_prices("LosAngeles_CA", x)
    tiny = _Raw(served.grpc, 40)  # 20 kept off: less than the 23-byte suffix
    tiny.call(1, _request(model, x).SerializeToString())
    data, headers, ended = tiny.read(1, 10)
    assert ended and data == b"" and headers.get("grpc-status") == "3" and "2 KiB" in headers["grpc-message"]
    tiny.sock.close()
    raw = _Raw(served.grpc, 1 << 20)
    raw.call(1, _request(model, x).SerializeToString())
    data, _, ended = raw.read(1, 10, want=5)
    size = int.from_bytes(data[1:5], "big")
    k = 2 + len(model)  # the suffix: field 1 = the model's name
    more, _, ended = raw.read(1, 10, want=size + 5 - k - len(data))
    data += more
    assert len(data) == size + 5 - k and not ended
    more, headers, ended = raw.read(1, 0.5)
    assert more == b"" and not ended and "grpc-status" not in headers  # the suffix waits, Triton's trailers too
    raw.sock.sendall(_frame(8, 0, 0, (1 << 20).to_bytes(4, "big")))  # connection credit
    more, headers, ended = raw.read(1, 10)
    data += more
    assert ended and headers.get("grpc-status") == "0", headers
    out = pb.ModelInferResponse.FromString(data[5:])
    assert len(data) == size + 5 and out.model_name == model
    assert np.allclose(np.frombuffer(out.raw_output_contents[0], np.float32), want, rtol=1e-4)
    raw.call(3, _request(model, x).SerializeToString())  # the connection goes on
    data, headers, ended = raw.read(3, 10)
    assert ended and pb.ModelInferResponse.FromString(data[5:]).model_name == model
    raw.sock.close()


def _counted(s: Serving, model: str) -> tuple[float, float]:
    """Hits + misses of ``model``, and the gateway's gRPC OK calls of it, on /metrics (ops may read them)."""
    req = urllib.request.Request(s.url + "/metrics", headers=OPS)
    with urllib.request.urlopen(req, timeout=10) as r:
        rows = parse_prometheus(r.read().decode())  # prometheus_client's parser
    cache = ("tritonctl_mme_model_cache_hits_total", "tritonctl_mme_model_cache_misses_total")
    counted = sum(v for (name, labels), v in rows.items() if name in cache and labels == f'{{model="{model}"}}')
    calls = sum(
        v
        for (name, labels), v in rows.items()
        if name == "tritonctl_gateway_requests_total"
        and all(f in labels for f in ('api="grpc"', f'model="{model}"', 'code="OK"'))
    )
    return counted, calls


def test_a_scrape_right_after_grpc_answers_counts_them(served: Serving) -> None:
    """gRPC answers from a host are noted like HTTP ones: a scrape right after them waits for the host's counters."""
    x, _ = generate("LosAngeles_CA", 2, seed=5)
    counted, calls = _counted(served, "housing_LosAngeles_CA")
    with _grpc(served) as g:
        for _ in range(3):
            g.infer("housing_LosAngeles_CA", [_ginput(x)], headers=ALICE)
    # the host's counters and the gateway's own series, under the model's name (never the host's)
    assert _counted(served, "housing_LosAngeles_CA") == (counted + 3, calls + 3)
