"""The multi-model endpoint manager: lazy, single-flight loads into Triton under a count/byte budget.

SageMaker MME semantics on Triton's repository API (explicit mode): a request for a model that is not loaded fetches
its artifact (store -> disk cache -> the Triton repository directory), evicts policy-chosen idle models when the
budget would be exceeded, and loads it. Everything runs on one asyncio loop, so the state below needs no locks: a
resident model's hot path (``serving``) is a dict lookup and two counter updates, no round trip to Triton. Blocking
work (store fetches, tar extraction, psutil) goes to threads; Triton is reached with tritonclient's aiohttp client.

Single flight: each model has at most one operation (load or unload) in progress, a Future in ``_Entry.future``; every
request for that model awaits the same Future, so N concurrent cold requests cause one fetch and one load, and a
failure reaches every waiter. A failed model stays FAILED for an exponential backoff, then the next request retries.
Triton's unload is asynchronous (a python model lingers ~1 s in UNLOADING): for the *count* budget an unloading model
no longer counts, for the *byte* budget its memory counts until Triton reports it gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import aiohttp
import tritonclient.http.aio as httpaio
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from toolkit.mme.diskcache import DiskCache
from toolkit.mme.errors import (
    ArtifactFetchError,
    LoadTimeoutError,
    ManagerConfigError,
    ModelLoadError,
    ModelNotFoundError,
    ModelPinnedError,
    NoCapacityError,
    TritonDownError,
)
from toolkit.mme.footprint import DEFAULT_MODEL_BYTES, declared_bytes, stub_rss
from toolkit.mme.metrics import MMEMetrics
from toolkit.mme.policies import EvictionPolicy, PolicyError, make_policy
from toolkit.mme.safe_tar import TMP_PREFIX, ArtifactError, install_dir, validate_model_name
from toolkit.mme.stores import ArtifactStore
from toolkit.server.launcher import TritonEndpoint

log = logging.getLogger(__name__)
_UNREACHABLE = ("connection refused", "failed to connect", "cannot connect", "timed out", "connection reset")


class State(str, Enum):
    UNLOADED = "UNLOADED"
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    FAILED = "FAILED"


@dataclass(frozen=True)
class ModelState:
    name: str
    state: str
    in_flight: int
    size_bytes: int
    last_used: float  # wall clock, 0 = never
    loads: int
    hits: int
    pinned: bool = False
    error: str | None = None


@dataclass
class _Entry:
    name: str
    state: State = State.UNLOADED
    in_flight: int = 0
    size_bytes: int = 0
    last_used: float = 0.0
    loads: int = 0
    hits: int = 0
    future: asyncio.Future[None] | None = None  # the one operation in progress (load or unload)
    reserved: bool = False  # LOADING and counted against the budget
    error: ModelLoadError | None = None
    failures: int = 0  # consecutive
    retry_at: float = 0.0
    pinned_by: set[str] = field(default_factory=set)
    composing: list[str] = field(default_factory=list)
    fetched: bool = False  # files came from the store into the repository


def _link_tree(src: Path, dst: Path) -> None:
    """Put a copy of ``src`` at ``dst`` using hard links (cheap; the cache may delete its copy independently)."""
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f"{TMP_PREFIX}{dst.name}-"))
    try:
        for dirpath, _dirs, files in os.walk(src):
            rel = Path(dirpath).relative_to(src)
            (tmp / rel).mkdir(parents=True, exist_ok=True)
            for f in files:
                try:
                    os.link(Path(dirpath) / f, tmp / rel / f)
                except OSError:
                    shutil.copy2(Path(dirpath) / f, tmp / rel / f)
        install_dir(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def composing_models(model_dir: Path) -> list[str]:
    """Models an ensemble's steps use (empty for a non-ensemble); read from config.pbtxt."""
    try:
        text = (model_dir / "config.pbtxt").read_text()
    except OSError:
        return []
    if "ensemble" not in text:
        return []
    cfg = mc.ModelConfig()
    try:
        text_format.Parse(text, cfg, allow_unknown_field=True)
    except text_format.ParseError:
        return []
    if cfg.platform != "ensemble":
        return []
    return list(dict.fromkeys(step.model_name for step in cfg.ensemble_scheduling.step))


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
        policy: str = "lru",
        load_timeout: float = 60.0,
        disk_cache: DiskCache | None = None,
        declared_sizes: Mapping[str, int] | None = None,
        default_model_bytes: int = DEFAULT_MODEL_BYTES,
        backoff: tuple[float, float] = (0.5, 30.0),
        measure_footprint: bool = True,
        listing_refresh_s: float = 30.0,
    ) -> None:
        if max_models is not None and max_models < 1:
            raise ManagerConfigError(f"max_models must be >= 1, got {max_models}")
        if memory_budget_bytes is not None and memory_budget_bytes <= 0:
            raise ManagerConfigError(f"memory budget must be positive, got {memory_budget_bytes}")
        if gpu_memory_fraction is not None:
            raise ManagerConfigError(
                "--gpu-memory-fraction needs a GPU build of Triton (nv_gpu_memory_used_bytes); this embedded Triton "
                "is CPU-only: use --memory-budget"
            )
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
        self.max_models = max_models
        self.memory_budget_bytes = memory_budget_bytes
        self.load_timeout = load_timeout
        self.declared_sizes = dict(declared_sizes or {})
        self.default_model_bytes = default_model_bytes
        self.backoff = backoff
        self.measure_footprint = measure_footprint
        self.listing_refresh_s = listing_refresh_s
        self.measure_delay = 0.5
        self._measuring = False
        self._unloading: dict[str, tuple[_Entry, asyncio.Future[None], float]] = {}
        self._unload_watcher = False
        self.metrics = MMEMetrics()
        self.metrics.budget.set(float(memory_budget_bytes or 0))
        self._entries: dict[str, _Entry] = {}
        self._known: set[str] = set()
        self._measured: dict[str, int] = {}
        self._changed = asyncio.Event()
        self._admit = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._client: httpaio.InferenceServerClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._t0 = time.monotonic()

    # ------------------------------------------------------------------------------------------ lifecycle ---
    async def start(self) -> None:
        """Connect, adopt the models Triton already has loaded, and cache the store's listing."""
        self._loop = asyncio.get_running_loop()
        self._client = httpaio.InferenceServerClient(self.endpoint.http, conn_timeout=self.load_timeout)
        await self._resync()
        if self.measure_footprint:
            ready = [e.name for e in self._entries.values() if e.state is State.READY]
            for name, rss in (await asyncio.to_thread(stub_rss, self.repository, ready)).items():
                self._entries[name].size_bytes = self._measured[name] = rss
        await self.refresh_listing()
        if self.store is not None and self.listing_refresh_s > 0:
            self._spawn(self._refresh_forever())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for e, fut, _t0 in list(self._unloading.values()):
            self._finish_unload(e, fut)
        self._unloading.clear()
        if self._client is not None:
            await self._client.close()
            self._client = None

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

    def on_triton_restart(self) -> None:
        """Called (from any thread) after the supervisor restarted Triton and reloaded models: resync states."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(lambda: self._spawn(self._resync()))

    async def _resync(self) -> None:
        index = await self._index()
        ready = {m["name"] for m in index if m.get("state") == "READY"}
        for name in ready:
            e = self._entry(name)
            if e.state is not State.READY and e.future is None:
                e.state = State.READY
                e.size_bytes = e.size_bytes or self._estimate(name)
                self.policy.on_load(name, self._now(), e.size_bytes, 0.0)
        for e in self._entries.values():
            if e.state is State.READY and e.name not in ready:
                e.state = State.UNLOADED
                self.policy.on_evict(e.name)
        self._update_gauges()
        self._notify()

    # ------------------------------------------------------------------------------------------- queries ---
    def knows(self, name: str) -> bool:
        return name in self._entries or name in self._known or (self.repository / name / "config.pbtxt").is_file()

    def is_resident(self, name: str) -> bool:
        e = self._entries.get(name)
        return e is not None and e.state is State.READY

    def states(self) -> list[ModelState]:
        names = set(self._entries) | self._known
        names |= {p.name for p in self.repository.iterdir() if (p / "config.pbtxt").is_file()}
        out = []
        for name in sorted(n for n in names if not n.startswith(".")):
            e = self._entries.get(name) or _Entry(name)
            out.append(
                ModelState(
                    name,
                    e.state.value,
                    e.in_flight,
                    e.size_bytes,
                    e.last_used,
                    e.loads,
                    e.hits,
                    bool(e.pinned_by),
                    str(e.error) if e.error and e.state is State.FAILED else None,
                )
            )
        return out

    def metrics_text(self) -> str:
        self._update_gauges()
        return self.metrics.render()

    # ------------------------------------------------------------------------------------------ requests ---
    async def ensure_loaded(self, name: str, timeout: float | None = None) -> None:
        await self._acquire(name, timeout)

    def serving(self, name: str, timeout: float | None = None) -> AbstractAsyncContextManager[None]:
        return self._serving(name, timeout)

    @contextlib.asynccontextmanager
    async def _serving(self, name: str, timeout: float | None) -> AsyncIterator[None]:
        e = await self._acquire(name, timeout)  # returns synchronously after the READY check: no eviction between
        e.in_flight += 1
        self.metrics.invocations.inc(model=name)
        try:
            yield
        finally:
            e.in_flight -= 1
            if e.in_flight == 0:
                self._notify()

    async def _acquire(self, name: str, timeout: float | None) -> _Entry:
        e = self._entries.get(name)
        if e is not None and e.state is State.READY:  # hot path
            e.hits += 1
            e.last_used = time.time()
            self.policy.on_hit(name, self._now())
            self.metrics.cache_hit.inc(model=name)
            return e
        start = time.monotonic()
        e = await self._lookup(name)
        self.metrics.cache_miss.inc(model=name)
        try:
            await self._wait_ready(e, start + (self.load_timeout if timeout is None else timeout))
        finally:
            self.metrics.wait.observe(time.monotonic() - start)
        e.last_used = time.time()
        return e

    async def _lookup(self, name: str) -> _Entry:
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
        return self._entry(name)

    async def _wait_ready(self, e: _Entry, deadline: float) -> None:
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
            try:
                await asyncio.wait_for(asyncio.shield(e.future), remaining)
            except TimeoutError:
                raise LoadTimeoutError(e.name, time.monotonic() - start, f"still {e.state.value}") from None

    # ---------------------------------------------------------------------------------------------- load ---
    async def _load(self, e: _Entry, fut: asyncio.Future[None]) -> None:
        name = e.name
        registered = False
        try:
            model_dir = self.repository / name
            if not (model_dir / "config.pbtxt").is_file():
                await self._fetch(e)
            e.composing = composing_models(model_dir)  # one small local file: cheaper than a thread hop
            for dep in e.composing:  # an ensemble pins its composing models while it is loaded
                d = await self._acquire(dep, self.load_timeout)
                d.pinned_by.add(name)
            # An ensemble holds no memory of its own: its composing models are counted (and pinned) separately.
            size = self.declared_sizes.get(name, 0) if e.composing else self._estimate(name)
            await self._make_room(e, size)
            e.size_bytes = size
            registered = True
            t0 = time.monotonic()
            await self._triton("load", name, self._client_or_raise().load_model(name))
            seconds = time.monotonic() - t0
            self.metrics.loading.observe(seconds)
            e.state, e.reserved, e.loads, e.failures, e.error = State.READY, False, e.loads + 1, 0, None
            self.policy.on_load(name, self._now(), e.size_bytes, seconds)
            e.future = None
            fut.set_result(None)
            if self.measure_footprint and not self._measuring:
                self._measuring = True
                self._spawn(self._measure())
        except BaseException as exc:
            await self._cleanup_failed(e, registered)
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
            self._update_gauges()
            self._notify()

    def _fail(self, e: _Entry, err: ModelLoadError, fut: asyncio.Future[None]) -> None:
        e.failures += 1
        e.state, e.error = State.FAILED, err
        e.retry_at = time.monotonic() + min(self.backoff[0] * 2 ** (e.failures - 1), self.backoff[1])
        self.metrics.failures.inc(model=e.name)
        fut.set_exception(err)

    async def _cleanup_failed(self, e: _Entry, registered: bool) -> None:
        """Leave nothing half-registered: unload from Triton, unpin dependencies, drop fetched files."""
        e.reserved = False
        if registered and self._client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._client.unload_model(e.name), 5.0)
        self._release_files(e, failed=True)
        self._unpin_composing(e)

    async def _fetch(self, e: _Entry) -> None:
        if self.store is None:
            raise ModelNotFoundError(e.name, f"not in the repository {self.repository}")
        t0 = time.monotonic()
        try:
            if self.disk_cache is not None:
                # Pinned only while hard-linking into the repository: afterwards Triton's copy shares the inodes,
                # so the cache may delete its own entry at any time without touching a loaded model.
                path = await asyncio.to_thread(self.disk_cache.get_or_fetch, e.name, self.store, pin=True)
                try:
                    await asyncio.to_thread(_link_tree, path, self.repository / e.name)
                finally:
                    self.disk_cache.unpin(e.name)
            else:
                await asyncio.to_thread(self.store.fetch, e.name, self.repository)
        except ArtifactError as exc:
            if "not found" in str(exc) and "unreachable" not in str(exc):
                raise ModelNotFoundError(e.name, str(exc)) from None
            raise ArtifactFetchError(e.name, str(exc)) from None
        e.fetched = True
        self.metrics.downloading.observe(time.monotonic() - t0)

    def _release_files(self, e: _Entry, failed: bool = False) -> None:
        """Drop the repository copy of a store model when a disk cache keeps the files (else the repository acts
        as the cache); after a failed load always drop it, so the next attempt fetches a possibly fixed artifact."""
        if e.fetched and (self.disk_cache is not None or failed):
            shutil.rmtree(self.repository / e.name, ignore_errors=True)
            e.fetched = False

    def _unpin_composing(self, e: _Entry) -> None:
        for dep in e.composing:
            d = self._entries.get(dep)
            if d is not None:
                d.pinned_by.discard(e.name)

    async def _measure(self) -> None:
        """Measure stub RSS of freshly loaded models, batched and delayed so it stays off the cold-start path
        (a process scan costs milliseconds of CPU that a concurrent load would otherwise wait for)."""
        try:
            await asyncio.sleep(self.measure_delay)
            todo = [e.name for e in self._entries.values() if e.state is State.READY and e.name not in self._measured]
            sizes = await asyncio.to_thread(stub_rss, self.repository, todo) if todo else {}
        finally:
            self._measuring = False
        for name, rss in sizes.items():
            e = self._entries[name]
            if e.state is State.READY and rss:
                e.size_bytes = self._measured[name] = rss
        self._update_gauges()
        budget = self.memory_budget_bytes
        if budget is not None and self._resident_bytes() > budget:
            async with self._admit:
                await self._evict_until(lambda: self._resident_bytes() <= budget)

    def _estimate(self, name: str) -> int:
        if name in self.declared_sizes:
            return self.declared_sizes[name]
        if name in self._measured:
            return self._measured[name]
        declared = declared_bytes(self.repository / name)
        if declared is not None:
            return declared
        if self._measured:
            return int(sum(self._measured.values()) / len(self._measured))
        return self.default_model_bytes

    # ------------------------------------------------------------------------------------ budget/evict ---
    def _resident_count(self, exclude: str = "") -> int:
        return sum(
            1
            for e in self._entries.values()
            if e.name != exclude and (e.state is State.READY or (e.state is State.LOADING and e.reserved))
        )

    def _resident_bytes(self, exclude: str = "", *, unloading: bool = True) -> int:
        """Bytes held; ``unloading=False`` is what will be held once the unloads under way finish."""
        held = (State.READY, State.UNLOADING) if unloading else (State.READY,)
        return sum(
            e.size_bytes
            for e in self._entries.values()
            if e.name != exclude and (e.state in held or (e.state is State.LOADING and e.reserved))
        )

    def _fits(self, e: _Entry, size: int, *, unloading: bool = True) -> bool:
        if self.max_models is not None and self._resident_count(e.name) + 1 > self.max_models:
            return False
        budget = self.memory_budget_bytes
        return budget is None or self._resident_bytes(e.name, unloading=unloading) + size <= budget

    async def _make_room(self, e: _Entry, size: int) -> None:
        if self.memory_budget_bytes is not None and size > self.memory_budget_bytes:
            raise ModelLoadError(e.name, f"needs {size} bytes, more than the whole budget {self.memory_budget_bytes}")
        deadline = time.monotonic() + self.load_timeout
        async with self._admit:
            await self._evict_until(
                lambda: self._fits(e, size), deadline, e, eventually=lambda: self._fits(e, size, unloading=False)
            )
            e.reserved = True

    async def _evict_until(
        self, ok: Any, deadline: float | None = None, e: _Entry | None = None, eventually: Any = None
    ) -> None:
        """Evict idle, unpinned READY models (policy order) until ``ok()``; wait for busy ones up to ``deadline``.

        ``eventually()`` says whether the unloads already under way will be enough: then wait, evict no more."""
        while not ok():
            idle = [x.name for x in self._entries.values() if x.state is State.READY and x.in_flight == 0]
            candidates = [n for n in idle if not self._entries[n].pinned_by and (e is None or n != e.name)]
            if candidates and not (eventually is not None and eventually()):
                victim = self.policy.choose_victim(candidates, self._now())
                self.metrics.evictions.inc()
                await self._unload_entry(self._entries[victim])
                continue
            if deadline is None:
                return
            unloading = any(x.state is State.UNLOADING for x in self._entries.values())
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                busy = sorted(x.name for x in self._entries.values() if x.state is State.READY)
                raise NoCapacityError(
                    e.name if e else "?",
                    self.load_timeout,
                    f"budget full and nothing evictable (resident, busy or pinned: {busy}"
                    f"{'; waiting for unloads' if unloading else ''})",
                )
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    async def _unload_entry(self, e: _Entry) -> None:
        """Ask Triton to unload; the entry is UNLOADING (with a Future) until Triton reports the model gone."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        e.state, e.future = State.UNLOADING, fut
        self.policy.on_evict(e.name)
        self._unpin_composing(e)
        t0 = time.monotonic()
        try:
            await self._triton("unload", e.name, self._client_or_raise().unload_model(e.name))
        except ModelLoadError as exc:
            log.warning("unload of %s failed: %s", e.name, exc)
        self._update_gauges()
        self._unloading[e.name] = (e, fut, t0)
        if not self._unload_watcher:
            self._unload_watcher = True
            self._spawn(self._watch_unloads())

    async def _watch_unloads(self) -> None:
        """One poller for every model Triton is still unloading (not one per model): finish those gone."""
        try:
            while self._unloading:
                try:
                    index = await self._index()
                    still = {m["name"] for m in index if m.get("state") in ("READY", "UNLOADING")}
                except ModelLoadError:
                    still = set()  # Triton is gone: so are its models
                now = time.monotonic()
                for name, (e, fut, t0) in list(self._unloading.items()):
                    if name not in still or now - t0 > 60.0:
                        del self._unloading[name]
                        self.metrics.unloading.observe(now - t0)
                        self._finish_unload(e, fut)
                if self._unloading:
                    await asyncio.sleep(0.025)
        finally:
            self._unload_watcher = False

    def _finish_unload(self, e: _Entry, fut: asyncio.Future[None]) -> None:
        e.state, e.future = State.UNLOADED, None
        self._release_files(e)
        if not fut.done():
            fut.set_result(None)
        self._update_gauges()
        self._notify()

    async def unload(self, name: str) -> None:
        """Unload now (waits for in-flight requests to drain, then for Triton to release the model)."""
        e = self._entries.get(name)
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
                changed = self._changed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), deadline - time.monotonic())
            if e.state is State.READY:
                await self._unload_entry(e)
        if e.state is State.UNLOADING and e.future is not None:
            await asyncio.shield(e.future)
        if e.state is State.FAILED:
            e.state, e.error = State.UNLOADED, None

    # -------------------------------------------------------------------------------------------- helpers ---
    def _entry(self, name: str) -> _Entry:
        e = self._entries.get(name)
        if e is None:
            e = self._entries[name] = _Entry(name)
        return e

    def _now(self) -> float:
        return time.monotonic() - self._t0

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _client_or_raise(self) -> httpaio.InferenceServerClient:
        if self._client is None:
            raise ManagerConfigError("ModelManager used before start() (or after close())")
        return self._client

    async def _triton(self, what: str, name: str, call: Any) -> Any:
        try:
            return await asyncio.wait_for(call, self.load_timeout)
        except InferenceServerException as exc:
            msg = exc.message() or str(exc)
            if any(s in msg.lower() for s in _UNREACHABLE):
                raise TritonDownError(name, f"Triton at {self.endpoint.http} is unreachable: {msg}") from None
            raise ModelLoadError(name, msg) from None
        except TimeoutError:
            raise ModelLoadError(name, f"Triton {what} took longer than {self.load_timeout:.0f} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise TritonDownError(name, f"Triton at {self.endpoint.http} is unreachable: {exc}") from None

    async def _index(self) -> list[dict[str, Any]]:
        return list(await self._triton("index", "*", self._client_or_raise().get_model_repository_index()))

    def _update_gauges(self) -> None:
        self.metrics.loaded.set(float(sum(1 for e in self._entries.values() if e.state is State.READY)))
        self.metrics.disk_bytes.set(float(self.disk_cache.bytes_used if self.disk_cache is not None else 0))
        for e in self._entries.values():
            if e.state is State.READY:
                self.metrics.memory.set(float(e.size_bytes), model=e.name)
            elif self.metrics.memory.get(model=e.name):
                self.metrics.memory.set(0.0, model=e.name)
