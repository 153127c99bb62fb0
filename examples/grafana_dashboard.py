# ruff: noqa: E501 - PromQL queries read best on one line each
"""The Grafana dashboard (docs/grafana/tritonctl.json) and an honest picture of it (docs/img/grafana_dashboard.png).

Why a script: the dashboard's panels are data (``PANELS``: title, unit, PromQL queries), written once here, so the
JSON Grafana imports and the picture in the docs cannot drift apart. Grafana itself is not installed where this was
written, so the picture is drawn with matplotlib: each panel's queries evaluated over a series of live scrapes of a
running gateway (rates as differences between scrapes), not a Grafana screenshot.

    python -m examples.grafana_dashboard            # rewrites docs/grafana/tritonctl.json
    python -m examples.grafana_dashboard --picture  # also serves the examples, sends traffic, draws the PNG
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "docs" / "grafana" / "tritonctl.json"
PICTURE = ROOT / "docs" / "img" / "grafana_dashboard.png"
W = "[$__rate_interval]"

# (title, unit, [(PromQL, legend)]); units are Grafana's ids.
PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    (
        "Requests by API and status",
        "reqps",
        [(f"sum by (api, code) (rate(tritonctl_gateway_requests_total{W}))", "{{api}} {{code}}")],
    ),
    (
        "Request latency p50 / p99 (gateway)",
        "s",
        [
            (
                f"histogram_quantile(0.5, sum by (le) (rate(tritonctl_gateway_request_duration_seconds_bucket{W})))",
                "p50",
            ),
            (
                f"histogram_quantile(0.99, sum by (le) (rate(tritonctl_gateway_request_duration_seconds_bucket{W})))",
                "p99",
            ),
        ],
    ),
    (
        "Upstream (Triton) latency p99 by model",
        "s",
        [
            (
                f"histogram_quantile(0.99, sum by (le, model) (rate(tritonctl_gateway_upstream_duration_seconds_bucket{W})))",
                "{{model}}",
            )
        ],
    ),
    (
        "Gateway overhead per request (mean)",
        "s",
        [
            (
                f"(sum(rate(tritonctl_gateway_request_duration_seconds_sum{W})) - sum(rate(tritonctl_gateway_upstream_duration_seconds_sum{W})))"
                f" / sum(rate(tritonctl_gateway_request_duration_seconds_count{W}))",
                "overhead",
            )
        ],
    ),
    (
        "Cold-load wait p95 by model",
        "s",
        [
            (
                f"histogram_quantile(0.95, sum by (le, model) (rate(tritonctl_gateway_cold_load_wait_seconds_bucket{W})))",
                "{{model}}",
            )
        ],
    ),
    (
        "Error ratio (4xx, 5xx, gRPC not OK)",
        "percentunit",
        [
            (
                f'sum(rate(tritonctl_gateway_requests_total{{code=~"4.."}}{W})) / sum(rate(tritonctl_gateway_requests_total{W}))',
                "4xx",
            ),
            (
                f'sum(rate(tritonctl_gateway_requests_total{{code=~"5.."}}{W})) / sum(rate(tritonctl_gateway_requests_total{W}))',
                "5xx",
            ),
            (  # gRPC calls carry gRPC status names (docs/metrics.md): any but OK is an error
                f'sum(rate(tritonctl_gateway_requests_total{{api="grpc",code!="OK"}}{W})) / sum(rate(tritonctl_gateway_requests_total{W}))',
                "gRPC not OK",
            ),
        ],
    ),
    (
        "In flight, Triton up, hot-path share",
        "short",
        [
            ("tritonctl_gateway_inflight", "in flight"),
            ("tritonctl_gateway_triton_up", "triton up"),
            (
                f'sum(rate(tritonctl_gateway_hot_path_total{W})) / sum(rate(tritonctl_gateway_requests_total{{api="kserve"}}{W}))',
                "hot-path share",
            ),
        ],
    ),
    (
        "Model cache hit ratio (ModelCacheHit)",
        "percentunit",
        [
            (
                f"sum(rate(tritonctl_mme_model_cache_hits_total{W})) / (sum(rate(tritonctl_mme_model_cache_hits_total{W}))"
                f" + sum(rate(tritonctl_mme_model_cache_misses_total{W})))",
                "hit ratio",
            )
        ],
    ),
    ("Loaded models (LoadedModelCount)", "short", [("tritonctl_mme_loaded_models", "loaded")]),
    (
        "Invocations by model",
        "reqps",
        [(f"sum by (model) (rate(tritonctl_mme_model_invocations_total{W}))", "{{model}}")],
    ),
    (
        "Model load times, mean (ModelLoadingWaitTime, ModelLoadingTime, ModelDownloadingTime, ModelUnloadingTime)",
        "s",
        [
            (f"rate(tritonctl_mme_model_{m}_seconds_sum{W}) / rate(tritonctl_mme_model_{m}_seconds_count{W})", legend)
            for m, legend in (
                ("loading_wait", "waiting for a load"),
                ("loading", "loading"),
                ("downloading", "downloading"),
                ("unloading", "unloading"),
            )
        ],
    ),
    (
        "Evictions and failures",
        "ops",
        [
            (f"rate(tritonctl_mme_model_evictions_total{W})", "evictions"),
            (f"sum(rate(tritonctl_mme_model_load_failures_total{W}))", "load failures"),
            (f"sum(rate(tritonctl_mme_model_stub_failures_total{W}))", "stub failures"),
        ],
    ),
    (
        "Memory: budget, resident models, disk cache",
        "bytes",
        [
            ("tritonctl_mme_memory_budget_bytes", "budget"),
            ("sum(tritonctl_mme_model_memory_bytes)", "resident models"),
            ("tritonctl_mme_disk_cache_bytes", "disk cache"),
        ],
    ),
    (
        "GPU memory: budget and resident",
        "bytes",
        [
            ("tritonctl_mme_gpu_memory_budget_bytes", "budget"),
            ("tritonctl_mme_gpu_memory_resident_bytes", "resident"),
            ("sum(tritonctl_mme_model_gpu_memory_bytes)", "models"),
        ],
    ),
]

METRIC = re.compile(r"\btritonctl_[a-z0-9_]+\b")


def metric_names(dashboard: dict) -> set[str]:
    """Every tritonctl sample name the dashboard's queries read (what the test checks against a live scrape)."""
    out: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out |= set(METRIC.findall(target["expr"]))
    return out


def dashboard() -> dict:
    panels = []
    for i, (title, unit, queries) in enumerate(PANELS):
        panels.append(
            {
                "id": i + 1,
                "type": "timeseries",
                "title": title,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "targets": [
                    {"refId": chr(ord("A") + j), "expr": expr, "legendFormat": legend}
                    for j, (expr, legend) in enumerate(queries)
                ],
            }
        )
    return {
        "title": "tritonctl: gateway and multi-model endpoint",
        "uid": "tritonctl",
        "schemaVersion": 39,
        "tags": ["tritonctl", "triton", "sagemaker"],
        "time": {"from": "now-30m", "to": "now"},
        "refresh": "10s",
        "templating": {
            "list": [{"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"}]
        },
        "panels": panels,
    }


def write_dashboard(path: Path = DASHBOARD) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dashboard(), indent=2) + "\n")


if __name__ == "__main__":
    write_dashboard()
    print(f"wrote {DASHBOARD}")
    if "--picture" in sys.argv:
        from examples.grafana_picture import draw

        draw(PICTURE)
        print(f"wrote {PICTURE}")
