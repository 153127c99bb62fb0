"""The metric state of the manager and the gateway, exposed through ``prometheus_client`` (no server): Prometheus
naming, histogram buckets as ``le`` means them, bounded labels, the SageMaker name map, and the CloudWatch EMF
documents built from a scrape. The live ``/metrics`` of a gateway is tests/integration/test_observability.py."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from toolkit.gateway.emf import emf_documents
from toolkit.gateway.telemetry import GatewayCollector, RequestStats
from toolkit.loadtest.serverstats import parse_prometheus
from toolkit.mme.metrics import SAGEMAKER_NAMES, Histogram, MMEMetrics, exposition

ROOT = Path(__file__).resolve().parents[2]


def _gateway_and_mme() -> tuple[RequestStats, MMEMetrics, str]:
    stats = RequestStats()
    stats.record("kserve", "kserve", "digits_mlp", 200, 0.002, 0.0015)
    stats.record("kserve", "kserve", "digits_mlp", 200, 0.5, 0.004, 0.45)  # cold
    stats.record("sagemaker", "housing", "housing_NY", 200, 0.010, 0.008)
    stats.record("sagemaker", "housing", "housing_NY", 200, 0.030, 0.020)
    stats.record("sagemaker", "housing", "", 400, 0.001)
    stats.record("sagemaker", "housing", "housing_NY", 503)  # refused before a handler: counted, not timed
    mme = MMEMetrics()
    mme.cache_hit.inc(model="digits_mlp", amount=3)
    mme.cache_miss.inc(model="digits_mlp")
    mme.loaded.set(2)
    mme.loading.observe(0.2)
    mme.loading.observe(0.4)
    mme.evictions.inc()
    collector = GatewayCollector(stats, lambda: 7, lambda: 1, lambda: True)
    return stats, mme, exposition(collector, mme)


def test_names_follow_prometheus_conventions() -> None:
    _, _, text = _gateway_and_mme()
    families = list(text_string_to_metric_families(text))
    assert len(families) >= 20
    for fam in families:
        assert re.fullmatch(r"tritonctl_(gateway|mme)_[a-z0-9_]+", fam.name), fam.name  # snake_case, one prefix
        if fam.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in fam.samples), fam.name
        if fam.type == "histogram":
            assert fam.name.endswith("_seconds"), fam.name
        if "memory" in fam.name or "disk" in fam.name:
            assert fam.name.endswith("_bytes"), fam.name
    names = {s.name for fam in families for s in fam.samples} | {fam.name for fam in families}
    assert set(SAGEMAKER_NAMES) <= names  # every mapped name is exported


def test_histogram_buckets_are_cumulative_and_le_inclusive() -> None:
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 3.0):
        h.observe(v)
    assert h.cumulative() == [("0.1", 2.0), ("1.0", 4.0), ("+Inf", 5.0)]
    assert h.n == 5 and h.total == pytest.approx(4.65)


def test_gateway_series_per_api_endpoint_model_code() -> None:
    stats, _, text = _gateway_and_mme()
    s = parse_prometheus(text)
    mlp = '{api="kserve",code="200",endpoint="kserve",model="digits_mlp"}'
    assert s[("tritonctl_gateway_requests_total", mlp)] == 2
    assert s[("tritonctl_gateway_request_duration_seconds_count", mlp)] == 2
    bucket = '{api="kserve",code="200",endpoint="kserve",le="0.0025",model="digits_mlp"}'
    assert s[("tritonctl_gateway_request_duration_seconds_bucket", bucket)] == 1
    assert s[("tritonctl_gateway_cold_load_wait_seconds_count", mlp)] == 1  # only the cold one
    refused = '{api="sagemaker",code="503",endpoint="housing",model="housing_NY"}'
    assert s[("tritonctl_gateway_requests_total", refused)] == 1
    assert ("tritonctl_gateway_request_duration_seconds_count", refused) not in s  # counted, not timed
    assert s[("tritonctl_gateway_hot_path_total", "")] == 7 and s[("tritonctl_gateway_triton_up", "")] == 1
    assert stats.count("sagemaker") == {200: 2, 400: 1, 503: 1}


def test_emf_documents_carry_sagemaker_names_and_units() -> None:
    _, _, text = _gateway_and_mme()
    docs = emf_documents(parse_prometheus(text), endpoint="mme", timestamp_ms=1)
    by_endpoint = {d["EndpointName"]: d for d in docs}
    housing = by_endpoint["housing"]
    assert housing["Invocations"] == 4 and housing["Invocation4XXErrors"] == 1 and housing["Invocation5XXErrors"] == 1
    # three timed requests: 10 + 30 + 1 ms in all, 8 + 20 ms of it in Triton
    assert housing["ModelLatency"] == pytest.approx(28_000 / 3, abs=0.1)
    assert housing["OverheadLatency"] == pytest.approx(13_000 / 3, abs=0.1)
    units = {m["Name"]: m["Unit"] for m in housing["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert units == {
        "Invocations": "Count",
        "Invocation4XXErrors": "Count",
        "Invocation5XXErrors": "Count",
        "ModelLatency": "Microseconds",
        "OverheadLatency": "Microseconds",
    }
    mme = by_endpoint["mme"]
    assert mme["ModelCacheHit"] == 0.75 and mme["LoadedModelCount"] == 2
    assert mme["ModelLoadingTime"] == pytest.approx(300_000.0)
    assert "ModelDownloadingTime" not in mme  # nothing downloaded in the window
    assert mme["_aws"]["Timestamp"] == 1 and mme["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["EndpointName"]]
    # a window: what happened between two scrapes only
    before = parse_prometheus(text)
    assert "ModelLoadingTime" not in emf_documents(before, before, endpoint="mme")[-1]
    assert emf_documents(before, before)[0]["Invocations"] == 0


def test_prometheus_client_is_imported_on_use_only() -> None:
    """Importing the manager, the gateway or the load-test stats does not import prometheus_client (its package
    import pulls in http.server, wsgiref and more): the CLI's start-up stays its own."""
    code = (
        "import sys, toolkit.mme.manager, toolkit.gateway.server, toolkit.gateway.emf, toolkit.loadtest.serverstats; "
        "print('prometheus_client' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
