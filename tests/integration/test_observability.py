"""Observability through a real embedded Triton behind a real gateway with an MME manager: W3C trace context reaches
Triton on every route (its OpenTelemetry spans, exported to a local OTLP/HTTP receiver, carry the client's trace id
and parent span), the JSON-lines access log, the gateway's histograms per endpoint/model/code, and the Grafana
dashboard's queries against the live ``/metrics``. Clients are tritonclient (HTTP, gRPC) and boto3, unchanged."""

from __future__ import annotations

import http.server
import json
import secrets
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from botocore.config import Config
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from examples.grafana_dashboard import DASHBOARD, dashboard, metric_names
from toolkit import ServeConfig, Serving, start
from toolkit.cli.main import app
from toolkit.loadtest.serverstats import parse_prometheus

ROOT = Path(__file__).resolve().parents[2]
X = np.load(ROOT / "examples" / "digit0.npy")[None, :].astype(np.float32)


class OtlpReceiver(http.server.ThreadingHTTPServer):
    """What Triton's OpenTelemetry exporter sends (OTLP/HTTP, JSON), kept as parsed documents."""

    def __init__(self) -> None:
        self.docs: list[dict] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(h) -> None:
                body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
                self.docs.append(json.loads(body))
                h.send_response(200)
                h.send_header("Content-Length", "0")
                h.end_headers()

            def log_message(h, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    def spans(self) -> list[dict]:
        return [
            span
            for doc in list(self.docs)
            for rs in doc.get("resourceSpans", [])
            for ss in rs.get("scopeSpans", [])
            for span in ss.get("spans", [])
        ]

    def wait_for(self, trace_id: str, timeout: float = 30.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [s for s in self.spans() if s.get("traceId") == trace_id]
            if found:
                return found
            time.sleep(0.1)
        return []


@dataclass
class Stack:
    serving: Serving
    otlp: OtlpReceiver
    access_log: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    otlp = OtlpReceiver()
    threading.Thread(target=otlp.serve_forever, daemon=True).start()
    log = tmp_path_factory.mktemp("obs") / "access.jsonl"
    config = ServeConfig(
        repository=ROOT / "model_repository",
        manifest=ROOT / "tritonctl.yaml",
        max_models=3,  # the MME manager, with evictions once the housing cities come in
        http_port=0,
        grpc_port=0,
        metrics_port=0,
        gateway_port=0,
        gateway_grpc_port=0,
        triton_trace_config=[
            "mode=opentelemetry",
            "rate=1",
            "level=TIMESTAMPS",
            f"opentelemetry,url=http://127.0.0.1:{otlp.server_address[1]}/v1/traces",
            "opentelemetry,bsp_schedule_delay=50",
        ],
        access_log=str(log),
    )
    with start(config) as serving:
        yield Stack(serving, otlp, log)
    otlp.shutdown()


def _traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def _http_infer(s: Stack, model: str, headers: dict[str, str]) -> None:
    client = httpclient.InferenceServerClient(s.serving.http)
    x = httpclient.InferInput("X", [1, 64], "FP32")
    x.set_data_from_numpy(X)
    try:
        assert client.infer(model, [x], headers=headers).as_numpy("label").shape == (1, 1)
    finally:
        client.close()


def _sagemaker(s: Stack) -> object:
    return boto3.client(
        "sagemaker-runtime", endpoint_url=s.serving.url, region_name="us-east-1", aws_access_key_id="AKIDTEST",
        aws_secret_access_key="dummy", config=Config(retries={"max_attempts": 1}, read_timeout=30),
    )  # fmt: skip


def _assert_joined(s: Stack, trace_id: str, span_id: str, model: str) -> None:
    """Triton's span for the request belongs to the client's trace, as a child of the client's span."""
    spans = s.otlp.wait_for(trace_id)
    assert spans, f"no span of trace {trace_id} exported by Triton ({len(s.otlp.spans())} spans seen)"
    assert any(sp.get("parentSpanId") == span_id for sp in spans), spans
    assert any(sp.get("name") == model for sp in spans), [sp.get("name") for sp in spans]


def test_trace_context_reaches_triton_on_every_route(stack: Stack) -> None:
    # the HTTP slow path (a cold model: loaded by the manager, then forwarded by the handler)
    tp, trace_id, span_id = _traceparent()
    _http_infer(stack, "digits_logreg", {"traceparent": tp, "tracestate": "vendor=1"})
    _assert_joined(stack, trace_id, span_id, "digits_logreg")
    # the HTTP hot path (warm now: answered from callbacks)
    tp, trace_id, span_id = _traceparent()
    _http_infer(stack, "digits_logreg", {"traceparent": tp})
    _assert_joined(stack, trace_id, span_id, "digits_logreg")
    # the SageMaker runtime API through boto3 (the header added as any client's tracer would)
    sm = _sagemaker(stack)
    tp, trace_id, span_id = _traceparent()

    def add_traceparent(request: object, **_: object) -> None:
        request.headers["traceparent"] = tp  # type: ignore[attr-defined]

    sm.meta.events.register("before-sign.sagemaker-runtime.InvokeEndpoint", add_traceparent)  # type: ignore[attr-defined]
    body = {"inputs": [{"name": "X", "shape": [1, 64], "datatype": "FP32", "data": X.tolist()}]}
    r = sm.invoke_endpoint(  # type: ignore[attr-defined]
        EndpointName="digits-mce", TargetContainerHostname="digits_mlp", Body=json.dumps(body),
        ContentType="application/json",
    )  # fmt: skip
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 200
    _assert_joined(stack, trace_id, span_id, "digits_mlp")
    # gRPC: the trace context as call metadata
    assert stack.serving.grpc is not None
    client = grpcclient.InferenceServerClient(stack.serving.grpc)
    x = grpcclient.InferInput("X", [1, 64], "FP32")
    x.set_data_from_numpy(X)
    tp, trace_id, span_id = _traceparent()
    assert client.infer("digits_mlp", [x], headers={"traceparent": tp}).as_numpy("label").shape == (1, 1)
    client.close()
    _assert_joined(stack, trace_id, span_id, "digits_mlp")
    # and a request without a trace context starts a trace of Triton's own (a check that the ids above came from us)
    ours = {sp["traceId"] for sp in stack.otlp.spans()}
    _http_infer(stack, "digits_logreg", {})
    deadline = time.monotonic() + 30
    while not {sp["traceId"] for sp in stack.otlp.spans()} - ours and time.monotonic() < deadline:
        time.sleep(0.1)
    assert {sp["traceId"] for sp in stack.otlp.spans()} - ours


def _access_lines(s: Stack) -> list[dict]:
    return [json.loads(line) for line in s.access_log.read_text().splitlines()]


def test_access_log_is_json_lines_with_cold_and_warm(stack: Stack) -> None:
    tp, _, _ = _traceparent()
    _http_infer(stack, "digits_forest", {"traceparent": tp})  # cold: its first request
    _http_infer(stack, "digits_forest", {})  # warm: the hot path
    with pytest.raises(Exception, match="unknown model"):
        _http_infer(stack, "no_such_model", {})
    lines = _access_lines(stack)
    forest = [e for e in lines if e["model"] == "digits_forest"]
    assert [e["cold"] for e in forest[-2:]] == [True, False], forest
    cold, warm = forest[-2:]
    assert cold["traceparent"] == tp and "traceparent" not in warm
    assert cold["cold_wait_ms"] > 0 and cold["latency_ms"] >= cold["cold_wait_ms"]
    assert warm["status"] == 200 and warm["principal"] == "anonymous" and warm["endpoint"] == "kserve"
    assert 0 < warm["upstream_ms"] <= warm["latency_ms"]
    refused = lines[-1]
    assert refused["status"] == 404 and refused["model"] == "" and refused["cold"] is False  # no client-made labels
    for e in lines:
        assert set(e) >= {"time", "principal", "api", "endpoint", "model", "status", "latency_ms", "cold"}
        assert e["time"].endswith("+00:00")


def _scrape(s: Stack) -> str:
    with urllib.request.urlopen(f"{s.serving.url}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return r.read().decode()


def test_gateway_histograms_per_endpoint_model_and_code(stack: Stack) -> None:
    sm = _sagemaker(stack)
    body = {"inputs": [{"name": "X", "shape": [1, 64], "datatype": "FP32", "data": X.tolist()}]}
    for _ in range(2):
        sm.invoke_endpoint(  # type: ignore[attr-defined]
            EndpointName="digits-mce", TargetContainerHostname="digits_logreg", Body=json.dumps(body),
            ContentType="application/json",
        )  # fmt: skip
    samples = parse_prometheus(_scrape(stack))
    sm_labels = '{api="sagemaker",code="200",endpoint="digits-mce",model="digits_logreg"}'
    assert samples[("tritonctl_gateway_requests_total", sm_labels)] >= 2
    assert samples[("tritonctl_gateway_request_duration_seconds_count", sm_labels)] >= 2
    assert samples[("tritonctl_gateway_upstream_duration_seconds_count", sm_labels)] >= 2
    kserve = '{api="kserve",code="200",endpoint="kserve",model="digits_logreg"}'
    assert samples[("tritonctl_gateway_cold_load_wait_seconds_count", kserve)] == 1  # its one cold request
    assert samples[("tritonctl_gateway_request_duration_seconds_count", kserve)] >= 2
    # upstream time is part of the request's time
    total = samples[("tritonctl_gateway_request_duration_seconds_sum", kserve)]
    assert 0 < samples[("tritonctl_gateway_upstream_duration_seconds_sum", kserve)] <= total
    # the same window as CloudWatch EMF lines with SageMaker's names (tritonctl metrics --emf)
    result = CliRunner().invoke(app, ["metrics", "--gateway", stack.serving.url, "--emf"])
    assert result.exit_code == 0, result.output
    docs = {d["EndpointName"]: d for d in map(json.loads, result.stdout.splitlines())}
    assert docs["digits-mce"]["Invocations"] >= 2 and docs["digits-mce"]["ModelLatency"] > 0
    assert docs["tritonctl"]["LoadedModelCount"] >= 1 and 0 < docs["tritonctl"]["ModelCacheHit"] < 1
    # OpenMetrics for a scraper that asks for it
    req = urllib.request.Request(f"{stack.serving.url}/metrics", headers={"Accept": "application/openmetrics-text"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        assert r.read().decode().rstrip().endswith("# EOF")


def _live_names(text: str) -> set[str]:
    """Every sample name a query could select on this scrape; a family with no series yet counts by its name and
    its sample suffixes (a labelled gauge of GPU models on a CPU-only Triton has none)."""
    names: set[str] = set()
    for fam in text_string_to_metric_families(text):
        names |= {s.name for s in fam.samples}
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(fam.type, [""])
        if not fam.samples:
            names |= {fam.name + sfx for sfx in suffixes}
    return names


def test_grafana_dashboard_queries_only_metrics_the_gateway_serves(stack: Stack) -> None:
    committed = json.loads(DASHBOARD.read_text())
    assert committed == dashboard(), "docs/grafana/tritonctl.json is stale: python -m examples.grafana_dashboard"
    wanted = metric_names(committed)
    assert len(wanted) >= 20, wanted  # the extraction works (every panel reads at least one metric)
    _http_infer(stack, "digits_logreg", {})  # traffic: the gateway's series exist whichever test ran before
    live = _live_names(_scrape(stack))
    missing = sorted(wanted - live)
    assert not missing, f"the dashboard queries metrics /metrics does not serve: {missing}"
    assert "tritonctl_gateway_no_such_metric" not in live
