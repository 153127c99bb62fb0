"""The MME manager's metrics: cheap plain-Python state updated on the event loop, exposed through ``prometheus_client``.

Why not ``prometheus_client.Counter``/``Histogram`` objects directly: each of their updates takes a lock (they are
thread-safe) and ``.labels(...)`` builds and looks up a label tuple under another lock; the gateway's hot path is
counted in instructions (``docs/benchmarks.md``), and everything here is updated on one event-loop thread. So the
state is dicts and lists (a histogram observation is one ``bisect`` and three additions, see ``Histogram``), and a
custom collector (``collect``) turns it into Prometheus metric families only when someone scrapes ``/metrics``.
Exposition, content negotiation (OpenMetrics) and parsing are ``prometheus_client``'s.

Names follow Prometheus conventions (``tritonctl_mme_`` prefix, snake_case, ``_total``, ``_seconds``, ``_bytes``);
``SAGEMAKER_NAMES`` maps each to the CloudWatch name SageMaker gives the same quantity (docs/metrics.md).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # prometheus_client is imported where it is used: importing it costs more than the CLI's start-up
    from prometheus_client.core import CollectorRegistry, Metric

DEFAULT_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
PREFIX = "tritonctl_mme_"

# Prometheus name (as scraped: counters with _total, histograms by their base name) -> SageMaker CloudWatch name.
SAGEMAKER_NAMES: dict[str, str] = {
    "tritonctl_mme_model_cache_hits_total": "ModelCacheHit",
    "tritonctl_mme_loaded_models": "LoadedModelCount",
    "tritonctl_mme_model_loading_wait_seconds": "ModelLoadingWaitTime",
    "tritonctl_mme_model_unloading_seconds": "ModelUnloadingTime",
    "tritonctl_mme_model_downloading_seconds": "ModelDownloadingTime",
    "tritonctl_mme_model_loading_seconds": "ModelLoadingTime",
}


class Histogram:
    """Per-bucket counts (not cumulative: one ``bisect`` finds the one bucket to bump), a sum and a count.

    ``buckets`` are the upper bounds (``le``); the last, implicit bucket is +Inf. Cumulative counts are made at
    scrape time (``cumulative``)."""

    __slots__ = ("bounds", "counts", "n", "total")

    def __init__(self, buckets: tuple[float, ...] = DEFAULT_BUCKETS) -> None:
        self.bounds = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # bisect_left: a value equal to a bound is in that bucket
        self.total += value
        self.n += 1

    def cumulative(self) -> list[tuple[str, float]]:
        """``[(le, cumulative count), ..., ("+Inf", n)]`` as ``HistogramMetricFamily`` takes them."""
        from prometheus_client.utils import floatToGoString

        out, acc = [], 0
        for bound, c in zip((*self.bounds, float("inf")), self.counts, strict=True):
            acc += c
            out.append((floatToGoString(bound), float(acc)))
        return out


def histogram_family(name: str, doc: str, labels: list[str], series: Iterable[tuple[list[str], Histogram]]) -> Metric:
    """A ``HistogramMetricFamily`` of many labelled ``Histogram`` series."""
    from prometheus_client.core import HistogramMetricFamily

    fam = HistogramMetricFamily(name, doc, labels=labels)
    for values, h in series:
        fam.add_metric(values, h.cumulative(), sum_value=h.total)
    return fam


@dataclass
class LabeledValue:
    """A counter or gauge family keyed by model (or unlabelled); ``kind`` is "counter" or "gauge"."""

    name: str  # without _total: prometheus_client appends it to counters
    help: str
    kind: str = "counter"
    label: str | None = "model"
    values: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def inc(self, amount: float = 1.0, model: str = "") -> None:
        self.values[model] += amount

    def set(self, value: float, model: str = "") -> None:
        self.values[model] = value

    def get(self, model: str = "") -> float:
        return self.values.get(model, 0.0)

    def family(self) -> Metric:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        labels = [self.label] if self.label else []
        fam: Metric = (
            CounterMetricFamily(self.name, self.help, labels=labels)
            if self.kind == "counter"
            else GaugeMetricFamily(self.name, self.help, labels=labels)
        )
        if not self.label:
            fam.add_metric([], self.values.get("", 0.0))  # type: ignore[attr-defined]
        else:
            for key, v in sorted(self.values.items()):
                fam.add_metric([key], v)  # type: ignore[attr-defined]
        return fam


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

    def family(self) -> Metric:
        from prometheus_client.core import SummaryMetricFamily

        names = sorted({k for key in self.sums for k, _ in key})
        fam = SummaryMetricFamily(self.name, self.help, labels=names)
        for key in sorted(self.sums):
            values = dict(key)
            fam.add_metric([values.get(n, "") for n in names], count_value=self.counts[key], sum_value=self.sums[key])
        return fam


LOAD_PHASES = ("fetch", "rewrite", "install", "admit", "queue", "triton", "triton_prep", "stub", "total")


class MMEMetrics:
    """Every metric the manager exports (docs/metrics.md has each one's meaning and SageMaker name).

    ``collect`` is the ``prometheus_client`` collector protocol: register the object (or the manager, which forwards
    to it after refreshing its gauges) in a ``CollectorRegistry``."""

    def __init__(self, prefix: str = PREFIX) -> None:
        p = prefix
        self.prefix = p
        self.cache_hit = LabeledValue(f"{p}model_cache_hits", "Invocations whose model was already loaded")
        self.cache_miss = LabeledValue(f"{p}model_cache_misses", "Invocations that had to wait for a load")
        self.invocations = LabeledValue(f"{p}model_invocations", "Invocations served through the manager")
        self.loaded = LabeledValue(f"{p}loaded_models", "Models loaded in Triton by the manager", "gauge", None)
        self.wait = Histogram()
        self.loading = Histogram()
        self.downloading = Histogram()
        self.unloading = Histogram()
        self.phases = LabeledSummary(
            f"{p}model_load_phase_seconds",
            "Where a cold load's time goes, by phase: fetch (store read + extraction), rewrite (config name), "
            "install (into the repository), admit (room: evictions, waits), queue (for a load slot), triton (the load "
            "call), of it triton_prep (until the python stub process starts) and stub (stub start to READY), total",
        )
        self.evictions = LabeledValue(f"{p}model_evictions", "Models unloaded to make room", label=None)
        self.failures = LabeledValue(f"{p}model_load_failures", "Failed fetches or loads")
        self.stub_failures = LabeledValue(
            f"{p}model_stub_failures", "Python stubs found dead under a loaded model, which was then reloaded"
        )
        self.disk_bytes = LabeledValue(f"{p}disk_cache_bytes", "Bytes held by the artifact disk cache", "gauge", None)
        self.memory = LabeledValue(f"{p}model_memory_bytes", "Measured or declared footprint per model", "gauge")
        self.budget = LabeledValue(f"{p}memory_budget_bytes", "Configured byte budget (0 = none)", "gauge", None)
        self.gpu_budget = LabeledValue(
            f"{p}gpu_memory_budget_bytes", "GPU byte budget: fraction x total GPU memory (0 = none)", "gauge", None
        )
        self.gpu_resident = LabeledValue(
            f"{p}gpu_memory_resident_bytes", "GPU bytes charged to loaded (and unloading) models", "gauge", None
        )
        self.gpu_memory = LabeledValue(
            f"{p}model_gpu_memory_bytes", "Measured or declared GPU footprint per model", "gauge"
        )

    def _histograms(self) -> list[tuple[str, str, Histogram]]:
        p = self.prefix
        return [
            (f"{p}model_loading_wait_seconds", "Time an invocation waited for its model to be ready", self.wait),
            (f"{p}model_loading_seconds", "Triton repository-API load time", self.loading),
            (f"{p}model_downloading_seconds", "Artifact fetch + extraction time", self.downloading),
            (f"{p}model_unloading_seconds", "Unload request until Triton released the model", self.unloading),
        ]

    def collect(self) -> Iterator[Metric]:
        for v in (self.cache_hit, self.cache_miss, self.invocations, self.loaded):
            yield v.family()
        for name, doc, h in self._histograms():
            yield histogram_family(name, doc, [], [([], h)])
        yield self.phases.family()
        for v in (
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
            yield v.family()

    def render(self) -> str:
        """The Prometheus text exposition of these metrics alone (tests, ``ModelManager.metrics_text``)."""
        return exposition(self)


class _Collector:
    """Anything with ``collect()`` (a duck-typed collector: the registry only calls ``collect``)."""

    def __init__(self, source: object) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        return self.source.collect()  # type: ignore[attr-defined]


def registry_of(*sources: object) -> CollectorRegistry:
    """A registry (no default process/platform collectors) whose scrape asks each source's ``collect()``."""
    from prometheus_client.core import CollectorRegistry

    reg = CollectorRegistry(auto_describe=False)
    for s in sources:
        reg.register(_Collector(s))
    return reg


def exposition(*sources: object) -> str:
    from prometheus_client.exposition import generate_latest

    return generate_latest(registry_of(*sources)).decode()
