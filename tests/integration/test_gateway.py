"""The gateway over a real, supervised Triton: tritonclient (HTTP + gRPC) unchanged, boto3 sagemaker-runtime for every
endpoint mode, limits, malformed requests, and Triton killed mid-traffic (last: it restarts the shared server)."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from botocore.config import Config
from botocore.exceptions import ClientError
from tritonclient.utils import InferenceServerException

from toolkit.gateway.core import GatewayOptions
from toolkit.gateway.server import Gateway, GatewayAddresses, GatewayThread
from toolkit.loadtest.serverstats import parse_prometheus
from toolkit.mme.manager import ModelManager
from toolkit.server import EmbeddedTriton, ServerOptions, Supervisor
from toolkit.spec.models import EndpointSpec, Manifest

X = np.random.default_rng(0).random((2, 64), dtype=np.float32)
RAW = np.random.default_rng(1).random((3, 8), dtype=np.float32)


class Stack:
    def __init__(
        self, sup: Supervisor, main: GatewayAddresses, limited: GatewayAddresses, manager: ModelManager
    ) -> None:
        self.sup, self.main, self.limited, self.manager = sup, main, limited, manager


def _endpoints(manifest: Manifest) -> list[EndpointSpec]:
    serial = EndpointSpec(name="housing-ny", mode="serial", models=["housing_preprocess", "housing_NewYork_NY"])
    return [*manifest.endpoints, serial]


@pytest.fixture(scope="session")
def stack(example_repo: Path, example_manifest: Manifest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("gw_triton")
    opts = ServerOptions(repository=example_repo, workdir=work, log_file=work / "triton.log", load=["digits_mlp"])
    sup = Supervisor(EmbeddedTriton(opts), index_interval=0.5, reload="lazy")
    sup.start(timeout=90)
    runners = []
    addrs = []
    managers = []
    for extra in ({}, {"max_body_bytes": 64 * 1024, "max_concurrency": 2, "timeout_s": 5.0}):
        o = GatewayOptions(http_port=0, grpc_port=0, admin_port=0, endpoints=_endpoints(example_manifest), **extra)
        mm = ModelManager(sup.endpoint, repository=example_repo)
        managers.append(mm)
        gw = Gateway(o, sup.endpoint, models=mm)
        gw.attach(sup)
        runner = GatewayThread(gw)
        addrs.append(runner.start())
        runners.append((runner, gw))
    sup.on_state = lambda s: [gw.triton_state_changed(s) for _, gw in runners]  # both gateways follow it
    yield Stack(sup, addrs[0], addrs[1], managers[0])
    for r, _ in runners:
        r.stop()
    sup.stop()


def _sm(addr: GatewayAddresses):  # type: ignore[no-untyped-def]
    return boto3.client(
        "sagemaker-runtime", endpoint_url=addr.http_url, region_name="us-east-1", aws_access_key_id="AKIDTEST",
        aws_secret_access_key="dummy", config=Config(retries={"max_attempts": 1}, read_timeout=30),
    )  # fmt: skip


def _v2(name: str, arr: np.ndarray) -> bytes:
    return json.dumps(
        {"inputs": [{"name": name, "datatype": "FP32", "shape": list(arr.shape), "data": arr.ravel().tolist()}]}
    ).encode()


# -- KServe v2 -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_http_unchanged(stack: Stack, binary: bool) -> None:
    c = httpclient.InferenceServerClient(stack.main.http)
    assert c.is_server_live() and c.is_server_ready()
    i = httpclient.InferInput("X", list(X.shape), "FP32")
    i.set_data_from_numpy(X, binary_data=binary)
    out = [httpclient.InferRequestedOutput("probabilities", binary_data=binary)]
    r = c.infer("digits_forest", [i], outputs=out)  # cold: loaded through the MME manager first
    p = r.as_numpy("probabilities")
    assert p.shape == (2, 10) and np.allclose(p.sum(axis=1), 1.0, atol=1e-4)
    assert c.is_model_ready("digits_forest")
    assert c.get_model_metadata("digits_forest")["inputs"][0]["name"] == "X"
    assert c.get_model_config("digits_forest")["max_batch_size"] == 64
    assert c.get_inference_statistics("digits_forest")["model_stats"][0]["name"] == "digits_forest"
    with pytest.raises(InferenceServerException, match="unknown model"):
        c.infer("no_such_model", [i])
    c.close()


def test_tritonclient_grpc_unchanged(stack: Stack) -> None:
    assert stack.main.grpc
    c = grpcclient.InferenceServerClient(stack.main.grpc)
    assert c.is_server_live() and c.is_server_ready()
    assert c.get_server_metadata().name == "triton"
    i = grpcclient.InferInput("X", list(X.shape), "FP32")
    i.set_data_from_numpy(X)
    r = c.infer("digits_logreg", [i])
    assert r.as_numpy("label").shape[0] == 2 and c.is_model_ready("digits_logreg")
    assert c.get_model_metadata("digits_logreg").name == "digits_logreg"
    assert c.get_model_config("digits_logreg").config.max_batch_size == 64
    with pytest.raises(InferenceServerException, match="PERMISSION_DENIED"):
        c.load_model("housing_Houston_TX")  # the repository API is admin-only
    with pytest.raises(InferenceServerException, match=r"not found|unknown"):
        c.infer("no_such_model", [i])
    c.close()


def test_grpc_stream_infer_through_the_gateway(stack: Stack) -> None:
    """ModelStreamInfer (bidirectional streaming) is forwarded too; a cold model is loaded for the first request."""
    import queue

    results: queue.Queue[Any] = queue.Queue()
    c = grpcclient.InferenceServerClient(stack.main.grpc)
    c.start_stream(callback=lambda result, error: results.put((result, error)))
    for k in range(3):
        i = grpcclient.InferInput("X", list(X.shape), "FP32")
        i.set_data_from_numpy(X)
        c.async_stream_infer("digits_forest", [i], request_id=str(k))
    got = [results.get(timeout=30) for _ in range(3)]
    c.stop_stream()
    c.close()
    assert all(err is None for _, err in got), got
    assert sorted(r.get_response().id for r, _ in got) == ["0", "1", "2"]
    direct = grpcclient.InferenceServerClient(stack.sup.endpoint.grpc)
    i = grpcclient.InferInput("X", list(X.shape), "FP32")
    i.set_data_from_numpy(X)
    expected = direct.infer("digits_forest", [i]).as_numpy("label")
    direct.close()
    for r, _ in got:
        np.testing.assert_array_equal(r.as_numpy("label"), expected)


def test_grpc_stream_errors_keep_their_status(stack: Stack) -> None:
    """A failure inside the stream (here an unknown model) reaches the client as NOT_FOUND, not CANCELLED."""
    import queue

    errors: queue.Queue[Any] = queue.Queue()
    c = grpcclient.InferenceServerClient(stack.main.grpc)
    c.start_stream(callback=lambda result, error: errors.put(error))
    i = grpcclient.InferInput("X", list(X.shape), "FP32")
    i.set_data_from_numpy(X)
    c.async_stream_infer("no_such_model", [i])
    err = errors.get(timeout=30)
    c.stop_stream()
    c.close()
    assert err is not None and "NOT_FOUND" in str(err.status()) and "no_such_model" in str(err), err


def test_repository_api_only_on_admin_port(stack: Stack) -> None:
    with pytest.raises(InferenceServerException, match="not authorized"):
        httpclient.InferenceServerClient(stack.main.http).unload_model("digits_mlp")
    assert stack.main.admin
    admin = httpclient.InferenceServerClient(stack.main.admin)
    assert {m["name"] for m in admin.get_model_repository_index()} >= {"digits_mlp", "housing_Chicago_IL"}
    admin.load_model("housing_Houston_TX")
    assert httpclient.InferenceServerClient(stack.main.http).is_model_ready("housing_Houston_TX")


# -- SageMaker runtime -------------------------------------------------------------------------------------------------
def test_boto3_multi_model_target_model(stack: Stack) -> None:
    sm = _sm(stack.main)
    body = _v2("features", np.ones((1, 10), np.float32))
    r = sm.invoke_endpoint(
        EndpointName="housing", TargetModel="housing_Chicago_IL.tar.gz", ContentType="application/json", Body=body
    )
    out = json.loads(r["Body"].read())
    assert out["model_name"] == "housing_Chicago_IL" and r["InvokedProductionVariant"] == "AllTraffic"
    with pytest.raises(ClientError) as e:
        sm.invoke_endpoint(EndpointName="housing", ContentType="application/json", Body=body)
    assert e.value.response["Error"]["Code"] == "ValidationError"
    with pytest.raises(sm.exceptions.ValidationError, match="not found"):
        sm.invoke_endpoint(EndpointName="housing", TargetModel="digits_mlp", ContentType="application/json", Body=body)


def test_boto3_multi_container_and_binary_body(stack: Stack) -> None:
    sm = _sm(stack.main)
    for host in ("digits_logreg", "digits_mlp", "digits_forest"):
        r = sm.invoke_endpoint(
            EndpointName="digits-mce", TargetContainerHostname=host, ContentType="application/json", Body=_v2("X", X)
        )
        assert json.loads(r["Body"].read())["model_name"] == host
    for missing in ({}, {"TargetContainerHostname": "tensorflow-mnist"}):
        with pytest.raises(sm.exceptions.ValidationError):
            sm.invoke_endpoint(EndpointName="digits-mce", ContentType="application/json", Body=_v2("X", X), **missing)
    # binary tensor extension through SageMaker's content type, response in the same form
    tensor = {"name": "X", "datatype": "FP32", "shape": [2, 64], "parameters": {"binary_data_size": X.nbytes}}
    head = json.dumps(
        {"inputs": [tensor], "outputs": [{"name": "label", "parameters": {"binary_data": True}}]}
    ).encode()
    ctype = f"application/vnd.sagemaker-triton.binary+json;json-header-size={len(head)}"
    r = sm.invoke_endpoint(
        EndpointName="digits-mce", TargetContainerHostname="digits_mlp", ContentType=ctype, Body=head + X.tobytes()
    )
    n = int(r["ContentType"].rsplit("=", 1)[1])
    data = r["Body"].read()
    assert json.loads(data[:n])["outputs"][0]["name"] == "label" and len(data) - n == 2 * 8


def test_boto3_variants_and_serial(stack: Stack) -> None:
    sm = _sm(stack.main)
    seen = {
        sm.invoke_endpoint(EndpointName="digits", ContentType="application/json", Body=_v2("X", X))[
            "InvokedProductionVariant"
        ]
        for _ in range(30)
    }
    assert seen == {"logreg", "mlp"}  # 0.7/0.3 weights: both drawn in 30 tries (p(miss) < 1e-4)
    r = sm.invoke_endpoint(EndpointName="digits", TargetVariant="mlp", ContentType="application/json", Body=_v2("X", X))
    assert r["InvokedProductionVariant"] == "mlp" and json.loads(r["Body"].read())["model_name"] == "digits_mlp"
    with pytest.raises(sm.exceptions.ValidationError, match="Variant"):
        sm.invoke_endpoint(
            EndpointName="digits", TargetVariant="nope", ContentType="application/json", Body=_v2("X", X)
        )
    r = sm.invoke_endpoint(EndpointName="housing-ny", ContentType="application/json", Body=_v2("raw", RAW))
    out = json.loads(r["Body"].read())
    assert out["model_name"] == "housing_NewYork_NY" and out["outputs"][0]["shape"] == [3, 1]


def test_model_error_is_424_with_original_message(stack: Stack) -> None:
    sm = _sm(stack.main)
    bad = json.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]})
    with pytest.raises(sm.exceptions.ModelError) as e:
        sm.invoke_endpoint(
            EndpointName="digits-mce", TargetContainerHostname="digits_mlp", ContentType="application/json", Body=bad
        )
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert "unexpected shape" in e.value.response["Error"]["Message"] and e.value.response["OriginalStatusCode"] == 400


# -- limits ------------------------------------------------------------------------------------------------------------
def test_body_limit_and_concurrency_limit(stack: Stack) -> None:
    sm = _sm(stack.limited)
    big = _v2("X", np.zeros((64, 64), np.float32)) + b" " * 70_000
    with pytest.raises(ClientError) as e:
        sm.invoke_endpoint(
            EndpointName="digits-mce", TargetContainerHostname="digits_mlp", ContentType="application/json", Body=big
        )
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413

    async def burst() -> list[int]:
        body = _v2("X", np.zeros((64, 64), np.float32))
        async with aiohttp.ClientSession() as s:

            async def one() -> int:
                async with s.post(f"{stack.limited.http_url}/v2/models/digits_forest/infer", data=body) as r:
                    await r.read()
                    return r.status

            return await asyncio.gather(*[one() for _ in range(24)])

    codes = asyncio.run(burst())
    assert set(codes) <= {200, 429} and 429 in codes and 200 in codes, codes


# -- malformed input ---------------------------------------------------------------------------------------------
def _raw(addr: str, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> int:
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def test_malformed_requests_get_4xx_and_gateway_keeps_serving(stack: Stack) -> None:
    a = stack.main.http
    j = {"Content-Type": "application/json"}
    good = _v2("X", X)
    inv = "/endpoints/digits-mce/invocations"
    mce = {**j, "X-Amzn-SageMaker-Target-Container-Hostname": "digits_mlp"}
    infer = "/v2/models/digits_mlp/infer"
    cases: list[tuple[str, str, bytes, dict[str, str]]] = [
        ("POST", infer, b"{not json", j),
        ("POST", infer, b"[1,2,3]", j),
        ("POST", infer, b"", j),
        ("POST", infer, b'{"inputs": 5}', j),
        ("POST", infer, b'{"inputs": []}', j),
        ("POST", infer, good.replace(b'"FP32"', b'"INT8"'), j),
        ("POST", infer, good.replace(b'"FP32"', b'"NOPE"'), j),
        ("POST", infer, good.replace(b"[2, 64]", b"[2, 63]"), j),
        ("POST", infer, good.replace(b"[2, 64]", b"[-1, 64]"), j),
        ("POST", infer, good.replace(b'"X"', b'"Y"'), j),
        ("POST", infer, good, {"Inference-Header-Content-Length": "999999"}),
        ("POST", infer, good, {"Inference-Header-Content-Length": "abc"}),
        ("POST", infer, good, {"Inference-Header-Content-Length": "0"}),
        ("POST", infer, good[:40], {"Inference-Header-Content-Length": "20"}),
        ("GET", infer, b"", {}),
        ("POST", "/v2/models/no_such/infer", good, j),
        ("POST", "/v2/models/../etc/infer", good, j),
        ("GET", "/v2/models/digits_mlp/bogus", b"", {}),
        ("GET", "/v3/whatever", b"", {}),
        ("POST", "/v2/health/ready", b"", {}),
        ("POST", inv, b"{bad", mce),
        ("POST", inv, good, j),  # no TargetContainerHostname
        ("POST", inv, good, {**j, "X-Amzn-SageMaker-Target-Container-Hostname": "ghost"}),
        ("POST", inv, good, {**mce, "X-Amzn-SageMaker-Target-Model": "x.tar.gz"}),
        ("POST", inv, good, {**mce, "Content-Type": "text/csv"}),
        (
            "POST",
            inv,
            good,
            {**mce, "Content-Type": "application/vnd.sagemaker-triton.binary+json;json-header-size=99999"},
        ),
        ("POST", inv, good, {**mce, "Content-Type": "application/vnd.sagemaker-triton.binary+json;json-header-size=x"}),
        ("POST", inv, good, {**mce, "Content-Type": "application/vnd.sagemaker-triton.binary+json"}),
        ("POST", "/endpoints/ghost/invocations", good, j),
        ("GET", inv, b"", {}),
        ("POST", "/endpoints/housing/invocations", good, {**j, "X-Amzn-SageMaker-Target-Model": "../../etc/passwd"}),
        ("POST", "/endpoints/digits/invocations", good, {**j, "X-Amzn-SageMaker-Target-Variant": "ghost"}),
        ("POST", "/invocations", good, j),  # several endpoints: /invocations is ambiguous
        ("POST", infer, good, {"X-Huge": "x" * 20000}),
        ("POST", "/v2/repository/models/digits_mlp/unload", b"", {}),
    ]
    assert len(cases) >= 30
    for method, path, body, headers in cases:
        code = _raw(a, method, path, body, headers)
        assert 400 <= code < 500, (method, path, body[:80], headers, code)
        assert _raw(a, "POST", infer, good, j) == 200  # still serving after each
    # gRPC: garbage bytes for ModelInfer are a clear INVALID_ARGUMENT, not a crash
    with grpc.insecure_channel(stack.main.grpc or "") as ch:
        call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as e:
            call(b"\x0a\xff\xff\xff", timeout=5)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_only_invocations_count_as_cache_hits(stack: Stack) -> None:
    """SageMaker's ModelCacheHit counts InvokeEndpoint calls: metadata and config reads are not invocations."""
    http = httpclient.InferenceServerClient(stack.main.http)
    http.get_model_metadata("digits_logreg")  # loads it if cold
    before = {s.name: s.hits for s in stack.manager.states()}.get("digits_logreg", 0)
    http.get_model_metadata("digits_logreg")
    http.get_model_config("digits_logreg")
    grpc_client = grpcclient.InferenceServerClient(stack.main.grpc)
    grpc_client.get_model_metadata("digits_logreg")
    assert {s.name: s.hits for s in stack.manager.states()}["digits_logreg"] == before
    inp = httpclient.InferInput("X", [1, 64], "FP32")
    inp.set_data_from_numpy(X[:1])
    http.infer("digits_logreg", [inp])
    assert {s.name: s.hits for s in stack.manager.states()}["digits_logreg"] == before + 1
    http.close()
    grpc_client.close()


