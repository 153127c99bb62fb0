"""The frame-forwarding gRPC front against its own real Triton: many clients on shared and own
connections, cold loads, per-message policy on one connection (HPACK state must stay in step), the message size
limit, tensors spanning many DATA frames both ways, and Triton gone (fast UNAVAILABLE, then recovery)."""

from __future__ import annotations

import queue
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from toolkit.gateway.auth import AuthConfig
from toolkit.gateway.core import GatewayCore, GatewayOptions
from toolkit.gateway.models import RepositoryModels
from toolkit.gateway.server import Gateway, GatewayAddresses, GatewayThread
from toolkit.server import EmbeddedTriton, ServerOptions
from toolkit.server.launcher import TritonEndpoint

MiB = 1024 * 1024
TIMEOUT_S = 2.0  # the gateway's request timeout: the "slow" model takes 4 s
BOB = {"x-api-key": "h2-bob-key"}  # invoke and admin on everything
CAROL = {"x-api-key": "h2-carol-key"}  # invoke on the model "echo" only
AUTH = {
    "principals": [
        {"name": "bob", "api_keys": ["h2-bob-key"], "policy": [{"Effect": "Allow", "Action": ["invoke", "admin"]}]},
        {
            "name": "carol",
            "api_keys": ["h2-carol-key"],
            "policy": [
                {
                    "Effect": "Allow",
                    "Action": "invoke",
                    "Resource": "endpoint/kserve",
                    "Condition": {"StringLike": {"sagemaker:TargetModel": ["echo"]}},
                }
            ],
        },
    ]
}
MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "IN").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", x * 2)]))
        return out
"""
CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
input [{{ name: "IN", data_type: TYPE_FP32, dims: [-1] }}]
output [{{ name: "OUT", data_type: TYPE_FP32, dims: [-1] }}]
instance_group [{{ kind: KIND_CPU, count: 1 }}]
"""


class H2Stack:
    def __init__(self, triton: EmbeddedTriton, gw: GatewayAddresses, loads: list[str], core: GatewayCore) -> None:
        self.triton, self.gw, self.loads, self.core = triton, gw, loads, core

    def wait_idle(self) -> int:
        """The gateway's in-flight count once the last answers' bookkeeping ran (it follows the write)."""
        deadline = time.monotonic() + 5
        while self.core.inflight and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.core.inflight


@pytest.fixture(scope="module")
def h2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[H2Stack]:
    repo = tmp_path_factory.mktemp("h2_repo")
    for name in ("echo", "echo_cold", "echo_cancel", "slow"):
        (repo / name / "1").mkdir(parents=True)
        code = MODEL.replace("out = []", "time.sleep(4)\n        out = []") if name == "slow" else MODEL
        (repo / name / "1" / "model.py").write_text("import time\n" + textwrap.dedent(code))
        (repo / name / "config.pbtxt").write_text(CONFIG.format(name=name))
    work = tmp_path_factory.mktemp("h2_work")
    triton = EmbeddedTriton(ServerOptions(repository=repo, workdir=work, log_file=work / "t.log", load=["echo"]))
    triton.start(timeout=90)
    loads: list[str] = []
    models = RepositoryModels(triton.endpoint, repo, on_loaded=loads.append)
    opts = GatewayOptions(
        http_port=0, grpc_port=0, max_body_bytes=2 * MiB, timeout_s=TIMEOUT_S, auth=AuthConfig.from_dict(AUTH)
    )
    gw = Gateway(opts, triton.endpoint, models=models)
    runner = GatewayThread(gw)
    try:
        yield H2Stack(triton, runner.start(), loads, gw.core)
    finally:
        runner.stop()
        triton.stop()


