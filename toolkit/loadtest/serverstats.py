"""Server-side breakdown, as perf_analyzer reports it, from two snapshots taken around the measured window.

Triton's ``/v2/models/stats`` counters are cumulative; the difference between the snapshots gives, per model, the
requests served and the average queue / compute input / compute infer / compute output time per request. The MME
manager's Prometheus text (SageMaker metric names) gives the hit ratio, loads and loading wait the same way.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from typing import Any

PHASES = ("queue", "compute_input", "compute_infer", "compute_output")


def _get(url: str, timeout: float = 10.0) -> bytes | None:
    """GET ``url``; None when it cannot be read. A gateway with principals wants credentials for /metrics: the API key
    in ``TRITONCTL_API_KEY`` is sent as a Bearer token (what Prometheus sends too)."""
    key = os.environ.get("TRITONCTL_API_KEY")
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return bytes(r.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def snapshot_stats(triton_http_url: str | None) -> dict[str, dict[str, Any]] | None:
    """``{model: stats}`` (one entry per model name, versions summed), or None when Triton cannot be asked."""
    if not triton_http_url:
        return None
    raw = _get(triton_http_url.rstrip("/") + "/v2/models/stats")
    if raw is None:
        return None
    out: dict[str, dict[str, Any]] = {}
    for m in json.loads(raw).get("model_stats", []):
        s = out.setdefault(m["name"], {"inference_count": 0, "execution_count": 0, "success": [0, 0], "fail": [0, 0]})
        s["inference_count"] += int(m.get("inference_count", 0))
        s["execution_count"] += int(m.get("execution_count", 0))
        st = m.get("inference_stats", {})
        for key in ("success", "fail", *PHASES):
            c = st.get(key, {})
            acc = s.setdefault(key, [0, 0])
            acc[0] += int(c.get("count", 0))
            acc[1] += int(c.get("ns", 0))
    return out


def _restarted(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Counters that went backwards, or a success count equal to before with other time in it: a reload during the
    window whose new count happens to equal the old one (counting from zero again, the window's traffic would
    otherwise read as none and the model drop out of the report)."""
    (na, ta), (nb, tb) = a["success"], b["success"]
    return na < nb or (na == nb and ta != tb) or a["execution_count"] < b["execution_count"]


def diff_stats(before: dict[str, dict[str, Any]] | None, after: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    """Per model with traffic in the window: requests, inferences, executions, avg batch, µs per phase.

    Triton's counters live with a loaded model: an MME eviction and reload restarts them, and a model unloaded before
    ``after`` has none. A counter that went backwards is therefore a restart, and the window's values are the new
    counters alone (as Prometheus' rate() treats resets); models not loaded at the end cannot be reported.
    """
    if after is None:
        return {}
    before = before or {}
    out: dict[str, Any] = {}
    for name, a in sorted(after.items()):
        b = before.get(name, {})
        if b and _restarted(a, b):
            b = {}  # reloaded during the window: counters restarted
        succ = a["success"][0] - b.get("success", [0, 0])[0]
        fail = a["fail"][0] - b.get("fail", [0, 0])[0]
        if succ <= 0 and fail <= 0:
            continue
        execs = a["execution_count"] - b.get("execution_count", 0)
        infers = a["inference_count"] - b.get("inference_count", 0)
        row: dict[str, Any] = {
            "requests": succ,
            "failed": fail,
            "inferences": infers,
            "executions": execs,
            "avg_batch": (infers / execs) if execs else 0.0,
        }
        for key in ("success", *PHASES):
            n = a[key][0] - b.get(key, [0, 0])[0]
            ns = a[key][1] - b.get(key, [0, 0])[1]
            row[f"{'request' if key == 'success' else key}_us"] = (ns / n / 1000.0) if n else 0.0
        out[name] = row
    return out


# -- Prometheus text (the MME manager's metrics) ------------------------------------------------------------------
def parse_prometheus(text: str) -> dict[tuple[str, str], float]:
    """``{(sample name, labels): value}`` for every sample, read by ``prometheus_client``'s parser (labels as one
    canonical string, e.g. ``{model="a"}``). Text the parser rejects ends the reading there: what came before it
    is kept."""
    from prometheus_client.parser import text_string_to_metric_families  # on use: the package is heavy to import

    out: dict[tuple[str, str], float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[(s.name, "{" + labels + "}" if labels else "")] = s.value
    except ValueError:
        pass
    return out


def scrape(url: str | None) -> dict[tuple[str, str], float] | None:
    if not url:
        return None
    raw = _get(url)
    return None if raw is None else parse_prometheus(raw.decode(errors="replace"))


def settle(url: str | None, timeout_s: float = 5.0) -> None:
    """Wait (bounded) until the gateway at ``url`` has no request in flight: a worker stopped at the window's end
    leaves its last request running in the gateway, and a cold load it started would otherwise finish after the
    closing snapshot (a load counted by the manager and missing from the report). No gateway gauge: no wait."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        samples = scrape(url)
        if not samples or samples.get(("tritonctl_gateway_inflight", ""), 0.0) <= 0:
            return
        time.sleep(0.05)


def _total(samples: dict[tuple[str, str], float], metric: str) -> float:
    return sum(v for (name, _), v in samples.items() if name == metric)


def mme_metrics(before: dict[tuple[str, str], float] | None, after: dict[tuple[str, str], float] | None) -> dict:
    """Hit ratio, loads, evictions and loading wait over the window, from the manager's own counters."""
    if not after or not any(k[0].startswith("tritonctl_mme_") for k in after):
        return {}
    before = before or {}

    def d(metric: str) -> float:
        return _total(after, metric) - _total(before, metric)

    p = "tritonctl_mme_"
    invocations = d(f"{p}model_invocations_total")
    hits = d(f"{p}model_cache_hits_total")
    misses = d(f"{p}model_cache_misses_total")
    # the manager counts one hit or one miss per request as it asks for the model; invocations only once the model
    # is ready, so requests still waiting for a load at the snapshot are in hits+misses but not in invocations
    lookups = hits + misses if misses else invocations
    wait_n = d(f"{p}model_loading_wait_seconds_count")
    load_n = d(f"{p}model_loading_seconds_count")
    return {
        "invocations": invocations,
        "hits": hits,
        "misses": misses,
        "hit_ratio": (hits / lookups) if lookups else None,
        "loads": load_n,
        "evictions": d(f"{p}model_evictions_total"),
        "load_failures": d(f"{p}model_load_failures_total"),
        "loading_waits": wait_n,
        "avg_loading_wait_ms": (d(f"{p}model_loading_wait_seconds_sum") / wait_n * 1000.0) if wait_n else 0.0,
        "avg_loading_time_ms": (d(f"{p}model_loading_seconds_sum") / load_n * 1000.0) if load_n else 0.0,
        "loaded_models": _total(after, f"{p}loaded_models"),
    }
