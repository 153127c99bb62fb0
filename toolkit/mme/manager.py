"""The multi-model endpoint manager: lazy, single-flight loads into Triton under a count/byte budget.

SageMaker MME semantics on Triton's repository API (explicit mode): a request for a model that is not loaded fetches
its artifact (store -> disk cache -> the Triton repository directory), evicts policy-chosen idle models when the
budget would be exceeded, and loads it. Everything runs on one asyncio loop, so the state needs no locks: a resident
model's hot path (``serving``) is a dict lookup and two counter updates, no round trip to Triton.

This module is the public face (see notes/MME_CONTRACT.md); the work is split by concern into private modules:
``_residency`` (per-model records, in-flight counts, pins, the change signal), ``_loading`` (single flight, fetch,
Triton load, backoff, footprints, the phases of each load), ``_gate`` (how many Triton loads at once, first come first
served), ``_eviction`` (budgets, victims, asynchronous unloads), ``_sync`` (the records kept true to Triton's index:
adoption, restarts), ``_health`` (dead stubs) and ``_triton`` (the repository API with one error mapping).

``gpu_memory_fraction`` adds a GPU budget (``toolkit.mme.gpu``): fraction x the total memory of the GPUs that Triton
reports, read once by ``start`` before anything else is touched, so a Triton without a GPU fails cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.errors import TritonctlError
from toolkit.mme._eviction import Evictor
from toolkit.mme._gate import LoadGate, default_limit
from toolkit.mme._health import StubWatch
from toolkit.mme._loading import Loader, composing_models
from toolkit.mme._residency import Entry, ModelState, Residency, State
from toolkit.mme._sync import IndexSync
from toolkit.mme._triton import TritonRepository
from toolkit.mme.diskcache import DiskCache
from toolkit.mme.errors import ArtifactFetchError, ManagerConfigError, ModelNotFoundError, ModelPinnedError
from toolkit.mme.footprint import DEFAULT_GPU_MODEL_BYTES, DEFAULT_MODEL_BYTES
from toolkit.mme.gpu import GpuMeter, GpuReader, check_fraction, start_gpu_meter
from toolkit.mme.metrics import MMEMetrics, exposition
from toolkit.mme.policies import DEFAULT_POLICY, EvictionPolicy, PolicyError, make_policy
from toolkit.mme.safe_tar import ArtifactError, validate_model_name
from toolkit.mme.stores import ArtifactStore
from toolkit.server.endpoint import TritonEndpoint

if TYPE_CHECKING:
    from prometheus_client.core import Metric

__all__ = ["DEFAULT_LOAD_TIMEOUT", "ModelManager", "ModelState", "State", "composing_models"]

log = logging.getLogger(__name__)
DEFAULT_LOAD_TIMEOUT = 60.0


@contextlib.asynccontextmanager
async def pinned(
    serve: Callable[[str, float | None], Awaitable[Callable[[], None]]], name: str, timeout: float | None
) -> AsyncIterator[None]:
    """``serving`` from ``serve``: the pin ``serve`` returns, released when the block ends (every provider's)."""
    release = await serve(name, timeout)
    try:
        yield
    finally:
        release()


class ModelManager:
    """asyncio-based; one per process; talks to Triton's repository API (explicit mode). See module docstring."""

    def __init__(
        self,
        endpoint: TritonEndpoint,
        *,
        repository: Path,
        store: ArtifactStore | None = None,
        max_models: int | None = None,
        memory_budget_bytes: int | None = None,
        gpu_memory_fraction: float | None = None,
        policy: str = DEFAULT_POLICY,
        load_timeout: float = DEFAULT_LOAD_TIMEOUT,
        disk_cache: DiskCache | None = None,
        declared_sizes: Mapping[str, int] | None = None,
        default_model_bytes: int = DEFAULT_MODEL_BYTES,
        backoff: tuple[float, float] = (0.5, 30.0),
        measure_footprint: bool = True,
        listing_refresh_s: float = 30.0,
        gpu_reader: GpuReader | None = None,
        default_gpu_model_bytes: int = DEFAULT_GPU_MODEL_BYTES,
        stub_check_s: float = 1.0,
        index_sync_s: float = 2.0,
        max_concurrent_loads: int | None = None,
    ) -> None:
        """``gpu_reader``: where GPU readings come from (default: Triton's metrics endpoint, or NVML for the same
        GPUs when ``pynvml`` is importable; see ``toolkit.mme.gpu.open_gpu_reader``). ``stub_check_s``: how often
        the python stubs of READY models are checked for having died (``toolkit.mme._health``); 0 = never.
        ``index_sync_s``: how often Triton's index is read to adopt models loaded behind the manager's back (targets
        a generated router loads itself, models loaded by hand) and count them against the budgets; 0 = never.
        ``max_concurrent_loads``: Triton load calls at once, the others started first come, first served
        (``toolkit.mme._gate``; default: the usable CPUs, at most Triton's 4 load threads)."""
        if max_concurrent_loads is not None and (isinstance(max_concurrent_loads, bool) or max_concurrent_loads < 1):
            raise ManagerConfigError(f"max_concurrent_loads must be >= 1, got {max_concurrent_loads}")
        self.index_sync_s = index_sync_s
        if max_models is not None and max_models < 1:
            raise ManagerConfigError(f"max_models must be >= 1, got {max_models}")
        if memory_budget_bytes is not None and memory_budget_bytes <= 0:
            raise ManagerConfigError(f"memory budget must be positive, got {memory_budget_bytes}")
        if gpu_memory_fraction is not None:
            check_fraction(gpu_memory_fraction)
        if default_gpu_model_bytes < 0:
            raise ManagerConfigError(f"default_gpu_model_bytes must be >= 0, got {default_gpu_model_bytes}")
        self.gpu_memory_fraction = gpu_memory_fraction
        self._gpu_reader = gpu_reader
        if load_timeout <= 0:
            raise ManagerConfigError(f"load_timeout must be positive, got {load_timeout}")
        try:
            self.policy: EvictionPolicy = make_policy(policy)
        except PolicyError as exc:
            raise ManagerConfigError(str(exc)) from None
        self.endpoint = endpoint
        self.repository = Path(repository).resolve()
        if not self.repository.is_dir():
            raise ManagerConfigError(f"model repository {self.repository} is not a directory")
        self.store = store
        self.disk_cache = disk_cache
        self.load_timeout = load_timeout
        self.declared_sizes = dict(declared_sizes or {})  # shared with the loader: the same dict
        self.default_model_bytes = default_model_bytes
        self.measure_footprint = measure_footprint
        self.listing_refresh_s = listing_refresh_s
        self.metrics = MMEMetrics()
        self.metrics.budget.set(float(memory_budget_bytes or 0))
        self._known: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._res = Residency(self.metrics, disk_cache)
        self._triton = TritonRepository(endpoint, load_timeout)
        self._evictor = Evictor(
            self._res,
            self._triton,
            self.policy,
            self.metrics,
            max_models=max_models,
            memory_budget_bytes=memory_budget_bytes,
            load_timeout=load_timeout,
            spawn=self._spawn,
            on_unloaded=lambda e: self._loader.release_files(e),
        )
        self._loader = Loader(
            self._res,
            self._triton,
            self._evictor,
            self.policy,
            self.metrics,
            repository=self.repository,
            store=store,
            disk_cache=disk_cache,
            declared_sizes=self.declared_sizes,
            default_model_bytes=default_model_bytes,
            backoff=backoff,
            measure_footprint=measure_footprint,
            load_timeout=load_timeout,
            spawn=self._spawn,
            acquire=self._acquire,
            default_gpu_model_bytes=default_gpu_model_bytes,
            max_concurrent_loads=max_concurrent_loads or default_limit(),
        )
        self._sync = IndexSync(self._res, self._triton, self._evictor, self._loader, self.policy, index_sync_s)
        self.stub_check_s = stub_check_s
        self.stubs = StubWatch(
            self._res,
            self._evictor,
            self.metrics,
            repository=self.repository,
            interval=stub_check_s,
            reload=lambda name: self._acquire(name, None, invocation=False),
            spawn=self._spawn,
        )

    # Settings fixed at construction live in the collaborators; these read them back (and tests tune the delay).
    @property
    def max_models(self) -> int | None:
        return self._evictor.max_models

    @property
    def memory_budget_bytes(self) -> int | None:
        return self._evictor.memory_budget_bytes

    @property
    def load_gate(self) -> LoadGate:
        """The FIFO gate in front of Triton's load call (``limit``, ``active``, ``peak``)."""
        return self._loader.gate

    @property
    def gpu(self) -> GpuMeter | None:
        """The GPU budget and footprints (charged ``sizes``, ``measured`` deltas); None without a GPU budget."""
        return self._evictor.gpu

    @property
    def gpu_budget_bytes(self) -> int | None:
        return self._evictor.gpu.budget_bytes if self._evictor.gpu is not None else None

    @property
    def measure_delay(self) -> float:
        """Seconds after a load before its footprint is measured (kept off the cold-start path)."""
        return self._loader.measure_delay

    @measure_delay.setter
    def measure_delay(self, seconds: float) -> None:
        self._loader.measure_delay = seconds

    @property
    def _measured(self) -> dict[str, int]:
        return self._loader.measured

    # ------------------------------------------------------------------------------------------ lifecycle ---
    async def start(self) -> None:
        """Read the GPU budget (if any), connect, adopt the models Triton already has loaded, and cache the store's
        listing. The GPU comes first: a Triton without one raises ``GpuUnavailableError`` with nothing started."""
        if self.gpu_memory_fraction is not None and self._evictor.gpu is None:
            meter = await start_gpu_meter(self.gpu_memory_fraction, self.endpoint.metrics_url, self._gpu_reader)
            self._evictor.gpu = self._loader.gpu = meter
            self.metrics.gpu_budget.set(float(meter.budget_bytes))
        self._loop = asyncio.get_running_loop()
        self._triton.open()
        await self._sync.resync()
        if self.measure_footprint:
            await self._loader.measure_now([e.name for e in self._res.entries.values() if e.state is State.READY])
        await self.refresh_listing()
        if self.store is not None and self.listing_refresh_s > 0:
            self._spawn(self._refresh_forever())
        if self.stub_check_s > 0:
            self._spawn(self.stubs.run())
        if self.index_sync_s > 0:
            self._spawn(self._sync.adopt_forever())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._evictor.finish_all()
        await self._triton.close()

    async def refresh_listing(self) -> None:
        """Re-read the store's model list (an unreachable store is logged, not fatal: local models still serve)."""
        if self.store is None:
            return
        try:
            self._known = set(await asyncio.to_thread(self.store.list_models))
        except ArtifactError as exc:
            log.warning("cannot list the artifact store: %s", exc)

    async def _refresh_forever(self) -> None:
        """``knows`` is synchronous (the gateway routes with it), so the store listing is re-read periodically."""
        while True:
            await asyncio.sleep(self.listing_refresh_s)
            await self.refresh_listing()

    def on_triton_down(self) -> None:
        """Called (from any thread) the moment Triton is seen dead: nothing it held is loaded any more. Marking that
        at once (not at the next resync) means the first requests after the restart load what they need instead of
        being forwarded to a model the fresh Triton does not have."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._sync.forget_resident)

    def stub_failed(self, name: str) -> None:
        """Triton answered a request for ``name`` with "Stub process ... is not healthy": check its stubs now."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.stubs.check_soon, name)

    def on_triton_restart(self) -> None:
        """Called (from any thread) after the supervisor restarted Triton and reloaded models: resync states."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(lambda: self._spawn(self._sync.resync()))

    # ------------------------------------------------------------------------------------------- queries ---
    def knows(self, name: str) -> bool:
        try:
            validate_model_name(name)  # before any filesystem look-up: a name is never a path
        except ArtifactError:
            return False
        return name in self._res.entries or name in self._known or (self.repository / name / "config.pbtxt").is_file()

    def is_resident(self, name: str) -> bool:
        e = self._res.get(name)
        return e is not None and e.state is State.READY

    def states(self) -> list[ModelState]:
        names = set(self._res.entries) | self._known
        names |= {p.name for p in self.repository.iterdir() if (p / "config.pbtxt").is_file()}
        return [
            (self._res.get(name) or Entry(name)).snapshot()
            for name in sorted(n for n in names if not n.startswith("."))
        ]

    def collect(self) -> Iterator[Metric]:
        """The ``prometheus_client`` collector protocol: gauges are refreshed from the manager's state now, at scrape
        time, so no request pays for them."""
        self._res.update_gauges()
        self._update_gpu_gauges()
        return self.metrics.collect()

    def metrics_text(self) -> str:
        """The Prometheus text of the manager's metrics alone (the gateway's ``/metrics`` adds its own)."""
        return exposition(self)

    def _update_gpu_gauges(self) -> None:
        gpu = self._evictor.gpu
        if gpu is None:
            return
        self.metrics.gpu_resident.set(float(self._evictor.resident_gpu_bytes()))
        for e in self._res.entries.values():
            if e.state is State.READY:
                self.metrics.gpu_memory.set(float(gpu.sizes.get(e.name, 0)), model=e.name)
            elif self.metrics.gpu_memory.get(model=e.name):
                self.metrics.gpu_memory.set(0.0, model=e.name)

    # ------------------------------------------------------------------------------------------ requests ---
    async def ensure_loaded(self, name: str, timeout: float | None = None) -> None:
        """Load if needed. Not an invocation: hits, misses and the policy's frequency count only ``serving``."""
        await self._acquire(name, timeout, invocation=False)

    def serving(self, name: str, timeout: float | None = None) -> AbstractAsyncContextManager[None]:
        return pinned(self.serve, name, timeout)

    def try_serve(self, name: str) -> Callable[[], None] | None:
        """``serving`` for a READY model, synchronously: counts the invocation and pins the model; the caller calls the
        returned function when the request is answered. None when the model is not READY (the caller then awaits
        ``serving``, which loads it). The gateway's hot path uses this so a warm request needs no task."""
        e = self._warm(name, invocation=True)
        if e is None:
            return None
        self.metrics.invocations.inc(model=name)
        return self._res.enter(e)

    async def serve(self, name: str, timeout: float | None = None) -> Callable[[], None]:
        """``serving`` as a pin the caller releases: for a request whose answer arrives in a callback (the gateway's
        admission). Loads the model if needed and counts the invocation (hit or miss) exactly as ``serving``."""
        e = await self._acquire(name, timeout)  # returns synchronously after the READY check: no eviction between
        self.metrics.invocations.inc(model=name)
        return self._res.enter(e)

    async def hold(self, name: str, timeout: float | None = None) -> Callable[[], None]:
        """A pin on ``name`` (loaded if needed) that counts no invocation: a model host (``toolkit.mme.mux``) is held
        while it serves a request for one of its models, and that model's own hit or miss is what is counted."""
        e = await self._acquire(name, timeout, invocation=False)
        return self._res.enter(e)

    def _warm(self, name: str, invocation: bool) -> Entry | None:
        """The READY model's record, touched as used (and counted as a hit for an invocation); None when not READY."""
        e = self._res.get(name)
        if e is None or e.state is not State.READY:
            return None
        e.last_used = time.time()
        if invocation:
            e.hits += 1
            self.policy.on_hit(name, self._res.now())
            self.metrics.cache_hit.inc(model=name)
        return e

    async def _acquire(self, name: str, timeout: float | None, invocation: bool = True) -> Entry:
        """``invocation``: a request for the model (SageMaker's ModelCacheHit counts InvokeEndpoint calls only), not
        a control-plane touch such as metadata or an explicit load."""
        e = self._warm(name, invocation)
        if e is not None:  # hot path
            return e
        start = time.monotonic()
        e = await self._lookup(name)
        if invocation:
            self.metrics.cache_miss.inc(model=name)
        try:
            await self._loader.wait_ready(e, start + (self.load_timeout if timeout is None else timeout))
        finally:
            self.metrics.wait.observe(time.monotonic() - start)
        e.last_used = time.time()
        return e

    async def _lookup(self, name: str) -> Entry:
        """The record for a model that exists somewhere; ModelNotFoundError for a bad name or an unknown model."""
        try:
            validate_model_name(name)
        except ArtifactError as exc:
            raise ModelNotFoundError(name, str(exc)) from None
        if not self.knows(name):
            if self.store is None:
                raise ModelNotFoundError(name, f"not in the repository {self.repository} (no artifact store)")
            try:
                found = await asyncio.to_thread(self.store.exists, name)
            except ArtifactError as exc:
                raise ArtifactFetchError(name, str(exc)) from None
            if not found:
                raise ModelNotFoundError(name, f"not in the repository nor in {self.store!r}")
            self._known.add(name)
        return self._res.entry(name)

    async def unload(self, name: str) -> None:
        """Unload now (waits for in-flight requests to drain, then for Triton to release the model)."""
        e = self._res.get(name)
        if e is None:
            return
        if e.pinned_by:
            raise ModelPinnedError(f"model {name!r} is used by loaded ensemble(s) {sorted(e.pinned_by)}; unload those")
        if e.state is State.LOADING and e.future is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(e.future)
        if e.state is State.READY:
            deadline = time.monotonic() + self.load_timeout
            while e.in_flight > 0 and time.monotonic() < deadline:
                await self._res.wait_change(deadline - time.monotonic())
            if e.state is State.READY:
                await self._evictor.unload_entry(e)
        if e.state is State.UNLOADING and e.future is not None:
            self._evictor.hurry(name)
            await asyncio.shield(e.future)
        if e.state is State.FAILED:
            e.state, e.error = State.UNLOADED, None

    def unload_when_idle(self, name: str) -> None:
        """SageMaker's ``ModelCacheSetting: Disabled``: called as a call on such an endpoint ends; the model is
        unloaded in the background unless another request holds it or a loaded ensemble pins it (the last call to
        end unloads it). The next call loads it again, and counts as a cache miss, as on SageMaker."""
        e = self._res.get(name)
        if e is None or e.state is not State.READY or e.in_flight or e.pinned_by:
            return
        self._spawn(self._unload_quietly(name))

    async def _unload_quietly(self, name: str) -> None:
        try:
            await self.unload(name)
        except TritonctlError as exc:  # pinned meanwhile, Triton gone: the model stays, as with the cache enabled
            log.info("not unloaded after its call (model cache disabled): %s", exc)

    # -------------------------------------------------------------------------------------------- helpers ---
    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a background coroutine the manager owns (``close`` cancels whatever is still running)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
