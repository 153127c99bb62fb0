"""Minimal Prometheus exposition for the MME manager (SageMaker metric names, ``tritonctl_`` prefix).

A dependency-free histogram/counter pair is enough here: the manager updates them on the event loop thread only
(no locks needed) and ``render`` is called by the gateway's /metrics handler.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

DEFAULT_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items())) + "}"


def _num(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


@dataclass
class Histogram:
    """A cumulative-bucket histogram with sum and count, plus the raw observation count for quick percentiles."""

    name: str
    help: str
    buckets: tuple[float, ...] = DEFAULT_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        self.total += value
        self.n += 1
        for i, b in enumerate(self.buckets):
            if value <= b:
                self.counts[i] += 1

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for b, c in zip(self.buckets, self.counts, strict=True):
            out.append(f'{self.name}_bucket{{le="{_num(b)}"}} {c}')
        out.append(f'{self.name}_bucket{{le="+Inf"}} {self.n}')
        out.append(f"{self.name}_sum {_num(self.total)}")
        out.append(f"{self.name}_count {self.n}")
        return out


@dataclass
class LabeledCounter:
    """A counter (or gauge) family with one label set per model."""

    name: str
    help: str
    kind: str = "counter"
    values: dict[tuple[tuple[str, str], ...], float] = field(default_factory=lambda: defaultdict(float))

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self.values[tuple(sorted(labels.items()))] += amount

    def set(self, value: float, **labels: str) -> None:
        self.values[tuple(sorted(labels.items()))] = value

    def get(self, **labels: str) -> float:
        return self.values.get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        if not self.values:
            out.append(f"{self.name} 0")
        for key, v in sorted(self.values.items()):
            out.append(f"{self.name}{_labels(dict(key))} {_num(v)}")
        return out


@dataclass
class LabeledSummary:
    """Sum and count of observations per label set (a Prometheus summary without quantiles): where the time of one
    kind of event goes, split by a label (the phases of a cold load), cheap enough to update on every load."""

    name: str
    help: str
    sums: dict[tuple[tuple[str, str], ...], float] = field(default_factory=lambda: defaultdict(float))
    counts: dict[tuple[tuple[str, str], ...], int] = field(default_factory=lambda: defaultdict(int))

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.sums[key] += value
        self.counts[key] += 1

    def sum(self, **labels: str) -> float:
        return self.sums.get(tuple(sorted(labels.items())), 0.0)

    def count(self, **labels: str) -> int:
        return self.counts.get(tuple(sorted(labels.items())), 0)

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} summary"]
        for key in sorted(self.sums):
            out.append(f"{self.name}_sum{_labels(dict(key))} {_num(self.sums[key])}")
            out.append(f"{self.name}_count{_labels(dict(key))} {self.counts[key]}")
        return out


LOAD_PHASES = ("fetch", "rewrite", "install", "admit", "queue", "triton", "triton_prep", "stub", "total")


class MMEMetrics:
    """Every metric the manager exports; see docs/mme.md for their meaning."""

    def __init__(self, prefix: str = "tritonctl_") -> None:
        p = prefix
        self.cache_hit = LabeledCounter(f"{p}ModelCacheHit", "Requests whose model was already loaded (per model)")
        self.cache_miss = LabeledCounter(f"{p}ModelCacheMiss", "Requests that had to wait for a load (per model)")
        self.invocations = LabeledCounter(f"{p}ModelInvocations_total", "Requests served through the manager")
        self.loaded = LabeledCounter(f"{p}LoadedModelCount", "Models loaded in Triton by the manager", "gauge")
        self.wait = Histogram(f"{p}ModelLoadingWaitTime_seconds", "Time a request waited for its model to be ready")
        self.loading = Histogram(f"{p}ModelLoadingTime_seconds", "Triton repository-API load time")
        self.downloading = Histogram(f"{p}ModelDownloadingTime_seconds", "Artifact fetch + extraction time")
        self.unloading = Histogram(f"{p}ModelUnloadingTime_seconds", "Unload request until Triton released it")
        self.phases = LabeledSummary(
            f"{p}ModelLoadPhase_seconds",
            "Where a cold load's time goes, by phase: fetch (store read + extraction), rewrite (config name), "
            "install (into the repository), admit (room: evictions, waits), queue (for a load slot), triton (the load "
            "call), of it triton_prep (until the python stub process starts) and stub (stub start to READY), total",
        )
        self.evictions = LabeledCounter(f"{p}ModelEvictions_total", "Models unloaded to make room")
        self.failures = LabeledCounter(f"{p}ModelLoadFailures_total", "Failed fetches or loads (per model)")
        self.stub_failures = LabeledCounter(
            f"{p}ModelStubFailures_total", "Python stubs found dead under a loaded model, which was then reloaded"
        )
        self.disk_bytes = LabeledCounter(f"{p}DiskCacheBytes", "Bytes held by the artifact disk cache", "gauge")
        self.memory = LabeledCounter(f"{p}ModelMemoryBytes", "Measured or declared footprint per model", "gauge")
        self.budget = LabeledCounter(f"{p}MemoryBudgetBytes", "Configured byte budget (0 = none)", "gauge")
        self.gpu_budget = LabeledCounter(
            f"{p}GpuMemoryBudgetBytes", "GPU byte budget: fraction x total GPU memory (0 = none)", "gauge"
        )
        self.gpu_resident = LabeledCounter(
            f"{p}GpuMemoryResidentBytes", "GPU bytes charged to loaded (and unloading) models", "gauge"
        )
        self.gpu_memory = LabeledCounter(
            f"{p}ModelGpuMemoryBytes", "Measured or declared GPU footprint per model", "gauge"
        )

    def render(self) -> str:
        parts: list[str] = []
        for m in (
            self.cache_hit,
            self.cache_miss,
            self.invocations,
            self.loaded,
            self.wait,
            self.loading,
            self.downloading,
            self.unloading,
            self.phases,
            self.evictions,
            self.failures,
            self.stub_failures,
            self.disk_bytes,
            self.memory,
            self.budget,
            self.gpu_budget,
            self.gpu_resident,
            self.gpu_memory,
        ):
            parts.extend(m.render())
        return "\n".join(parts) + "\n"
