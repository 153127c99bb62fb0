"""Single-flight loading for the MME manager: fetch (store -> disk cache -> repository), make room, Triton load.

Each model has at most one operation in progress, a Future in ``Entry.future``; every request for that model awaits
the same Future, so N concurrent cold requests cause one fetch and one load, and a failure reaches every waiter. A
failed model stays FAILED for an exponential backoff, then the next request retries: a broken artifact must not turn
every request into a fresh download. Blocking work (store fetches, tar extraction, psutil) goes to threads.

With a GPU budget, each Triton load runs inside a ``GpuMeter`` window (serialised: one at a time) so its GPU
footprint is the delta of device-wide used memory; the window closes in the background after the model is READY,
so a cold request never waits for the measurement, only the next load does.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from toolkit.mme._eviction import Evictor
from toolkit.mme._files import composing_models, link_tree, staging_dir
from toolkit.mme._gate import LoadGate
from toolkit.mme._preflight import never_loads
from toolkit.mme._residency import Entry, Residency, State
from toolkit.mme._triton import TritonRepository
from toolkit.mme.diskcache import DiskCache
from toolkit.mme.errors import (
    ArtifactFetchError,
    LoadHungError,
    LoadTimeoutError,
    ModelLoadError,
    ModelNotFoundError,
    NoCapacityError,
)
from toolkit.mme.footprint import DEFAULT_GPU_MODEL_BYTES, declared_bytes, declared_gpu_bytes, stub_rss
from toolkit.mme.gpu import GpuMeter, GpuWindow
from toolkit.mme.layout import STEPS_DIR
from toolkit.mme.metrics import MMEMetrics
from toolkit.mme.phases import run_collecting
from toolkit.mme.policies import EvictionPolicy
from toolkit.mme.safe_tar import ArtifactError, ArtifactNotFoundError, install_dir
from toolkit.mme.stores import ArtifactStore

log = logging.getLogger("toolkit.mme.manager")  # the public module's logger: existing log filters keep working


class Loader:
    """Brings one model from wherever it is to READY, and knows (estimates, then measures) what it costs in bytes.

    ``acquire`` is the manager's own request path: an ensemble's composing models are loaded (and counted, and hit)
    exactly as if a client had asked for them."""

    def __init__(
        self,
        residency: Residency,
        triton: TritonRepository,
        evictor: Evictor,
        policy: EvictionPolicy,
        metrics: MMEMetrics,
        *,
        repository: Path,
        store: ArtifactStore | None,
        disk_cache: DiskCache | None,
        declared_sizes: dict[str, int],
        default_model_bytes: int,
        backoff: tuple[float, float],
        measure_footprint: bool,
        load_timeout: float,
        spawn: Callable[[Coroutine[Any, Any, Any]], None],
        acquire: Callable[[str, float | None], Awaitable[Entry]],
        default_gpu_model_bytes: int = DEFAULT_GPU_MODEL_BYTES,
        max_concurrent_loads: int | None = None,
    ) -> None:
        self._res = residency
        self.gate = LoadGate(max_concurrent_loads)
        self._triton = triton
        self._evictor = evictor
        self._policy = policy
        self._metrics = metrics
        self.repository = repository
        self.staging = staging_dir(repository)
        self.staging.mkdir(exist_ok=True)
        self.store = store
        self.disk_cache = disk_cache
        self.declared_sizes = declared_sizes
        self.default_model_bytes = default_model_bytes
        self.backoff = backoff
        self.measure_footprint = measure_footprint
        self._load_timeout = load_timeout
        self._spawn = spawn
        self._acquire = acquire
        self.measured: dict[str, int] = {}  # stub RSS of models seen loaded: the best estimate for the next load
        self.measure_delay = 0.5
        self._measuring = False
        self.default_gpu_model_bytes = default_gpu_model_bytes
        self.gpu: GpuMeter | None = None  # the GPU budget, once read at start

    # -------------------------------------------------------------------------------------------- waiting ---
    async def wait_ready(self, e: Entry, deadline: float) -> None:
        """Start the load if none is under way (and no backoff forbids it), then wait for it up to ``deadline``."""
        start = time.monotonic()
        while e.state is not State.READY:
            if e.future is None:
                if e.state is State.FAILED and time.monotonic() < e.retry_at and e.error is not None:
                    raise type(e.error)(e.name, e.error.reason, retry_in=e.retry_at - time.monotonic())
                e.future = asyncio.get_running_loop().create_future()
                e.future.add_done_callback(lambda f: f.cancelled() or f.exception())
                e.state, e.reserved = State.LOADING, False
                self._spawn(self._load(e, e.future))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LoadTimeoutError(e.name, time.monotonic() - start, f"state {e.state.value}")
            if e.state is State.UNLOADING:
                self._evictor.hurry(e.name)
            try:
                await asyncio.wait_for(asyncio.shield(e.future), remaining)
            except TimeoutError:
                raise LoadTimeoutError(e.name, time.monotonic() - start, f"still {e.state.value}") from None

    # ----------------------------------------------------------------------------------------------- load ---
    async def _load(self, e: Entry, fut: asyncio.Future[None]) -> None:
        name = e.name
        registered = False
        began = time.perf_counter()
        clock: dict[str, float] = {}  # the phases of this load, in seconds (tritonctl_mme_model_load_phase_seconds)
        try:
            model_dir = self.repository / name
            if not (model_dir / "config.pbtxt").is_file():
                await self._fetch(e, clock)
            await self._refuse_hopeless(e, model_dir)
            await self._install_steps(model_dir)
            e.composing = composing_models(model_dir)  # one small local file: cheaper than a thread hop
            for dep in e.composing:  # an ensemble pins its composing models while it is loaded
                d = await self._acquire(dep, self._load_timeout)
                d.pinned_by.add(name)
            # An ensemble holds no memory of its own: its composing models are counted (and pinned) separately.
            size = self.declared_sizes.get(name, 0) if e.composing else self.estimate(name)
            gpu_size = 0 if e.composing or self.gpu is None else self.estimate_gpu(name)
            admitting = time.perf_counter()
            await self._evictor.make_room(e, size, gpu_size)
            clock["admit"] = time.perf_counter() - admitting
            e.size_bytes = size
            registered = True
            # Only a measured load opens a window (an ensemble holds nothing of its own on the GPU).
            meter = self.gpu if self.measure_footprint and not e.composing else None
            seconds, window = await self._gated_load(e, meter, clock)
            if window is not None:
                self._spawn(self._measure_gpu(e, window))
            self._metrics.loading.observe(seconds)
            clock["triton"], clock["total"] = seconds, time.perf_counter() - began
            self._observe_phases(name, clock)
            e.state, e.reserved, e.loads, e.failures, e.error = State.READY, False, e.loads + 1, 0, None
            self._policy.on_load(name, self._res.now(), e.size_bytes, seconds)
            e.future = None
            fut.set_result(None)
            if self.measure_footprint and not self._measuring:
                self._measuring = True
                self._spawn(self._measure())
        except BaseException as exc:
            # No unload of a model Triton is still loading: it would hang behind the load.
            await self._cleanup_failed(e, registered and not isinstance(exc, LoadHungError))
            e.future = None
            if isinstance(exc, NoCapacityError | ModelNotFoundError | LoadTimeoutError):
                e.state = State.UNLOADED
                fut.set_exception(exc)
            elif isinstance(exc, ModelLoadError):
                self._fail(e, exc, fut)
            elif isinstance(exc, asyncio.CancelledError):
                e.state = State.UNLOADED
                fut.cancel()
                raise
            else:
                log.exception("unexpected error loading %s", name)
                self._fail(e, ModelLoadError(name, f"{type(exc).__name__}: {exc}"), fut)
        finally:
            self._res.update_gauges()
            self._res.notify()

    async def _refuse_hopeless(self, e: Entry, model_dir: Path) -> None:
        """Fail before Triton sees a load it would never finish: a python model without its model file
        (``_preflight``), or a model that an earlier, timed-out load still holds LOADING in Triton."""
        hang = never_loads(model_dir)
        if hang is not None:
            raise ModelLoadError(e.name, hang)
        if e.hung_since and await self._triton.still_loading(e.name):
            waited = time.monotonic() - e.hung_since
            raise LoadHungError(e.name, f"Triton is still loading it: a load has not finished after {waited:.0f} s")

    async def _gated_load(
        self, e: Entry, meter: GpuMeter | None, clock: dict[str, float]
    ) -> tuple[float, GpuWindow | None]:
        """Triton's load of ``e`` through the gate: at most ``gate.limit`` at once, started first come first served;
        a load still running after ``gate.hold_s`` gives its slot up and is awaited outside the gate."""
        queued = time.perf_counter()
        release = await self.gate.acquire()
        try:
            clock["queue"] = time.perf_counter() - queued
            window = await meter.begin(e.name) if meter is not None else None
            load = asyncio.ensure_future(self._triton_load(e, meter))
            try:
                seconds = await asyncio.wait_for(asyncio.shield(load), self.gate.hold_s)
            except TimeoutError:
                release()  # slow, maybe hung (it fails at the load timeout): the next loads need not wait for it
                log.info("load of %s still running after %.0f s: it no longer holds a load slot", e.name,
                         self.gate.hold_s)  # fmt: skip
                seconds = await load
            except BaseException:
                load.cancel()
                raise
            return seconds, window
        finally:
            release()

    async def _install_steps(self, model_dir: Path) -> None:
        """An ensemble bundle's models (``layout.STEPS_DIR``, what ``deploy`` packs with an ensemble) go into the
        repository under their folder names, as SageMaker's front end registers them, so the ensemble's steps load
        (and are pinned) like any model; a model of that name already loaded, or on its way, is left as it is."""
        steps = model_dir / STEPS_DIR
        if not steps.is_dir():
            return
        for step in sorted(p for p in steps.iterdir() if p.is_dir()):
            d = self._res.get(step.name)
            if d is None or d.state not in (State.READY, State.LOADING, State.UNLOADING):
                await asyncio.to_thread(link_tree, step, self.repository / step.name, self.staging)

    async def _triton_load(self, e: Entry, meter: GpuMeter | None) -> float:
        """Triton's load of ``e``, in seconds; a load past the timeout marks ``e`` hung since it began. The call's
        window on the boot clock (``Entry.triton_window``) lets the stub watch split it at the stub's start."""
        t0 = time.monotonic()
        boot0 = time.clock_gettime(time.CLOCK_BOOTTIME)
        try:
            await self._triton.load(e.name)
        except BaseException as exc:
            if meter is not None:
                meter.abandon()
            if isinstance(exc, LoadHungError):
                e.hung_since = e.hung_since or t0
            raise
        e.hung_since = 0.0
        e.triton_window = (boot0, time.clock_gettime(time.CLOCK_BOOTTIME))
        return time.monotonic() - t0

    def _observe_phases(self, name: str, clock: dict[str, float]) -> None:
        """Count a successful load's phases in the metrics, and say them in the log (debug: one line per load)."""
        for phase, seconds in clock.items():
            self._metrics.phases.observe(seconds, phase=phase)
        log.debug("loaded %s: %s", name, ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in clock.items()))

    def _fail(self, e: Entry, err: ModelLoadError, fut: asyncio.Future[None]) -> None:
        e.failures += 1
        e.state, e.error = State.FAILED, err
        e.retry_at = time.monotonic() + min(self.backoff[0] * 2 ** (e.failures - 1), self.backoff[1])
        self._metrics.failures.inc(model=e.name)
        fut.set_exception(err)

    async def _cleanup_failed(self, e: Entry, registered: bool) -> None:
        """Leave nothing half-registered: unload from Triton, unpin dependencies, drop fetched files."""
        e.reserved = False
        if registered:
            await self._triton.unload_quietly(e.name)
            if self.gpu is not None:
                self.gpu.note_unload()
        self.release_files(e, failed=True)
        self._res.unpin_composing(e)

    # ---------------------------------------------------------------------------------------------- fetch ---
    async def _fetch(self, e: Entry, clock: dict[str, float]) -> None:
        """Store (or disk cache) -> staging -> the repository; the phases go to ``clock`` (fetch, rewrite, install)."""
        store = self.store
        if store is None:
            raise ModelNotFoundError(e.name, f"not in the repository {self.repository}")
        t0 = time.monotonic()
        target = self.repository / e.name
        try:
            if self.disk_cache is not None:
                # Pinned only while hard-linking into the repository: afterwards Triton's copy shares the inodes,
                # so the cache may delete its own entry at any time without touching a loaded model.
                cache = self.disk_cache
                path, found = await asyncio.to_thread(
                    run_collecting, lambda: cache.get_or_fetch(e.name, store, pin=True)
                )
                t1 = time.monotonic()
                try:
                    await asyncio.to_thread(link_tree, path, target, self.staging)
                finally:
                    cache.unpin(e.name)
            else:
                fetched, found = await asyncio.to_thread(run_collecting, lambda: store.fetch(e.name, self.staging))
                t1 = time.monotonic()
                await asyncio.to_thread(install_dir, fetched.path, target, self.staging)
        except ArtifactNotFoundError as exc:
            raise ModelNotFoundError(e.name, str(exc)) from None
        except ArtifactError as exc:
            raise ArtifactFetchError(e.name, str(exc)) from None
        e.fetched = True
        t2 = time.monotonic()
        rewrite = found.get("rewrite", 0.0)
        clock.update(fetch=t1 - t0 - rewrite, rewrite=rewrite, install=t2 - t1)
        self._metrics.downloading.observe(t2 - t0)

    def release_files(self, e: Entry, failed: bool = False) -> None:
        """Drop the repository copy of a store model when a disk cache keeps the files (else the repository acts
        as the cache); after a failed load always drop it, so the next attempt fetches a possibly fixed artifact."""
        if e.fetched and (self.disk_cache is not None or failed):
            shutil.rmtree(self.repository / e.name, ignore_errors=True)
            e.fetched = False

    # ------------------------------------------------------------------------------------------ footprint ---
    def estimate(self, name: str) -> int:
        """Bytes a model will hold, before it is measured: declared > measured before > config > mean > default."""
        if name in self.declared_sizes:
            return self.declared_sizes[name]
        if name in self.measured:
            return self.measured[name]
        declared = declared_bytes(self.repository / name)
        if declared is not None:
            return declared
        if self.measured:
            return int(sum(self.measured.values()) / len(self.measured))
        return self.default_model_bytes

    def estimate_gpu(self, name: str) -> int:
        """GPU bytes a model will hold: measured before > declared (``tritonctl.gpu_memory_bytes``) > mean of the
        measured models > default. Conservative until measured: a CPU-only model measures 0 on its first load."""
        gpu = self.gpu
        if gpu is not None and name in gpu.measured:
            return gpu.measured[name]
        declared = declared_gpu_bytes(self.repository / name)
        if declared is not None:
            return declared
        if gpu is not None and gpu.measured:
            return int(sum(gpu.measured.values()) / len(gpu.measured))
        return self.default_gpu_model_bytes

    async def _measure_gpu(self, e: Entry, window: GpuWindow) -> None:
        """Close ``e``'s window; an attributable delta replaces the estimate (and may trim or free the budget)."""
        assert self.gpu is not None
        delta = await self.gpu.finish(window)
        if delta is None:
            return
        if e.state is State.READY and e.future is None:
            self.gpu.sizes[e.name] = delta
        self._res.notify()  # a smaller footprint may admit a waiting load
        await self._evictor.trim_to_budget()

    async def measure_now(self, names: list[str]) -> None:
        """Measure models found already loaded at start-up (nothing else is running yet, so no delay)."""
        for name, rss in (await asyncio.to_thread(stub_rss, self.repository, names)).items():
            self._res.entry(name).size_bytes = self.measured[name] = rss

    async def _measure(self) -> None:
        """Measure stub RSS of freshly loaded models, batched and delayed so it stays off the cold-start path
        (a process scan costs milliseconds of CPU that a concurrent load would otherwise wait for)."""
        entries = self._res.entries
        try:
            await asyncio.sleep(self.measure_delay)
            todo = [e.name for e in entries.values() if e.state is State.READY and e.name not in self.measured]
            sizes = await asyncio.to_thread(stub_rss, self.repository, todo) if todo else {}
        finally:
            self._measuring = False
        for name, rss in sizes.items():
            e = entries[name]
            if e.state is State.READY and rss:
                e.size_bytes = self.measured[name] = rss
        self._res.update_gauges()
        await self._evictor.trim_to_budget()
