"""What the gateway counts per request, the collector that exposes it, and the optional JSON-lines access log.

Why this shape: the warm KServe infer is answered from callbacks (``http_dispatch``) and its cost is measured in
instructions, so a request's bookkeeping is one call of ``RequestStats.record``: a dict lookup of its series
(api, endpoint, model, status code) and one ``bisect`` per histogram (``toolkit.mme.metrics.Histogram``), no locks
and no metric objects (``prometheus_client``'s ``Histogram.labels(...).observe`` costs several times more, measured
in docs/metrics.md). ``GatewayCollector`` turns the state into Prometheus families at scrape time.

Label values are bounded: a model label is a name the manager knows (an unknown name in a refused request is
counted under ``model=""``), an endpoint label is ``kserve`` (KServe v2 over HTTP and gRPC: the endpoint both are
authorized against) or a configured SageMaker endpoint. ``code`` is the HTTP status, except for ``api="grpc"``:
there the series key holds the gRPC status number and the label (and the access log) reads its name (``OK``,
``NOT_FOUND``...), as gRPC's own Prometheus middlewares label it; an HTTP ``404`` and gRPC's ``5`` never share a
label value.
"""

from __future__ import annotations

import datetime
import sys
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from time import perf_counter
from typing import IO, TYPE_CHECKING

import orjson

from toolkit.mme.metrics import Histogram, histogram_family

if TYPE_CHECKING:
    from prometheus_client.core import Metric

# Upper bounds in seconds: from a warm small model through the gateway (~0.3 ms) to a cold load of a big one.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
PREFIX = "tritonctl_gateway_"
_LABELS = ["api", "endpoint", "model", "code"]
GRPC_API = "grpc"
# grpc.StatusCode's names by number (not imported: the gateway's metrics path does not load grpcio)
GRPC_CODES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
    "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
)  # fmt: skip


def code_label(api: str, code: int) -> str:
    """The ``code`` label (and access-log ``status``) of a series: gRPC's status name, else the HTTP status."""
    if api == GRPC_API:
        return GRPC_CODES[code] if 0 <= code < len(GRPC_CODES) else "UNKNOWN"
    return str(code)


_NB = len(LATENCY_BUCKETS) + 1  # buckets per histogram, +Inf included
_UP, _LAT_SUM, _UP_SUM, _LAT_N, _UP_N = _NB, 2 * _NB, 2 * _NB + 1, 2 * _NB + 2, 2 * _NB + 3  # offsets in ``v``


class Series:
    """One (api, endpoint, model, code): a count and three latency histograms (the cold one made on first use).

    The request and upstream histograms share one flat list ``v`` (request buckets, upstream buckets, their sums
    and counts), so ``RequestStats.hot`` updates them with a few subscripts and no attribute or method lookups:
    every bytecode there is paid by every warm request (docs/metrics.md has the instruction counts)."""

    __slots__ = ("cold", "n", "v")

    def __init__(self) -> None:
        self.n = 0
        self.v: list[float] = [0] * (2 * _NB + 4)
        self.cold: Histogram | None = None

    def histogram(self, which: str) -> Histogram | None:
        """``latency`` or ``upstream`` as a ``Histogram`` (for the collector); None when nothing was timed."""
        v, h = self.v, Histogram(LATENCY_BUCKETS)
        start, total, n = (0, _LAT_SUM, _LAT_N) if which == "latency" else (_UP, _UP_SUM, _UP_N)
        if not v[n]:
            return None
        h.counts, h.total, h.n = [int(c) for c in v[start : start + _NB]], float(v[total]), int(v[n])
        return h


@dataclass
class Timing:
    """One request's timings on the HTTP slow path (``http_front``) (``RequestStats.record`` takes them)."""

    timed: bool = False  # an invocation (timed) or a metadata read (only counted)
    upstream: float | None = None
    cold: float | None = None
    principal: str = ""
    start: float = 0.0

    def __post_init__(self) -> None:
        self.start = perf_counter()


