"""Per-process measurements: precise latency histograms per target, errors by type, and a per-second time series.

Our users call ``add`` directly (or, in a plain locustfile, Locust's ``request`` event reaches ``on_request``) with
the float milliseconds they measured with ``perf_counter`` instead of Locust's rounded buckets. The hot path only
appends to arrays; histograms are built with numpy once, at hand-off, so that measuring costs the load generator
almost nothing. No locust import here: the orchestrator uses the same class to merge worker results.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter, defaultdict
from typing import Any

import numpy as np

from toolkit.loadtest.hist import LatencyHistogram


class Recorder:
    def __init__(self, t0: float = 0.0, warmup: float = 0.0) -> None:
        self.t0 = t0  # epoch seconds of the run's start; time-series buckets are whole seconds since t0
        self.warmup = warmup
        self.duration = math.inf  # seconds from t0: calls started later are outside the run (a late-waking loop)
        self.per_target: dict[str, LatencyHistogram] = defaultdict(LatencyHistogram)
        self.errors: Counter[tuple[str, str]] = Counter()  # (target, error type) -> count
        self.series: dict[int, LatencyHistogram] = defaultdict(LatencyHistogram)  # successes, all targets
        self.series_errors: Counter[int] = Counter()
        self.series_per_target: dict[str, Counter[int]] = defaultdict(Counter)
        self.users: dict[int, int] = {}  # active users sampled each second (the shape's effect)
        self.cold: Counter[str] = Counter()  # requests over the cold threshold (MME estimate)
        self.cold_threshold_ms: float | None = None
        self.first_ok: float | None = None
        self.last_ok: float | None = None
        self.closed = False  # set once the results are handed off: later completions are ignored
        self._raw: dict[str, tuple[array[float], array[float]]] = {}  # target -> (start times, ms), successes
        self.cpu: list[float | None] = []  # per load-generating process: CPU seconds / wall seconds after warm-up

    def add(self, name: str, ms: float, start: float, error: str | None) -> None:
        """Hot path: successes are appended raw (folded into histograms by ``flush``)."""
        if error is not None:
            self.record(name, ms, start, error)
            return
        if self.closed:
            return
        raw = self._raw.get(name)
        if raw is None:
            raw = self._raw[name] = (array("d"), array("d"))
        raw[0].append(start)
        raw[1].append(ms)

    def ok_count(self) -> int:
        """Successes so far, raw and folded (for live progress)."""
        return sum(h.count for h in self.series.values()) + sum(len(r[1]) for r in self._raw.values())

    def flush(self) -> None:
        """Fold the raw samples into the histograms and the time series (vectorised)."""
        for name, (starts_a, ms_a) in self._raw.items():
            if not len(ms_a):
                continue
            starts, ms = np.frombuffer(starts_a, dtype=np.float64), np.frombuffer(ms_a, dtype=np.float64)
            keep = starts < self.t0 + self.duration
            starts, ms = starts[keep], ms[keep]
            secs = np.maximum(0, np.floor(starts - self.t0)).astype(np.int64)
            buckets = LatencyHistogram.buckets_of(ms)
            inwin = starts >= self.t0 + self.warmup
            LatencyHistogram.add_many(self.per_target[name], buckets[inwin], ms[inwin])
            for sec in np.unique(secs):
                sel = secs == sec
                LatencyHistogram.add_many(self.series[int(sec)], buckets[sel], ms[sel])
                self.series_per_target[name][int(sec)] += int(sel.sum())
            if inwin.any():
                ends = starts[inwin] + ms[inwin] / 1000.0
                lo, hi = float(starts[inwin].min()), float(ends.max())
                self.first_ok = lo if self.first_ok is None else min(self.first_ok, lo)
                self.last_ok = hi if self.last_ok is None else max(self.last_ok, hi)
                if self.cold_threshold_ms is not None:
                    self.cold[name] += int((ms[inwin] >= self.cold_threshold_ms).sum())
        self._raw.clear()

    def record(self, name: str, ms: float, start: float, error: str | None) -> None:
        if self.closed or start >= self.t0 + self.duration:
            return
        sec = max(0, math.floor(start - self.t0))
        in_window = start >= self.t0 + self.warmup
        if error is not None:
            self.series_errors[sec] += 1
            if in_window:
                self.errors[(name, error)] += 1
            return
        self.series[sec].record(ms)
        self.series_per_target[name][sec] += 1
        if in_window:
            self.per_target[name].record(ms)
            end = start + ms / 1000.0
            self.first_ok = start if self.first_ok is None else min(self.first_ok, start)
            self.last_ok = end if self.last_ok is None else max(self.last_ok, end)
            if self.cold_threshold_ms is not None and ms >= self.cold_threshold_ms:
                self.cold[name] += 1

    # Locust event hook ------------------------------------------------------------------------------------------------
    def on_request(
        self, request_type: str, name: str, response_time: float, exception: BaseException | None = None, **kw: Any
    ) -> None:
        start = float(kw.get("start_time") or 0.0)
        self.add(name, float(response_time), start, None if exception is None else describe_error(exception))

    # hand-off ---------------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        self.flush()
        return {
            "t0": self.t0,
            "warmup": self.warmup,
            "per_target": {k: h.to_dict() for k, h in self.per_target.items()},
            "errors": [[t, e, n] for (t, e), n in self.errors.items()],
            "series": {str(s): h.to_dict() for s, h in self.series.items()},
            "series_errors": {str(s): n for s, n in self.series_errors.items()},
            "series_per_target": {k: {str(s): n for s, n in c.items()} for k, c in self.series_per_target.items()},
            "cold": dict(self.cold),
            "users": {str(k): v for k, v in self.users.items()},
            "first_ok": self.first_ok,
            "last_ok": self.last_ok,
            "cpu": self.cpu,
        }

    def merge_dict(self, d: dict[str, Any]) -> None:
        """Add a worker's result; its seconds are re-based on this recorder's t0."""
        shift = round(float(d["t0"]) - self.t0)
        for k, h in d["per_target"].items():
            self.per_target[k].merge(LatencyHistogram.from_dict(h))
        for t, e, n in d["errors"]:
            self.errors[(t, e)] += int(n)
        for s, h in d["series"].items():
            self.series[int(s) + shift].merge(LatencyHistogram.from_dict(h))
        for s, n in d["series_errors"].items():
            self.series_errors[int(s) + shift] += int(n)
        for k, c in d["series_per_target"].items():
            for s, n in c.items():
                self.series_per_target[k][int(s) + shift] += int(n)
        for s, n in d.get("users", {}).items():
            self.users[int(s) + shift] = self.users.get(int(s) + shift, 0) + int(n)
        for k, n in d.get("cold", {}).items():
            self.cold[k] += int(n)
        self.cpu.extend(d.get("cpu", []))
        for attr, pick in (("first_ok", min), ("last_ok", max)):
            v = d.get(attr)
            if v is not None:
                cur = getattr(self, attr)
                setattr(self, attr, v if cur is None else pick(cur, v))


def describe_error(exc: BaseException) -> str:
    """A short, stable error *type* (messages with per-request details would never group)."""
    text = str(exc).strip().replace("\n", " ")
    if len(text) > 160:
        text = text[:157] + "..."
    return text if text.startswith(("HTTP ", "gRPC ")) else f"{type(exc).__name__}: {text}"
