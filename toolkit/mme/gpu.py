"""GPU memory for the MME manager's GPU budget: where readings come from, and how one load's footprint is measured.

Readings come from Triton's own Prometheus metrics (``nv_gpu_memory_total_bytes`` / ``nv_gpu_memory_used_bytes``,
one sample per GPU, labelled ``gpu_uuid``): they describe exactly the GPUs that Triton uses, also for a remote Triton.
Triton refreshes them every ``--metrics-interval-ms`` (2000 ms by default), so a reading can be that stale. When the
``pynvml`` module (package nvidia-ml-py, optional) is importable and sees the same GPUs, NVML is read instead: same
numbers, no sampling delay. Both report *device-wide* used memory, so a footprint is the delta of the summed used
bytes across one model's load; to keep that delta attributable, windows are serialised (``GpuMeter``) and a window
in which any unload happened is discarded (the estimate stays). A Triton that reports no GPU gets
``GpuUnavailableError`` with one clear sentence, before the manager starts anything.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from toolkit.errors import TritonctlError
from toolkit.mme.errors import ManagerConfigError

log = logging.getLogger("toolkit.mme.manager")

GPU_TOTAL_METRIC = "nv_gpu_memory_total_bytes"
GPU_USED_METRIC = "nv_gpu_memory_used_bytes"
TRITON_METRICS_INTERVAL_S = 2.0  # tritonserver --metrics-interval-ms default (2000), per `tritonserver --help`
NO_GPU_HINT = "use --memory-budget"


class GpuUnavailableError(ManagerConfigError):
    """A GPU budget was asked for, but the Triton being managed reports no GPU (or its metrics cannot be read)."""


class GpuReadError(TritonctlError):
    """A GPU reading failed while serving (metrics briefly unreachable): that measurement is skipped, not fatal."""


class GpuReading(NamedTuple):
    used: int
    total: int


class GpuReader(Protocol):
    """A source of per-GPU memory readings. ``settle_s``: how stale a reading may be (the source's sampling
    interval), so a measurement waits that long after a load. ``read`` blocks (it is run in a thread)."""

    source: str
    settle_s: float

    def read(self) -> dict[str, GpuReading]: ...


def parse_gpu_memory(text: str) -> dict[str, GpuReading]:
    """Per-GPU (used, total) bytes from Prometheus exposition text (read by ``prometheus_client``'s parser); GPUs
    lacking either sample are left out. Text the parser rejects counts as no reading from there on."""
    from prometheus_client.parser import text_string_to_metric_families  # on use: the package is heavy to import

    used: dict[str, int] = {}
    total: dict[str, int] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name not in (GPU_USED_METRIC, GPU_TOTAL_METRIC):
                    continue
                value = sample.value
                if not math.isfinite(value) or value < 0:
                    continue
                labels = sample.labels
                uuid = labels.get("gpu_uuid") or labels.get("gpu") or "gpu"
                (used if sample.name == GPU_USED_METRIC else total)[uuid] = int(value)
    except ValueError:
        pass  # a malformed line: keep what was read before it
    return {u: GpuReading(used[u], total[u]) for u in sorted(used.keys() & total.keys())}


def gpu_budget_bytes(fraction: float, readings: dict[str, GpuReading]) -> int:
    """``fraction`` x the total memory of every GPU read (several GPUs are pooled: placement is not modelled)."""
    check_fraction(fraction)
    if not readings:
        raise GpuUnavailableError(f"no GPU readings: {NO_GPU_HINT}")
    return int(fraction * sum(r.total for r in readings.values()))


def used_bytes(readings: dict[str, GpuReading]) -> int:
    return sum(r.used for r in readings.values())


def check_fraction(fraction: float) -> None:
    if not (isinstance(fraction, int | float) and math.isfinite(fraction) and 0 < fraction <= 1):
        raise ManagerConfigError(f"--gpu-memory-fraction must be in (0, 1], got {fraction!r}")


class TritonGpuMetrics:
    """Triton's ``nv_gpu_memory_*`` gauges from its metrics endpoint."""

    source = "triton-metrics"

    def __init__(self, metrics_url: str, timeout: float = 5.0, interval_s: float = TRITON_METRICS_INTERVAL_S) -> None:
        self.metrics_url = metrics_url
        self.timeout = timeout
        self.settle_s = interval_s + 0.5  # one full refresh after the event, plus the scrape itself

    def read(self) -> dict[str, GpuReading]:
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=self.timeout) as r:
                text = r.read().decode("utf-8", "replace")
        except (urllib.error.URLError, OSError) as exc:
            raise GpuReadError(f"cannot read Triton's metrics at {self.metrics_url}: {exc}") from None
        readings = parse_gpu_memory(text)
        if not readings:
            raise GpuUnavailableError(
                f"Triton reports no GPU: nv_gpu_memory_* metrics absent at {self.metrics_url} (a CPU-only Triton, "
                f"or one started with --allow-gpu-metrics=false); {NO_GPU_HINT}"
            )
        return readings


@dataclass
class NvmlGpu:
    """NVML readings (``pynvml``), limited to ``uuids`` when given (the GPUs Triton reported)."""

    uuids: frozenset[str] | None = None
    source: str = "nvml"
    settle_s: float = 0.2  # NVML is immediate; this only lets a model's last allocations land
    _nvml: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        import pynvml  # optional dependency: ImportError tells the caller NVML is not available

        pynvml.nvmlInit()
        self._nvml = pynvml

    def read(self) -> dict[str, GpuReading]:
        nv = self._nvml
        out: dict[str, GpuReading] = {}
        try:
            for i in range(nv.nvmlDeviceGetCount()):
                handle = nv.nvmlDeviceGetHandleByIndex(i)
                uuid = nv.nvmlDeviceGetUUID(handle)
                uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
                if self.uuids is None or uuid in self.uuids:
                    mem = nv.nvmlDeviceGetMemoryInfo(handle)
                    out[uuid] = GpuReading(int(mem.used), int(mem.total))
        except nv.NVMLError as exc:
            raise GpuReadError(f"NVML read failed: {exc}") from None
        return out