class AccessLog:
    """JSON lines, one per answered request, to a file (``-`` = stderr), flushed per line so ``tail -f`` shows it.

    Fields: ``time`` (UTC, ISO 8601), ``principal``, ``api``, ``endpoint``, ``model``, ``status``, ``latency_ms``,
    ``upstream_ms``, ``cold`` (the request waited for a load), ``cold_wait_ms`` (when cold) and ``traceparent`` (when
    the client sent one). Costs only when on: the writer is None otherwise."""

    def __init__(self, target: str) -> None:
        self.path = target
        self._own = target != "-"
        self._file: IO[bytes] = open(target, "ab") if self._own else sys.stderr.buffer  # noqa: SIM115

    def write(self, entry: dict[str, object]) -> None:
        entry["time"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
        self._file.write(orjson.dumps(entry) + b"\n")
        self._file.flush()

    def close(self) -> None:
        if self._own:
            self._file.close()


class RequestStats:
    """Requests answered by the gateway, by (api, endpoint, model, code); see the module's docstring."""

    __slots__ = ("access", "series")

    def __init__(self, access: AccessLog | None = None) -> None:
        self.series: dict[tuple[str, str, str, int], Series] = {}
        self.access = access

    def record(
        self,
        api: str,
        endpoint: str,
        model: str,
        status: int,
        seconds: float | None = None,
        upstream_s: float | None = None,
        cold_wait_s: float | None = None,
        principal: str = "",
        trace: str | bytes | None = None,
    ) -> None:
        """One answered request. ``seconds`` None: refused before a handler ran (counted, not timed)."""
        key = (api, endpoint, model, status)
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = Series()
        s.n += 1
        v = s.v
        if seconds is not None:
            v[bisect_left(LATENCY_BUCKETS, seconds)] += 1
            v[_LAT_SUM] += seconds
            v[_LAT_N] += 1
        if upstream_s is not None:
            v[_UP + bisect_left(LATENCY_BUCKETS, upstream_s)] += 1
            v[_UP_SUM] += upstream_s
            v[_UP_N] += 1
        if cold_wait_s is not None:
            if s.cold is None:
                s.cold = Histogram(LATENCY_BUCKETS)
            s.cold.observe(cold_wait_s)
        if self.access is not None:
            self.log(key, seconds, upstream_s, cold_wait_s, principal, trace)

    def hot(self, key: tuple[str, str, str, int], seconds: float, upstream_s: float) -> None:
        """``record`` for the warm HTTP path (timed, never cold): positional, constant offsets, no branch but the
        first use of a series (callgrind counts in docs/metrics.md)."""
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = Series()
        s.n += 1
        v = s.v
        v[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        v[18 + bisect_left(LATENCY_BUCKETS, upstream_s)] += 1  # _UP (asserted below the class)
        v[36] += seconds  # _LAT_SUM
        v[37] += upstream_s  # _UP_SUM
        v[38] += 1  # _LAT_N
        v[39] += 1  # _UP_N

    def log(
        self,
        key: tuple[str, str, str, int],
        seconds: float | None,
        upstream_s: float | None,
        cold_wait_s: float | None,
        principal: str,
        trace: str | bytes | None,
    ) -> None:
        assert self.access is not None
        api, endpoint, model, status = key
        entry: dict[str, object] = {
            "principal": principal,
            "api": api,
            "endpoint": endpoint,
            "model": model,
            "status": code_label(api, status) if api == GRPC_API else status,
            "latency_ms": None if seconds is None else round(seconds * 1000, 3),
            "upstream_ms": None if upstream_s is None else round(upstream_s * 1000, 3),
            "cold": cold_wait_s is not None,
        }
        if cold_wait_s is not None:
            entry["cold_wait_ms"] = round(cold_wait_s * 1000, 3)
        if trace:
            entry["traceparent"] = trace.decode("latin-1") if isinstance(trace, bytes) else trace
        self.access.write(entry)

    def count(self, api: str) -> dict[int, int]:
        """Requests by status code for one API (tests, the CLI): gRPC's by status number."""
        out: dict[int, int] = {}
        for (a, _, _, code), s in self.series.items():
            if a == api:
                out[code] = out.get(code, 0) + s.n
        return out


assert (_UP, _LAT_SUM, _UP_SUM, _LAT_N, _UP_N) == (18, 36, 37, 38, 39), "RequestStats.hot's constant offsets"


class GatewayCollector:
    """The gateway's metric families, read at scrape time from ``RequestStats`` and three readers of the core."""

    def __init__(
        self, stats: RequestStats, hot_path: Callable[[], int], inflight: Callable[[], int], up: Callable[[], bool]
    ) -> None:
        self.stats = stats
        self.hot_path = hot_path
        self.inflight = inflight
        self.up = up

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        items = sorted(self.stats.series.items())
        req = CounterMetricFamily(f"{PREFIX}requests", "Requests answered by the gateway", labels=_LABELS)
        for (api, ep, model, code), s in items:
            req.add_metric([api, ep, model, code_label(api, code)], s.n)
        yield req
        timed = [([a, e, m, code_label(a, c)], s) for (a, e, m, c), s in items]
        yield histogram_family(
            f"{PREFIX}request_duration_seconds",
            "From the complete request to Triton's answer (or the gateway's refusal)",
            _LABELS,
            [(labels, h) for labels, s in timed if (h := s.histogram("latency")) is not None],
        )
        yield histogram_family(
            f"{PREFIX}upstream_duration_seconds",
            "Time waiting for Triton's answers to the request (a serial endpoint: every step)",
            _LABELS,
            [(labels, h) for labels, s in timed if (h := s.histogram("upstream")) is not None],
        )
        yield histogram_family(
            f"{PREFIX}cold_load_wait_seconds",
            "Time a request waited for a cold model to be loaded",
            _LABELS,
            [(labels, s.cold) for labels, s in timed if s.cold is not None],
        )
        hot = CounterMetricFamily(f"{PREFIX}hot_path", "KServe infers of warm models forwarded without a task")
        hot.add_metric([], self.hot_path())
        yield hot
        inflight = GaugeMetricFamily(f"{PREFIX}inflight", "Requests holding a concurrency slot now")
        inflight.add_metric([], self.inflight())
        yield inflight
        up = GaugeMetricFamily(f"{PREFIX}triton_up", "1 when Triton is up (the supervisor's view)")
        up.add_metric([], int(self.up()))
        yield up