def _input(x: np.ndarray) -> grpcclient.InferInput:
    i = grpcclient.InferInput("IN", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    return i


def _echo(c: grpcclient.InferenceServerClient, x: np.ndarray, model: str = "echo", **kw: Any) -> np.ndarray:
    out = c.infer(model, [_input(x)], headers=kw.pop("headers", BOB), **kw).as_numpy("OUT")
    assert out is not None
    return out


def test_many_concurrent_clients_match_direct_triton(h2: H2Stack) -> None:
    """Threads with their own connection and threads sharing one (interleaved streams): every answer is Triton's."""
    assert h2.gw.grpc
    direct = grpcclient.InferenceServerClient(h2.triton.endpoint.grpc)
    shared = grpcclient.InferenceServerClient(h2.gw.grpc)
    rng = np.random.default_rng(7)
    inputs = [rng.random(int(n), dtype=np.float32) for n in rng.integers(1, 5000, size=48)]
    expected = [direct.infer("echo", [_input(x)]).as_numpy("OUT") for x in inputs]
    failures: list[str] = []

    def worker(k: int, own: bool) -> None:
        c = grpcclient.InferenceServerClient(h2.gw.grpc or "") if own else shared
        try:
            for j in range(k, len(inputs), 6):
                got = _echo(c, inputs[j])
                if not np.array_equal(got, expected[j]):
                    failures.append(f"call {j}: wrong answer")
                if not own:  # refusals injected between Triton's frames on a busy shared connection
                    with pytest.raises(InferenceServerException, match="PERMISSION_DENIED"):
                        _echo(c, inputs[j], "echo_cold", headers=CAROL)
        except BaseException as exc:  # pytest.raises fails with a BaseException: a thread would just end with it
            failures.append(f"worker {k}: {exc!r}")
        finally:
            if own:
                c.close()

    threads = [threading.Thread(target=worker, args=(k, k % 2 == 0)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures
    assert h2.wait_idle() == 0  # every call's concurrency slot ended with its response
    assert shared.is_server_ready(headers=BOB) and shared.get_server_metadata(headers=BOB).name == "triton"
    shared.close()
    direct.close()


def test_cold_model_loads_once_under_concurrent_calls(h2: H2Stack) -> None:
    x = np.arange(16, dtype=np.float32)
    results: queue.Queue[Any] = queue.Queue()

    def call() -> None:
        c = grpcclient.InferenceServerClient(h2.gw.grpc or "")
        try:
            results.put(_echo(c, x, "echo_cold"))
        except Exception as exc:
            results.put(exc)
        finally:
            c.close()

    threads = [threading.Thread(target=call) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    got = [results.get_nowait() for _ in threads]
    assert all(isinstance(g, np.ndarray) and np.array_equal(g, x * 2) for g in got), got
    assert h2.loads.count("echo_cold") == 1, h2.loads


def test_client_cancel_during_a_cold_load_releases_the_call(h2: H2Stack) -> None:
    """The client gives up (RST_STREAM) while its model loads: the call's slot and pin end, nothing is forwarded."""
    c = grpcclient.InferenceServerClient(h2.gw.grpc or "")
    x = np.arange(4, dtype=np.float32)
    with pytest.raises(InferenceServerException, match="DEADLINE_EXCEEDED"):
        _echo(c, x, "echo_cancel", client_timeout=0.02)
    assert h2.wait_idle() == 0
    assert np.array_equal(_echo(c, x, "echo_cancel"), x * 2)
    assert h2.wait_idle() == 0
    c.close()


def test_request_timeout_is_deadline_exceeded_and_the_connection_goes_on(h2: H2Stack) -> None:
    c = grpcclient.InferenceServerClient(h2.gw.grpc or "")
    x = np.arange(4, dtype=np.float32)
    assert c.get_model_config("slow", headers=BOB).config.name == "slow"  # loaded (no infer): the timer is Triton's
    t = time.monotonic()
    with pytest.raises(InferenceServerException, match="DEADLINE_EXCEEDED") as e:
        _echo(c, x, "slow")
    assert TIMEOUT_S - 0.1 < time.monotonic() - t < TIMEOUT_S + 1.0 and "did not answer" in str(e.value)
    assert h2.wait_idle() == 0
    assert np.array_equal(_echo(c, x), x * 2)
    c.close()


def test_denials_on_one_connection_leave_it_working(h2: H2Stack) -> None:
    """Refused calls are answered on the same connection as allowed ones, alternating: HPACK must stay in step."""
    c = grpcclient.InferenceServerClient(h2.gw.grpc or "")
    x = np.ones(8, dtype=np.float32)
    for round_ in range(4):
        assert np.array_equal(_echo(c, x + round_, headers=CAROL), (x + round_) * 2)
        with pytest.raises(InferenceServerException, match="PERMISSION_DENIED") as e:
            _echo(c, x, "echo_cold", headers=CAROL)
        assert "carol" in str(e.value) and "echo_cold" in str(e.value)
        with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
            _echo(c, x, headers={"x-api-key": f"guess-{round_}"})
        with pytest.raises(InferenceServerException, match="PERMISSION_DENIED"):
            c.get_model_repository_index(headers=CAROL)  # admin-only
        with pytest.raises(InferenceServerException, match="UNIMPLEMENTED"):
            c.get_system_shared_memory_status(headers=BOB)
        with pytest.raises(InferenceServerException, match="NOT_FOUND"):
            _echo(c, x, "no_such_model")
        assert np.array_equal(_echo(c, x, headers=BOB), x * 2)
        assert c.get_model_metadata("echo", headers=BOB).name == "echo"
    c.close()


def test_stream_checks_every_message(h2: H2Stack) -> None:
    """ModelStreamInfer: an allowed message is answered, a later denied one ends the stream with PERMISSION_DENIED."""
    got: queue.Queue[Any] = queue.Queue()
    c = grpcclient.InferenceServerClient(h2.gw.grpc or "")
    c.start_stream(callback=lambda result, error: got.put((result, error)), headers=CAROL)
    x = np.arange(4, dtype=np.float32)
    c.async_stream_infer("echo", [_input(x)], request_id="ok")
    first, err = got.get(timeout=30)
    assert err is None and np.array_equal(first.as_numpy("OUT"), x * 2)
    c.async_stream_infer("echo_cold", [_input(x)], request_id="denied")
    _, err = got.get(timeout=30)
    c.stop_stream()
    c.close()
    assert err is not None and "PERMISSION_DENIED" in str(err.status()), err


def _crafted(first: str, last: str, tensor_bytes: int = 16) -> bytes:
    """A ModelInferRequest naming ``first`` and, after its tensor, ``last`` again in field 1: protobuf runs ``last``."""
    from tritonclient.grpc import service_pb2

    req = service_pb2.ModelInferRequest(model_name=first)
    t = req.inputs.add(name="IN", datatype="FP32")
    t.shape.append(tensor_bytes // 4)
    req.raw_input_contents.append(bytes(tensor_bytes))
    tail = service_pb2.ModelInferRequest(model_name=last).SerializeToString()
    data = req.SerializeToString() + tail
    assert service_pb2.ModelInferRequest.FromString(data).model_name == last
    return data


@pytest.mark.parametrize("tensor_bytes", [16, 1 * MiB])
def test_a_repeated_model_name_is_refused_before_triton_runs_it(h2: H2Stack, tensor_bytes: int) -> None:
    """The review's gRPC bypass: an allowed name first, a denied one last (protobuf takes the last). Unary and
    streaming, and with the second name 1 MiB (many DATA frames) after the first: refused, nothing loaded."""
    import grpc

    direct = grpcclient.InferenceServerClient(h2.triton.endpoint.grpc)
    _echo(direct, np.ones(2, np.float32), "echo_cold")  # loaded, so its statistics can show it never ran

    def runs(model: str = "echo_cold") -> int:
        return int(direct.get_inference_statistics(model).model_stats[0].inference_stats.success.count)

    before = runs()
    with grpc.insecure_channel(h2.gw.grpc or "") as ch:
        unary = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        md = tuple(CAROL.items())
        with pytest.raises(grpc.RpcError) as e:
            unary(_crafted("echo", "echo_cold", tensor_bytes), metadata=md, timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "more than once" in e.value.details()
        stream = ch.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
        with pytest.raises(grpc.RpcError) as e:
            list(stream(iter([_crafted("echo", "echo_cold", tensor_bytes)]), metadata=md, timeout=30))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        echo_before = runs("echo")
        two = ch.stream_unary("/inference.GRPCInferenceService/ModelInfer")
        ok = _crafted("echo", "echo")[: -len(b"\x0a\x04echo")]
        try:  # two messages on a unary call: refused, or (if Triton answered the first already) the second is dropped
            two(iter([ok, ok]), metadata=md, timeout=30)
        except grpc.RpcError as exc:
            assert exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED), exc
        assert runs("echo") - echo_before <= 1
    assert runs() == before
    direct.close()
    c = grpcclient.InferenceServerClient(h2.gw.grpc or "")
    x = np.arange(3, dtype=np.float32)
    np.testing.assert_array_equal(_echo(c, x, headers=CAROL), x * 2)  # the gateway and Triton still serve
    c.close()
    assert h2.wait_idle() == 0


def test_big_tensors_and_the_size_limit(h2: H2Stack) -> None:
    c = grpcclient.InferenceServerClient(h2.gw.grpc or "")
    rng = np.random.default_rng(3)
    for nbytes in (1 * MiB, 2 * MiB - 4096):  # many DATA frames each way, and the limit minus the protobuf framing
        x = rng.random(nbytes // 4, dtype=np.float32)
        np.testing.assert_array_equal(_echo(c, x), x * 2)
    for _ in range(3):  # refused while the client is still sending: the dropped bytes' window is given back
        with pytest.raises(InferenceServerException, match="RESOURCE_EXHAUSTED"):
            _echo(c, rng.random(3 * MiB // 4, dtype=np.float32))
    x = rng.random(MiB // 4, dtype=np.float32)
    np.testing.assert_array_equal(_echo(c, x, client_timeout=20), x * 2)  # a leaked window would stall this call
    c.close()


def test_compressed_requests(h2: H2Stack) -> None:
    """gzip/deflate messages are decompressed to read the model; one that stays over 64 KiB compressed is refused
    with a clear INVALID_ARGUMENT (holding it whole could wait on flow-control window only Triton grants)."""
    c = grpcclient.InferenceServerClient(h2.gw.grpc or "")
    x = np.arange(50_000, dtype=np.float32)  # compresses well
    for alg in ("gzip", "deflate"):
        np.testing.assert_array_equal(_echo(c, x, compression_algorithm=alg), x * 2)
    noise = np.random.default_rng(5).random(64_000, dtype=np.float32)
    with pytest.raises(InferenceServerException, match="INVALID_ARGUMENT") as e:
        _echo(c, noise, compression_algorithm="gzip")
    assert "64 KiB" in str(e.value)
    np.testing.assert_array_equal(_echo(c, noise), noise * 2)  # uncompressed, the same tensor is fine
    c.close()


def test_triton_unreachable_is_unavailable_at_once() -> None:
    """No Triton behind the port: every call fails fast with UNAVAILABLE (and again, without a reconnect backoff)."""
    dead = TritonEndpoint("127.0.0.1:9", "127.0.0.1:9", "127.0.0.1:9")
    runner = GatewayThread(Gateway(GatewayOptions(http_port=0, grpc_port=0), dead))
    addrs = runner.start()
    c = grpcclient.InferenceServerClient(addrs.grpc or "")
    try:
        for _ in range(3):
            t = time.monotonic()
            with pytest.raises(InferenceServerException, match="UNAVAILABLE"):
                c.is_server_live(client_timeout=10)
            assert time.monotonic() - t < 1.5
            time.sleep(_linger())
    finally:
        c.close()
        runner.stop()


def _linger() -> float:
    from toolkit.gateway.h2_front import _DEAD_LINGER_S

    return _DEAD_LINGER_S + 0.1


def test_triton_killed_then_back_on_the_same_ports(h2: H2Stack) -> None:
    """Last (restarts the module's Triton): calls during the outage are UNAVAILABLE at once; afterwards they work."""
    c = grpcclient.InferenceServerClient(h2.gw.grpc or "")
    x = np.arange(8, dtype=np.float32)
    assert np.array_equal(_echo(c, x), x * 2)
    ep = h2.triton.endpoint
    h2.triton.stop()
    for _ in range(2):
        t = time.monotonic()
        with pytest.raises(InferenceServerException, match="UNAVAILABLE"):
            _echo(c, x, client_timeout=10)
        assert time.monotonic() - t < 1.5
        time.sleep(_linger())
    o = h2.triton.options
    o.http_port, o.grpc_port, o.metrics_port = (int(a.rsplit(":", 1)[1]) for a in (ep.http, ep.grpc, ep.metrics))
    h2.triton.start(timeout=90)
    deadline = time.monotonic() + 10
    while True:
        try:
            assert np.array_equal(_echo(c, x, client_timeout=10), x * 2)
            break
        except InferenceServerException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    c.close()


# -- raw HTTP/2: what grpc clients rarely send (priority, CONTINUATION, padding, a split message prefix) ---------------
def _frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big") + payload


def _raw_call(sock: Any, enc: Any, dec: Any, sid: int, key: str, model: str, x: np.ndarray) -> tuple[dict, bytes]:
    """One ModelInfer written frame by frame; returns (response headers + trailers, response message bytes). A denied
    call's DATA is padded: the gateway must read the model through the padding (Triton itself refuses padded frames,
    so an allowed call's frames are plain)."""
    from tritonclient.grpc import service_pb2

    req = service_pb2.ModelInferRequest(model_name=model)
    t = req.inputs.add(name="IN", datatype="FP32")
    t.shape.append(x.size)
    req.raw_input_contents.append(x.tobytes())
    body = req.SerializeToString()
    msg = b"\0" + len(body).to_bytes(4, "big") + body
    path = "/inference.GRPCInferenceService/ModelInfer"
    block = enc.encode(
        [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "gw"), ("te", "trailers"),
         ("content-type", "application/grpc"), ("x-api-key", key)]
    )  # fmt: skip
    priority = (0).to_bytes(4, "big") + b"\x0f"
    first = b"\x02" + msg[:3] + b"\0\0" if key == "h2-carol-key" and model != "echo" else msg[:3]
    sock.sendall(
        _frame(1, 0x20, sid, priority + block[:5])  # PRIORITY, no END_HEADERS
        + _frame(9, 0x4, sid, block[5:])  # CONTINUATION, END_HEADERS
        + _frame(0, 0x8 if len(first) > 3 else 0, sid, first)  # 3 bytes of the 5-byte prefix (padded: PADDED)
        + _frame(0, 0x1, sid, msg[3:])  # END_STREAM
    )
    headers: dict[str, str] = {}
    data = b""
    buf = b""
    while True:
        while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
            chunk = sock.recv(65536)
            assert chunk, "connection closed"
            buf += chunk
        n = int.from_bytes(buf[:3], "big")
        ftype, flags, fsid, payload, buf = buf[3], buf[4], int.from_bytes(buf[5:9], "big"), buf[9 : 9 + n], buf[9 + n :]
        if ftype == 4 and not flags & 1:
            sock.sendall(_frame(4, 1, 0, b""))  # SETTINGS ACK
        elif ftype == 6 and not flags & 1:
            sock.sendall(_frame(6, 1, 0, payload))  # PING ACK
        elif ftype == 1:
            headers.update(dec.decode(payload))  # every block, in order: this decoder must stay in step too
        if fsid == sid and ftype == 0:
            data += payload
        if fsid == sid and ftype in (0, 1) and flags & 1:
            return headers, data


def test_raw_frames_padding_priority_continuation_and_hpack_in_step(h2: H2Stack) -> None:
    import socket

    import hpack
    from tritonclient.grpc import service_pb2

    host, port = (h2.gw.grpc or "").rsplit(":", 1)
    enc, dec = hpack.Encoder(), hpack.Decoder()
    x = np.arange(6, dtype=np.float32)
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, b""))
        for sid, key, model, status in ((1, "h2-bob-key", "echo", "0"), (3, "h2-carol-key", "echo_cold", "7"),
                                        (5, "h2-carol-key", "echo", "0"), (7, "h2-bob-key", "echo", "0")):  # fmt: skip
            headers, data = _raw_call(sock, enc, dec, sid, key, model, x)
            assert headers.get("grpc-status") == status, (sid, headers)
            if status == "0":
                resp = service_pb2.ModelInferResponse.FromString(data[5:])
                assert np.array_equal(np.frombuffer(resp.raw_output_contents[0], np.float32), x * 2)
            else:
                assert "carol" in headers.get("grpc-message", "") and model in headers["grpc-message"] and not data


# -- hostile connections: zero windows, floods, oversize frames, connection caps, idle connections ------------------
@pytest.fixture(scope="module")
def tight(h2: H2Stack) -> Iterator[GatewayAddresses]:
    """A second gateway over the same Triton with small limits."""
    opts = GatewayOptions(
        http_port=0, grpc_port=0, max_concurrency=4, max_connections_per_client=6, grpc_idle_s=1.0,
        grpc_head_timeout_s=1.0, timeout_s=30.0,
    )  # fmt: skip
    runner = GatewayThread(Gateway(opts, h2.triton.endpoint, models=RepositoryModels(h2.triton.endpoint, None)))
    try:
        yield runner.start()
    finally:
        runner.stop()


def _h2_socket(addr: str, settings: bytes = b"") -> Any:
    import socket

    host, port = addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, settings))
    return sock


def _closed_within(sock: Any, seconds: float) -> bool:
    """True when the gateway closes the connection (EOF or reset) within ``seconds``; frames it sends are read."""
    sock.settimeout(seconds)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except OSError:  # timeout
        return False
    return False


def test_zero_window_client_cannot_starve_the_concurrency_limit(tight: GatewayAddresses) -> None:
    """Twice max_concurrency calls on a connection that never lets an answer through (initial window 0): each
    call's slot ends when Triton's answer starts, so another client is served at once instead of 429."""
    import hpack
    from tritonclient.grpc import service_pb2

    sock = _h2_socket(tight.grpc or "", (4).to_bytes(2, "big") + (0).to_bytes(4, "big"))  # INITIAL_WINDOW_SIZE 0
    enc = hpack.Encoder()
    req = service_pb2.ModelInferRequest(model_name="echo")
    t = req.inputs.add(name="IN", datatype="FP32")
    t.shape.append(4)
    req.raw_input_contents.append(np.ones(4, np.float32).tobytes())
    body = req.SerializeToString()
    msg = b"\0" + len(body).to_bytes(4, "big") + body
    hdrs = [(":method", "POST"), (":scheme", "http"), (":path", "/inference.GRPCInferenceService/ModelInfer"),
            (":authority", "gw"), ("te", "trailers"), ("content-type", "application/grpc")]  # fmt: skip
    for k in range(8):
        sid = 1 + 2 * k
        sock.sendall(_frame(1, 0x4, sid, enc.encode(hdrs)) + _frame(0, 0x1, sid, msg))
    c = grpcclient.InferenceServerClient(tight.grpc or "")
    x = np.arange(3, dtype=np.float32)
    deadline = time.monotonic() + 10
    while True:  # the 8 stalled calls are answered by Triton in a moment; their slots come back with the answers
        try:
            np.testing.assert_array_equal(c.infer("echo", [_input(x)]).as_numpy("OUT"), x * 2)
            break
        except InferenceServerException as exc:
            assert "RESOURCE_EXHAUSTED" in str(exc.status()), exc
            assert time.monotonic() < deadline, "the stalled connection still holds every slot"
            time.sleep(0.1)
    for _ in range(6):  # and keeps being served while the stalled connection stays open
        np.testing.assert_array_equal(c.infer("echo", [_input(x)]).as_numpy("OUT"), x * 2)
    c.close()
    sock.close()


def test_continuation_flood_and_oversize_frames_close_the_connection(tight: GatewayAddresses) -> None:
    import hpack

    sock = _h2_socket(tight.grpc or "")
    block = hpack.Encoder().encode([(":method", "POST"), (":path", "/inference.GRPCInferenceService/ModelInfer")])
    sock.sendall(_frame(1, 0, 1, block))  # HEADERS without END_HEADERS, then CONTINUATION past 64 KiB
    closed = False
    try:
        for _ in range(40):
            sock.sendall(_frame(9, 0, 1, b"\x00" * 16000))
    except (BrokenPipeError, ConnectionResetError):
        closed = True
    assert closed or _closed_within(sock, 5)
    sock.close()
    sock = _h2_socket(tight.grpc or "")
    sock.sendall((16 * MiB - 1).to_bytes(3, "big") + bytes((0, 0)) + (1).to_bytes(4, "big"))  # a 16 MiB DATA header
    assert _closed_within(sock, 5)  # refused from its 9-byte header, before any payload is buffered
    sock.close()
    c = grpcclient.InferenceServerClient(tight.grpc or "")
    assert c.is_server_live()
    c.close()


def test_connection_caps_and_idle_connections(tight: GatewayAddresses) -> None:
    socks = [_h2_socket(tight.grpc or "") for _ in range(6)]  # the per-client cap
    extra = _h2_socket(tight.grpc or "")
    assert _closed_within(extra, 3), "a connection over the per-client cap stayed open"
    extra.close()
    for s in socks:  # idle (no call open): GOAWAY and closed after grpc_idle_s
        assert _closed_within(s, 5), "an idle connection stayed open"
        s.close()
    import socket

    host, port = (tight.grpc or "").rsplit(":", 1)
    silent = socket.create_connection((host, int(port)), timeout=10)
    assert _closed_within(silent, 5), "a connection that never sent the preface stayed open"
    silent.close()
    c = grpcclient.InferenceServerClient(tight.grpc or "")  # caps freed: a new client is served
    assert c.is_server_live()
    c.close()
