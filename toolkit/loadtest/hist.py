"""A mergeable log-bucketed latency histogram with sub-millisecond resolution.

Locust's own statistics round response times to whole milliseconds (and coarser above 100 ms), which hides exactly
the differences that matter for a ~1 ms Triton round trip. This histogram keeps ~1% relative precision from 1 µs to
hours, is sparse (a dict of bucket -> count), and merges by addition so that several worker processes can be combined.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

_GROWTH = 1.01  # bucket width: 1% relative error bound on any reported percentile
_LOG_GROWTH = math.log(_GROWTH)


def _bucket(us: float) -> int:
    return 0 if us <= 1.0 else int(math.log(us) / _LOG_GROWTH) + 1


def _bucket_value(b: int) -> float:
    """Geometric midpoint of the bucket, in microseconds."""
    if b <= 0:
        return 1.0
    return math.exp((b - 0.5) * _LOG_GROWTH)


class LatencyHistogram:
    """Counts of latencies (recorded in milliseconds, stored in µs buckets), plus exact count/sum/min/max."""

    __slots__ = ("buckets", "count", "max_ms", "min_ms", "sum_ms")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.sum_ms = 0.0
        self.min_ms = math.inf
        self.max_ms = 0.0

    def record(self, ms: float) -> None:
        b = _bucket(ms * 1000.0)
        self.buckets[b] = self.buckets.get(b, 0) + 1
        self.count += 1
        self.sum_ms += ms
        self.min_ms = min(self.min_ms, ms)
        self.max_ms = max(self.max_ms, ms)

    @staticmethod
    def buckets_of(ms: np.ndarray) -> np.ndarray:
        """Vectorised ``_bucket`` for an array of milliseconds."""
        us = np.maximum(ms * 1000.0, 1.0)
        return np.where(us <= 1.0, 0, (np.log(us) / _LOG_GROWTH).astype(np.int64) + 1)

    @staticmethod
    def add_many(h: LatencyHistogram, buckets: np.ndarray, ms: np.ndarray) -> None:
        if not len(ms):
            return
        keys, counts = np.unique(buckets, return_counts=True)
        for b, n in zip(keys.tolist(), counts.tolist(), strict=True):
            h.buckets[b] = h.buckets.get(b, 0) + n
        h.count += len(ms)
        h.sum_ms += float(ms.sum())
        h.min_ms = min(h.min_ms, float(ms.min()))
        h.max_ms = max(h.max_ms, float(ms.max()))

    def merge(self, other: LatencyHistogram) -> LatencyHistogram:
        for b, n in other.buckets.items():
            self.buckets[b] = self.buckets.get(b, 0) + n
        self.count += other.count
        self.sum_ms += other.sum_ms
        self.min_ms = min(self.min_ms, other.min_ms)
        self.max_ms = max(self.max_ms, other.max_ms)
        return self

    @classmethod
    def merged(cls, parts: Iterable[LatencyHistogram]) -> LatencyHistogram:
        out = cls()
        for p in parts:
            out.merge(p)
        return out

    @property
    def mean_ms(self) -> float:
        return self.sum_ms / self.count if self.count else 0.0

    def percentile(self, q: float) -> float:
        """The q-th percentile (0..100) in ms; exact min/max at the ends, else the bucket midpoint (±0.5%)."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(q / 100.0 * self.count))
        seen = 0
        for b in sorted(self.buckets):
            seen += self.buckets[b]
            if seen >= rank:
                value = _bucket_value(b) / 1000.0
                return min(max(value, self.min_ms), self.max_ms)
        return self.max_ms

    def summary(self) -> dict[str, float]:
        return {
            "count": self.count,
            "avg_ms": self.mean_ms,
            "min_ms": self.min_ms if self.count else 0.0,
            "p50_ms": self.percentile(50),
            "p90_ms": self.percentile(90),
            "p95_ms": self.percentile(95),
            "p99_ms": self.percentile(99),
            "max_ms": self.max_ms,
        }

    # -- (de)serialisation for the worker -> orchestrator hand-off -----------------------------------------------------
    def to_dict(self) -> dict[str, object]:
        return {
            "buckets": {str(b): n for b, n in self.buckets.items()},
            "count": self.count,
            "sum_ms": self.sum_ms,
            "min_ms": self.min_ms if self.count else None,
            "max_ms": self.max_ms,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyHistogram:
        h = cls()
        buckets = d.get("buckets") or {}
        assert isinstance(buckets, dict)
        h.buckets = {int(b): int(n) for b, n in buckets.items()}
        h.count = int(d.get("count") or 0)
        h.sum_ms = float(d.get("sum_ms") or 0.0)
        h.min_ms = math.inf if d.get("min_ms") is None else float(d["min_ms"])
        h.max_ms = float(d.get("max_ms") or 0.0)
        return h
