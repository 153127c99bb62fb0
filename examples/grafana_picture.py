"""A picture of the Grafana dashboard's panels from live scrapes (Grafana itself is not installed here).

The examples are served (Triton + gateway + MME manager at most 4 models), a mixed load runs (KServe infers of the
digits models over HTTP and gRPC, SageMaker invocations of the housing multi-model endpoint, whose cities load and
evict, and a few requests for unknown models), and ``/metrics`` is scraped every 2 s. Each panel of
``examples.grafana_dashboard.PANELS`` is then computed in Python the way its PromQL does (rates as differences
between consecutive scrapes, quantiles by linear interpolation inside the bucket, like ``histogram_quantile``) and
drawn with matplotlib. ``PANEL_FUNCS`` must name exactly the dashboard's panels: a panel added there without a
function here fails.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np

from examples.grafana_dashboard import PANELS
from toolkit.loadtest.serverstats import parse_prometheus

ROOT = Path(__file__).resolve().parents[1]
Samples = dict[tuple[str, str], float]
Series = dict[str, list[float]]


def _sel(s: Samples, name: str, **match: str) -> dict[str, float]:
    """Label string -> value of ``name``, keeping label sets that contain every ``key="value"`` of ``match``
    (a value ending in ``..`` matches a prefix, as the dashboard's ``=~"4.."``)."""
    out = {}
    for (n, labels), v in s.items():
        if n != name:
            continue
        ok = True
        for k, want in match.items():
            if want.endswith(".."):
                ok &= f'{k}="{want[0]}' in labels
            else:
                ok &= f'{k}="{want}"' in labels
        if ok:
            out[labels] = v
    return out


def _label(labels: str, key: str) -> str:
    for part in labels.strip("{}").split(","):
        k, _, v = part.partition("=")
        if k == key:
            return v.strip('"')
    return ""


class Scrapes:
    """Scrapes in time order; a rate at scrape i covers the ``window`` scrapes before it (Grafana's
    ``$__rate_interval`` is likewise several scrape intervals), so the series start ``window`` scrapes in."""

    def __init__(self, snaps: list[tuple[float, Samples]], window: int = 5) -> None:
        self.w = window
        self.t = [t for t, _ in snaps][window - 1 :]
        self._all = [s for _, s in snaps]
        self._times = [t for t, _ in snaps]
        self.s = self._all[window - 1 :]

    def rate(self, name: str, by: str | None = None, **match: str) -> Series:
        """``sum [by (by)] (rate(name{match}[w]))`` between consecutive scrapes."""
        out: Series = {}
        for i in range(1, len(self.s)):
            j = i + self.w - 1  # this scrape in the full list; the window starts w scrapes earlier
            dt = self._times[j] - self._times[j - self.w]
            now, before = _sel(self._all[j], name, **match), _sel(self._all[j - self.w], name, **match)
            sums: dict[str, float] = {}
            for labels, v in now.items():
                key = _label(labels, by) if by else ""
                sums[key] = sums.get(key, 0.0) + max(0.0, v - before.get(labels, 0.0)) / dt
            for key in set(sums) | set(out):
                out.setdefault(key, [0.0] * (i - 1)).append(sums.get(key, 0.0))
        return out

    def gauge(self, name: str, total: bool = False) -> list[float]:
        return [sum(_sel(s, name).values()) for s in self.s[1:]]

    def quantile(self, q: float, name: str, by: str | None = None) -> Series:
        """``histogram_quantile(q, sum by (le[, by]) (rate(name_bucket[w])))``; NaN where nothing was observed."""
        out: Series = {}
        for i in range(1, len(self.s)):
            j = i + self.w - 1
            now, before = _sel(self._all[j], name + "_bucket"), _sel(self._all[j - self.w], name + "_bucket")
            groups: dict[str, dict[float, float]] = {}
            for labels, v in now.items():
                le = _label(labels, "le")
                key = _label(labels, by) if by else ""
                g = groups.setdefault(key, {})
                bound = float("inf") if le == "+Inf" else float(le)
                g[bound] = g.get(bound, 0.0) + max(0.0, v - before.get(labels, 0.0))
            for key in set(groups) | set(out):
                out.setdefault(key, [float("nan")] * (i - 1)).append(_hq(q, groups.get(key, {})))
        return out


def _hq(q: float, buckets: dict[float, float]) -> float:
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return float("nan")
    rank, prev_bound, prev_count = q * buckets[bounds[-1]], 0.0, 0.0
    for b in bounds:
        if buckets[b] >= rank:
            if b == float("inf"):
                return prev_bound
            return prev_bound + (b - prev_bound) * (rank - prev_count) / max(buckets[b] - prev_count, 1e-12)
        prev_bound, prev_count = b, buckets[b]
    return prev_bound


def _ratio(a: list[float], b: list[float]) -> list[float]:
    return [x / y if y else float("nan") for x, y in zip(a, b, strict=True)]


def _one(series: Series) -> list[float]:
    return next(iter(series.values()), [])


def _requests(sc: Scrapes) -> Series:
    out: Series = {}
    for labels in {k for s in sc.s for (n, k) in s if n == "tritonctl_gateway_requests_total"}:
        key = f"{_label(labels, 'api')} {_label(labels, 'code')}"
        series = sc.rate(
            "tritonctl_gateway_requests_total", None, api=_label(labels, "api"), code=_label(labels, "code")
        )
        out[key] = _one(series)
    return out


def _overhead(sc: Scrapes) -> Series:
    total = _one(sc.rate("tritonctl_gateway_request_duration_seconds_sum"))
    up = _one(sc.rate("tritonctl_gateway_upstream_duration_seconds_sum"))
    n = _one(sc.rate("tritonctl_gateway_request_duration_seconds_count"))
    return {"overhead": _ratio([a - b for a, b in zip(total, up, strict=True)], n)}


def _errors(sc: Scrapes) -> Series:
    all_ = _one(sc.rate("tritonctl_gateway_requests_total"))
    out = {
        f"{c}xx": _ratio(_one(sc.rate("tritonctl_gateway_requests_total", code=f"{c}..")) or [0.0] * len(all_), all_)
        for c in (4, 5)
    }
    grpc = _one(sc.rate("tritonctl_gateway_requests_total", api="grpc")) or [0.0] * len(all_)
    ok = _one(sc.rate("tritonctl_gateway_requests_total", api="grpc", code="OK")) or [0.0] * len(all_)
    out["gRPC not OK"] = _ratio([a - b for a, b in zip(grpc, ok, strict=True)], all_)
    return out


def _hit_ratio(sc: Scrapes) -> Series:
    hits = _one(sc.rate("tritonctl_mme_model_cache_hits_total"))
    misses = _one(sc.rate("tritonctl_mme_model_cache_misses_total")) or [0.0] * len(hits)
    return {"hit ratio": _ratio(hits, [a + b for a, b in zip(hits, misses, strict=True)])}


def _mean(sc: Scrapes, m: str) -> list[float]:
    return _ratio(
        _one(sc.rate(f"tritonctl_mme_model_{m}_seconds_sum")), _one(sc.rate(f"tritonctl_mme_model_{m}_seconds_count"))
    )


PANEL_FUNCS: dict[str, Callable[[Scrapes], Series]] = {
    "Requests by API and status": _requests,
    "Request latency p50 / p99 (gateway)": lambda sc: {
        f"p{int(q * 100)}": _one(sc.quantile(q, "tritonctl_gateway_request_duration_seconds")) for q in (0.5, 0.99)
    },
    "Upstream (Triton) latency p99 by model": lambda sc: sc.quantile(
        0.99, "tritonctl_gateway_upstream_duration_seconds", "model"
    ),
    "Gateway overhead per request (mean)": _overhead,
    "Cold-load wait p95 by model": lambda sc: sc.quantile(0.95, "tritonctl_gateway_cold_load_wait_seconds", "model"),
    "Error ratio (4xx, 5xx, gRPC not OK)": _errors,
    "In flight, Triton up, hot-path share": lambda sc: {
        "in flight": sc.gauge("tritonctl_gateway_inflight"),
        "triton up": sc.gauge("tritonctl_gateway_triton_up"),
        "hot-path share": _ratio(
            _one(sc.rate("tritonctl_gateway_hot_path_total")),
            _one(sc.rate("tritonctl_gateway_requests_total", api="kserve")),
        ),
    },
    "Model cache hit ratio (ModelCacheHit)": _hit_ratio,
    "Loaded models (LoadedModelCount)": lambda sc: {"loaded": sc.gauge("tritonctl_mme_loaded_models")},
    "Invocations by model": lambda sc: sc.rate("tritonctl_mme_model_invocations_total", "model"),
    "Model load times, mean (ModelLoadingWaitTime, ModelLoadingTime, ModelDownloadingTime, ModelUnloadingTime)": (
        lambda sc: {
            legend: _mean(sc, m)
            for m, legend in (
                ("loading_wait", "waiting for a load"),
                ("loading", "loading"),
                ("downloading", "downloading"),
                ("unloading", "unloading"),
            )
        }
    ),
    "Evictions and failures": lambda sc: {
        "evictions": _one(sc.rate("tritonctl_mme_model_evictions_total")),
        "load failures": _one(sc.rate("tritonctl_mme_model_load_failures_total")) or [0.0] * (len(sc.s) - 1),
    },
    "Memory: budget, resident models, disk cache": lambda sc: {
        "budget": sc.gauge("tritonctl_mme_memory_budget_bytes"),
        "resident models": sc.gauge("tritonctl_mme_model_memory_bytes"),
        "disk cache": sc.gauge("tritonctl_mme_disk_cache_bytes"),
    },
    "GPU memory: budget and resident": lambda sc: {
        "budget": sc.gauge("tritonctl_mme_gpu_memory_budget_bytes"),
        "resident": sc.gauge("tritonctl_mme_gpu_memory_resident_bytes"),
    },
}


def _traffic(url: str, stop: threading.Event, seed: int) -> None:
    """KServe (HTTP) infers of the digits models, housing invocations (cities load and evict), unknown models."""
    x = np.load(ROOT / "examples" / "digit0.npy").astype(np.float32).tolist()
    digits = json.dumps({"inputs": [{"name": "X", "shape": [1, 64], "datatype": "FP32", "data": x}]}).encode()
    house = [0.5] * 10  # the city models take 10 preprocessed features
    housing = json.dumps({"inputs": [{"name": "features", "shape": [1, 10], "datatype": "FP32", "data": house}]})
    cities = ["housing_NewYork_NY", "housing_LosAngeles_CA", "housing_Chicago_IL", "housing_Houston_TX"]
    rng = random.Random(seed)
    while not stop.is_set():
        r = rng.random()
        if r < 0.75:
            req = urllib.request.Request(
                f"{url}/v2/models/{rng.choice(['digits_logreg', 'digits_mlp'])}/infer", digits, method="POST"
            )
        elif r < 0.95:
            req = urllib.request.Request(f"{url}/endpoints/housing/invocations", housing.encode(), method="POST")
            req.add_header("Content-Type", "application/json")
            req.add_header("X-Amzn-SageMaker-Target-Model", f"{rng.choice(cities)}.tar.gz")
        else:
            req = urllib.request.Request(f"{url}/v2/models/no_such_model/infer", digits, method="POST")
        with contextlib.suppress(Exception):  # errors are part of the picture (the error-ratio panel)
            urllib.request.urlopen(req, timeout=30).read()


def _grpc_traffic(target: str, stop: threading.Event) -> None:
    """KServe gRPC infers of a digits model through the gateway's gRPC port, 1 in 10 for an unknown model."""
    import tritonclient.grpc as grpcclient

    x = np.load(ROOT / "examples" / "digit0.npy").astype(np.float32)[None, :]
    inp = grpcclient.InferInput("X", [1, 64], "FP32")
    inp.set_data_from_numpy(x)
    rng = random.Random(7)
    with grpcclient.InferenceServerClient(target) as client:
        while not stop.is_set():
            model = "digits_logreg" if rng.random() < 0.9 else "no_such_model"
            with contextlib.suppress(Exception):  # NOT_FOUND is part of the picture (the error-ratio panel)
                client.infer(model, [inp])
            time.sleep(0.02)


def collect(seconds: float = 90.0, every: float = 1.0) -> list[tuple[float, Samples]]:
    from toolkit import ServeConfig, start

    config = ServeConfig(
        repository=ROOT / "model_repository", manifest=ROOT / "tritonctl.yaml", max_models=4,
        http_port=0, grpc_port=0, metrics_port=0, gateway_port=0, gateway_grpc_port=0,
    )  # fmt: skip
    snaps: list[tuple[float, Samples]] = []
    with start(config) as serving:
        stop = threading.Event()
        workers = [threading.Thread(target=_traffic, args=(serving.url, stop, seed)) for seed in range(4)]
        assert serving.grpc is not None
        workers.append(threading.Thread(target=_grpc_traffic, args=(serving.grpc, stop)))
        for w in workers:
            w.start()
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            text = urllib.request.urlopen(f"{serving.url}/metrics", timeout=10).read().decode()
            snaps.append((time.monotonic() - t0, parse_prometheus(text)))
            time.sleep(every)
        stop.set()
        for w in workers:
            w.join()
    return snaps


def draw(path: Path, snaps: list[tuple[float, Samples]] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assert set(PANEL_FUNCS) == {title for title, _, _ in PANELS}, "PANEL_FUNCS and the dashboard's PANELS differ"
    sc = Scrapes(snaps if snaps is not None else collect())
    units = {title: unit for title, unit, _ in PANELS}
    rows = (len(PANELS) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(14, 2.6 * rows), sharex=True)
    for ax, (title, _, _) in zip(axes.flat, PANELS, strict=False):
        for legend, values in sorted(PANEL_FUNCS[title](sc).items()):
            if values:
                ax.plot(sc.t[1 : 1 + len(values)], values, ".-", label=legend or title, linewidth=1.2, markersize=3)
        ax.set_title(title if len(title) < 70 else title[: title.index("(")].strip(), fontsize=9, loc="left")
        ax.set_ylabel(units[title], fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=6, loc="upper left", ncol=2)
    for ax in axes.flat[len(PANELS) :]:
        ax.axis("off")
    fig.suptitle(
        "tritonctl dashboard panels, computed from live /metrics scrapes (matplotlib, not Grafana)", fontsize=11
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