_KSERVE_MLP_200 = '{api="kserve",code="200",endpoint="kserve",model="digits_mlp"}'


def test_metrics_on_the_main_port_carry_sagemaker_names(stack: Stack) -> None:
    from typer.testing import CliRunner

    from toolkit.cli.main import app

    assert _raw(stack.main.http, "POST", "/v2/models/digits_mlp/infer", _v2("X", X)) == 200
    with urllib.request.urlopen(stack.main.http_url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    samples = parse_prometheus(text)
    assert samples[("tritonctl_mme_model_cache_hits_total", '{model="digits_mlp"}')] >= 1
    assert samples[("tritonctl_mme_loaded_models", "")] >= 1
    assert samples[("tritonctl_gateway_request_duration_seconds_count", _KSERVE_MLP_200)] >= 1
    result = CliRunner().invoke(
        app,
        [
            "metrics",
            "--url",
            "http://127.0.0.1:9",
            "--gateway",
            stack.main.http_url,
            "--metrics-url",
            stack.sup.endpoint.metrics,
        ],
    )
    assert result.exit_code == 0, result.stderr
    assert "tritonctl_mme_model_loading_seconds" in result.stdout and "nv_inference_count" in result.stdout


# -- supervision (last: restarts the shared Triton) --------------------------------------------------------------------
def test_triton_killed_mid_traffic(stack: Stack) -> None:
    a = stack.main.http
    good = _v2("X", X)
    assert _raw(a, "POST", "/v2/models/digits_mlp/infer", good) == 200
    assert _raw(a, "POST", "/v2/models/digits_forest/infer", good) == 200  # resident before the crash
    deadline = time.monotonic() + 5
    while "digits_forest" not in stack.sup.loaded_models() and time.monotonic() < deadline:
        time.sleep(0.1)
    log: list[tuple[float, int, float]] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            t = time.monotonic()
            try:
                code = _raw(a, "POST", "/v2/models/digits_mlp/infer", good)
            except OSError:
                code = -1
            log.append((t, code, time.monotonic() - t))
            time.sleep(0.01)

    th = threading.Thread(target=traffic)
    th.start()
    time.sleep(0.3)
    killed = time.monotonic()
    stack.sup.server.kill()
    down_seen = False
    while time.monotonic() - killed < 15:
        ping = _raw(a, "GET", "/ping")
        ready = _raw(a, "GET", "/v2/health/ready")
        down_seen |= ping == 503 and ready == 503
        if down_seen and ping == 200 and ready == 200 and any(t > killed and c == 200 for t, c, _ in log[-3:]):
            break
        time.sleep(0.05)
    stop.set()
    th.join()
    after = [(t - killed, c, d) for t, c, d in log if t >= killed]
    assert down_seen, "ping/ready never reported the outage"
    assert {c for _, c, _ in after} <= {200, 503}, after
    assert all(d < 1.5 for _, c, d in after if c == 503), "503s must come at once"
    back = next(t for t, c, _ in after if c == 200 and t > 0)
    assert back < 5.0, f"serving again after {back:.2f} s"
    assert stack.sup.restarts >= 1
    deadline = time.monotonic() + 20  # the previously resident models come back in the background
    while time.monotonic() < deadline and not set(stack.sup.rewarm) <= stack.sup.loaded_models():
        time.sleep(0.2)
    assert "digits_forest" in stack.sup.rewarm and set(stack.sup.rewarm) <= stack.sup.loaded_models()