def _nvml_reader(uuids: frozenset[str] | None) -> NvmlGpu | None:
    try:
        reader = NvmlGpu(uuids)
        seen = set(reader.read())
        return reader if seen and (uuids is None or seen == set(uuids)) else None
    except Exception as exc:  # ImportError, NVMLError (no driver), GpuReadError: all mean "no NVML"
        log.debug("NVML not usable: %s", exc)
        return None


def open_gpu_reader(metrics_url: str, *, local: bool, timeout: float = 5.0) -> GpuReader:
    """The reader for the GPUs of the Triton whose metrics are at ``metrics_url`` (``local``: it runs on this host).

    Triton's metrics decide which GPUs count; NVML reads those same GPUs when it can (no sampling delay). A local
    Triton without GPU metrics (tritonctl's embedded launcher passes ``--allow-gpu-metrics=false``) falls back to
    NVML's view of this host; otherwise ``GpuUnavailableError``."""
    triton = TritonGpuMetrics(metrics_url, timeout)
    try:
        readings = triton.read()
    except (GpuUnavailableError, GpuReadError) as exc:
        nvml = _nvml_reader(None) if local else None
        if nvml is None:
            raise GpuUnavailableError(f"{exc}{'' if NO_GPU_HINT in str(exc) else '; ' + NO_GPU_HINT}") from None
        log.warning("%s; using NVML's view of this host's GPUs instead", exc)
        return nvml
    return _nvml_reader(frozenset(readings)) or triton


@dataclass
class GpuWindow:
    """One load's measurement window: when it opened and the used bytes then (None: that reading failed)."""

    name: str
    opened: float
    before: int | None


class GpuMeter:
    """The GPU budget and its bookkeeping: the bytes charged to each model, the footprints measured so far, and the
    serialised measurement windows (one at a time: a delta of device-wide memory is only attributable to one load
    if no other load runs inside it, and no unload either)."""

    def __init__(self, reader: GpuReader, budget_bytes: int, total_bytes: int) -> None:
        self.reader = reader
        self.budget_bytes = budget_bytes
        self.total_bytes = total_bytes
        self.sizes: dict[str, int] = {}  # bytes charged to each model while reserved/resident
        self.measured: dict[str, int] = {}  # last attributable delta per model name: the next load's estimate
        self.discarded = 0  # windows whose delta was not attributable (an unload overlapped, a read failed)
        self.last_unload_change = -math.inf
        self._lock = asyncio.Lock()

    def note_unload(self) -> None:
        """Memory may have been released now (an unload started or finished, a load failed, Triton died)."""
        self.last_unload_change = time.monotonic()

    async def read_used(self) -> int | None:
        try:
            return used_bytes(await asyncio.to_thread(self.reader.read))
        except TritonctlError as exc:
            log.warning("GPU reading failed (measurement skipped): %s", exc)
            return None

    async def begin(self, name: str) -> GpuWindow:
        """Wait for the previous window to close, then read the used bytes just before ``name`` loads."""
        await self._lock.acquire()
        try:
            return GpuWindow(name, time.monotonic(), await self.read_used())
        except BaseException:
            self._lock.release()
            raise

    def abandon(self) -> None:
        """The load failed: close the window (a failed load may have freed what it had allocated)."""
        self.note_unload()
        self._lock.release()

    async def finish(self, window: GpuWindow) -> int | None:
        """The model's GPU bytes, or None when the delta is not attributable to it alone. Waits ``settle_s`` so
        the reading postdates the load (Triton's gauges are sampled), then closes the window."""
        try:
            await asyncio.sleep(self.reader.settle_s)
            after = await self.read_used()
            # An unload that changed memory within one sampling interval before the window (a stale "before") or
            # inside it would make the delta too small: no attribution then.
            quiet = self.last_unload_change < window.opened - self.reader.settle_s
            if window.before is None or after is None or not quiet or after < window.before:
                self.discarded += 1
                return None
            self.measured[window.name] = after - window.before
            return after - window.before
        finally:
            self._lock.release()


async def start_gpu_meter(fraction: float, metrics_url: str, reader: GpuReader | None = None) -> GpuMeter:
    """The manager's GPU budget, read once at its start: ``fraction`` x the memory of the GPUs the Triton at
    ``metrics_url`` reports (``reader`` default: ``open_gpu_reader``, NVML too when Triton runs on this host).
    ``GpuUnavailableError`` for a Triton without a GPU, before anything else starts."""
    if reader is None:
        host = metrics_url.split("://", 1)[-1].split("/", 1)[0].rpartition(":")[0].strip("[]")
        local = host in ("127.0.0.1", "localhost", "::1", "0.0.0.0")
        reader = await asyncio.to_thread(open_gpu_reader, metrics_url, local=local)
    readings = await asyncio.to_thread(reader.read)
    budget = gpu_budget_bytes(fraction, readings)
    meter = GpuMeter(reader, budget, sum(r.total for r in readings.values()))
    log.info(
        "GPU budget %d bytes (%.2f x %d bytes on %d GPU(s), read from %s)",
        budget, fraction, meter.total_bytes, len(readings), reader.source,
    )  # fmt: skip
    return meter
