"""gRPC calls through the gateway's frame-forwarding front are counted, timed and logged as HTTP requests are: a real
embedded Triton, the MME manager (cold loads), principals, the access log, and tritonclient.grpc unchanged. Every
call of this module is known, so ``/metrics`` (read with prometheus_client's parser) must hold exactly these series
and counts: a status taken from Triton's trailers (decoded, not assumed), the gateway's refusals, a stream counted
once per call, cold-load waits only where a load was waited for, and a JSON access-log line per call."""

from __future__ import annotations

import json
import queue
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from toolkit import ServeConfig, Serving, start
from toolkit.gateway.auth import AuthConfig

ROOT = Path(__file__).resolve().parents[2]
X = np.load(ROOT / "examples" / "digit0.npy")[None, :].astype(np.float32)
ALICE = {"x-api-key": "grpc-alice-key"}  # invoke on everything, and /metrics
MALLORY = {"x-api-key": "grpc-mallory-key"}  # invoke on digits_forest only
AUTH = {
    "principals": [
        {
            "name": "alice",
            "api_keys": ["grpc-alice-key"],
            "policy": [{"Effect": "Allow", "Action": ["invoke", "metrics"]}],
        },
        {
            "name": "mallory",
            "api_keys": ["grpc-mallory-key"],
            "policy": [
                {
                    "Effect": "Allow",
                    "Action": "invoke",
                    "Resource": "endpoint/kserve",
                    "Condition": {"StringLike": {"sagemaker:TargetModel": ["digits_forest"]}},
                }
            ],
        },
    ]
}  # fmt: skip
GRPC = {"api": "grpc", "endpoint": "kserve"}
Key = tuple[str, str, str]  # metric, model, code


@dataclass
class Stack:
    serving: Serving
    access_log: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    log = tmp_path_factory.mktemp("grpc_metrics") / "access.jsonl"
    config = ServeConfig(
        repository=ROOT / "model_repository",
        manifest=ROOT / "tritonctl.yaml",
        max_models=3,  # the MME manager: every model is loaded on its first call
        http_port=0,
        grpc_port=0,
        metrics_port=0,
        gateway_port=0,
        gateway_grpc_port=0,
        auth=AuthConfig.from_dict(AUTH),
        access_log=str(log),
    )
    with start(config) as serving:
        yield Stack(serving, log)


def _x(data: np.ndarray = X) -> grpcclient.InferInput:
    x = grpcclient.InferInput("X", list(data.shape), "FP32")
    x.set_data_from_numpy(data)
    return x


def _grpc_series(s: Stack) -> dict[Key, float]:
    """Every api="grpc" sample of /metrics: (sample name, model, code) -> value (histograms: _count only)."""
    req = urllib.request.Request(f"{s.serving.url}/metrics", headers=ALICE)
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read().decode()
    out: dict[Key, float] = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            labels = sample.labels
            if labels.get("api") != "grpc" or sample.name.endswith(("_bucket", "_created")):
                continue
            assert labels["endpoint"] == "kserve", labels
            out[(sample.name, labels["model"], labels["code"])] = sample.value
    return out


