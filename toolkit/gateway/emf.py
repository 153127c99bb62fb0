"""CloudWatch Embedded Metric Format documents with SageMaker's exact metric names, from the gateway's ``/metrics``.

Why: teams moving between a SageMaker endpoint and tritonctl keep their CloudWatch dashboards and alarms if the same
names arrive with the same units. An EMF document is one JSON line that the CloudWatch agent (or a Lambda/ECS log
driver) turns into metrics; nothing here talks to AWS. The values are computed over a window between two scrapes
(``before`` None: since the gateway started), as CloudWatch's one-minute statistics are:

* per SageMaker endpoint (dimension ``EndpointName``): ``Invocations``, ``Invocation4XXErrors``,
  ``Invocation5XXErrors`` (counts), ``ModelLatency`` (mean time Triton took, microseconds) and ``OverheadLatency``
  (mean time the gateway added, microseconds);
* for the multi-model endpoint (dimension ``EndpointName`` = ``endpoint``): ``ModelCacheHit`` (the ratio of
  invocations that found their model loaded: CloudWatch's Average of the 0/1 metric), ``LoadedModelCount``, and the
  mean ``ModelLoadingWaitTime``, ``ModelLoadingTime``, ``ModelDownloadingTime``, ``ModelUnloadingTime``
  (microseconds), each present only when something happened in the window.
"""

from __future__ import annotations

import time
from typing import Any

Samples = dict[tuple[str, str], float]
_US = 1_000_000.0
MME_TIMES = {
    "ModelLoadingWaitTime": "tritonctl_mme_model_loading_wait_seconds",
    "ModelLoadingTime": "tritonctl_mme_model_loading_seconds",
    "ModelDownloadingTime": "tritonctl_mme_model_downloading_seconds",
    "ModelUnloadingTime": "tritonctl_mme_model_unloading_seconds",
}


def _label(labels: str, key: str) -> str:
    for part in labels.strip("{}").split('",'):
        k, _, v = part.partition("=")
        if k == key:
            return v.strip('"')
    return ""


def _delta(after: Samples, before: Samples, name: str, **match: str) -> float:
    total = 0.0
    for (n, labels), v in after.items():
        if n == name and all(_label(labels, k).startswith(want) for k, want in match.items()):
            total += v - before.get((n, labels), 0.0)
    return total


def _document(dims: dict[str, str], values: dict[str, tuple[float, str]], namespace: str, ts: int) -> dict[str, Any]:
    return {
        "_aws": {
            "Timestamp": ts,
            "CloudWatchMetrics": [
                {
                    "Namespace": namespace,
                    "Dimensions": [sorted(dims)],
                    "Metrics": [{"Name": k, "Unit": unit} for k, (_, unit) in values.items()],
                }
            ],
        },
        **dims,
        **{k: v for k, (v, _) in values.items()},
    }


def emf_documents(
    after: Samples,
    before: Samples | None = None,
    *,
    endpoint: str = "tritonctl",
    namespace: str = "tritonctl",
    timestamp_ms: int | None = None,
) -> list[dict[str, Any]]:
    """EMF documents for the window ``before`` -> ``after`` (samples as ``loadtest.serverstats.parse_prometheus``
    reads them); see the module's docstring for the names and units."""
    b = before or {}
    ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    docs = []
    endpoints = sorted(
        {
            _label(labels, "endpoint")
            for (n, labels) in after
            if n == "tritonctl_gateway_requests_total" and _label(labels, "api") == "sagemaker"
        }
        - {""}
    )
    for name in endpoints:
        sel = {"api": "sagemaker", "endpoint": name}
        n = _delta(after, b, "tritonctl_gateway_requests_total", **sel)
        values = {
            "Invocations": (n, "Count"),
            "Invocation4XXErrors": (_delta(after, b, "tritonctl_gateway_requests_total", code="4", **sel), "Count"),
            "Invocation5XXErrors": (_delta(after, b, "tritonctl_gateway_requests_total", code="5", **sel), "Count"),
        }
        timed = _delta(after, b, "tritonctl_gateway_request_duration_seconds_count", **sel)
        if timed:
            total = _delta(after, b, "tritonctl_gateway_request_duration_seconds_sum", **sel)
            model = _delta(after, b, "tritonctl_gateway_upstream_duration_seconds_sum", **sel)
            values["ModelLatency"] = (round(model / timed * _US, 1), "Microseconds")
            values["OverheadLatency"] = (round((total - model) / timed * _US, 1), "Microseconds")
        docs.append(_document({"EndpointName": name}, values, namespace, ts))
    if any(n.startswith("tritonctl_mme_") for n, _ in after):
        hits = _delta(after, b, "tritonctl_mme_model_cache_hits_total")
        lookups = hits + _delta(after, b, "tritonctl_mme_model_cache_misses_total")
        values = {"LoadedModelCount": (_delta(after, {}, "tritonctl_mme_loaded_models"), "Count")}
        if lookups:
            values["ModelCacheHit"] = (round(hits / lookups, 6), "None")
        for cw, prom in MME_TIMES.items():
            count = _delta(after, b, prom + "_count")
            if count:
                values[cw] = (round(_delta(after, b, prom + "_sum") / count * _US, 1), "Microseconds")
        docs.append(_document({"EndpointName": endpoint}, values, namespace, ts))
    return docs