def _settled(s: Stack, want: int, timeout: float = 10.0) -> dict[Key, float]:
    """The scrape once ``want`` gRPC calls are counted (a call is recorded after its answer is written)."""
    deadline = time.monotonic() + timeout
    while True:
        got = _grpc_series(s)
        n = sum(v for (name, _, _), v in got.items() if name == "tritonctl_gateway_requests_total")
        if n >= want or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def test_grpc_calls_are_counted_timed_and_logged(stack: Stack) -> None:
    assert stack.serving.grpc is not None
    c = grpcclient.InferenceServerClient(stack.serving.grpc)
    # a cold load of an MME model (the manager loads it while admission waits), then two warm calls
    for _ in range(3):
        assert c.infer("digits_logreg", [_x()], headers=ALICE).as_numpy("label").shape == (1, 1)
    # Triton's own error: its trailers' grpc-status, read by the front (the gateway forwards the call unchanged)
    with pytest.raises(InferenceServerException, match="INVALID_ARGUMENT"):
        c.infer("digits_logreg", [_x(X[:, :3])], headers=ALICE)
    # the gateway's refusals: a key nobody has, a model the principal may not invoke, an unknown model, a method
    # the gateway does not serve
    with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
        c.infer("digits_logreg", [_x()], headers={"x-api-key": "nobody"})
    with pytest.raises(InferenceServerException, match="PERMISSION_DENIED"):
        c.infer("digits_logreg", [_x()], headers=MALLORY)
    with pytest.raises(InferenceServerException, match="NOT_FOUND"):
        c.infer("no_such_model", [_x()], headers=ALICE)
    with pytest.raises(InferenceServerException, match="UNIMPLEMENTED"):
        c.get_system_shared_memory_status(headers=ALICE)
    assert c.is_server_live(headers=ALICE)  # counted, not timed (as HTTP's metadata reads)
    # a stream of two messages, its model cold: one call, its load waited for once
    got: queue.Queue[Any] = queue.Queue()
    c.start_stream(callback=lambda result, error: got.put((result, error)), headers=MALLORY)
    for k in range(2):
        c.async_stream_infer("digits_forest", [_x()], request_id=str(k))
        result, err = got.get(timeout=60)
        assert err is None and result.as_numpy("label").shape == (1, 1)
    c.stop_stream()
    c.close()

    m = _settled(stack, 10)
    req, dur, up, cold = (f"tritonctl_gateway_{n}" for n in ("requests_total", "request_duration_seconds_count",
                                                              "upstream_duration_seconds_count",
                                                              "cold_load_wait_seconds_count"))  # fmt: skip
    counts = {(model, code): v for (name, model, code), v in m.items() if name == req}
    assert counts == {
        ("digits_logreg", "OK"): 3,
        ("digits_logreg", "INVALID_ARGUMENT"): 1,
        ("", "UNAUTHENTICATED"): 1,  # refused at the call's HEADERS: no model read
        ("digits_logreg", "PERMISSION_DENIED"): 1,  # a known model: its own series
        ("", "NOT_FOUND"): 1,  # a client-made name is not a label value
        ("", "UNIMPLEMENTED"): 1,
        ("", "OK"): 1,  # ServerLive
        ("digits_forest", "OK"): 1,  # the stream: once per call
    }, counts
    timed = {(model, code): v for (name, model, code), v in m.items() if name == dur}
    assert timed == {  # ModelInfer calls only, refused ones included
        ("digits_logreg", "OK"): 3,
        ("digits_logreg", "INVALID_ARGUMENT"): 1,
        ("", "UNAUTHENTICATED"): 1,
        ("digits_logreg", "PERMISSION_DENIED"): 1,
        ("", "NOT_FOUND"): 1,
    }, timed
    upstream = {(model, code): v for (name, model, code), v in m.items() if name == up}
    assert upstream == {("digits_logreg", "OK"): 3, ("digits_logreg", "INVALID_ARGUMENT"): 1}, upstream  # forwarded
    waited = {(model, code): v for (name, model, code), v in m.items() if name == cold}
    assert waited == {("digits_logreg", "OK"): 1, ("digits_forest", "OK"): 1}, waited
    total = m[("tritonctl_gateway_request_duration_seconds_sum", "digits_logreg", "OK")]
    up_total = m[("tritonctl_gateway_upstream_duration_seconds_sum", "digits_logreg", "OK")]
    assert 0 < up_total < total  # the upstream part of each call is inside the call
    assert m[("tritonctl_gateway_cold_load_wait_seconds_sum", "digits_logreg", "OK")] < total

    lines = [e for e in map(json.loads, stack.access_log.read_text().splitlines()) if e["api"] == "grpc"]
    assert len(lines) == 10, lines
    calls = [e for e in lines if e["model"] == "digits_logreg" and e["status"] == "OK"]
    assert [e["cold"] for e in calls] == [True, False, False], calls
    assert calls[0]["cold_wait_ms"] > 0 and calls[0]["latency_ms"] >= calls[0]["cold_wait_ms"]
    assert all(e["principal"] == "alice" and e["endpoint"] == "kserve" for e in calls)
    assert all(0 < e["upstream_ms"] <= e["latency_ms"] for e in calls)
    by_status = {e["status"]: e for e in lines}
    assert by_status["UNAUTHENTICATED"]["principal"] == "anonymous" and by_status["UNAUTHENTICATED"]["model"] == ""
    assert by_status["PERMISSION_DENIED"]["principal"] == "mallory" and by_status["NOT_FOUND"]["model"] == ""
    assert by_status["UNIMPLEMENTED"]["latency_ms"] is None  # counted, not timed
    stream = [e for e in lines if e["model"] == "digits_forest"]
    assert len(stream) == 1 and stream[0]["cold"] and stream[0]["latency_ms"] is None, stream
