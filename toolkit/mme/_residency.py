"""Per-model records of the MME manager: state, in-flight count, pins, and the one "something changed" signal.

Everything here lives on the manager's single asyncio loop, so the records need no locks. Code that must wait for
the residency to change (a load waiting for room, an unload waiting for requests to drain) does not poll: it waits on
an Event that ``notify`` sets and then replaces, so every current waiter wakes once and later waiters wait for the
*next* change. Kept apart from loading and eviction because both read and write these records.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from toolkit.mme.diskcache import DiskCache
from toolkit.mme.errors import ModelLoadError
from toolkit.mme.metrics import MMEMetrics


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
class Entry:
    """The manager's mutable record of one model (``ModelState`` is its frozen, public snapshot)."""

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
    hung_since: float = 0.0  # monotonic time of a load that outlasted the load timeout (Triton may still be at it)
    # The last Triton load call on the boot clock (start, READY), until the stub watch splits it at the stub's start.
    triton_window: tuple[float, float] | None = None

    def snapshot(self) -> ModelState:
        return ModelState(
            self.name,
            self.state.value,
            self.in_flight,
            self.size_bytes,
            self.last_used,
            self.loads,
            self.hits,
            bool(self.pinned_by),
            str(self.error) if self.error and self.state is State.FAILED else None,
        )


class Residency:
    """The table of ``Entry`` records plus what every part of the manager needs alongside it: a monotonic clock for
    the eviction policy, the change signal, and the Prometheus gauges derived from the table."""

    def __init__(self, metrics: MMEMetrics, disk_cache: DiskCache | None) -> None:
        self.entries: dict[str, Entry] = {}
        self._metrics = metrics
        self._disk_cache = disk_cache
        self._changed = asyncio.Event()
        self._t0 = time.monotonic()

    def get(self, name: str) -> Entry | None:
        return self.entries.get(name)

    def entry(self, name: str) -> Entry:
        """The record for ``name``, created (UNLOADED) on first use."""
        e = self.entries.get(name)
        if e is None:
            e = self.entries[name] = Entry(name)
        return e

    def now(self) -> float:
        """Seconds since the manager was built: the clock the eviction policies see."""
        return time.monotonic() - self._t0

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_change(self, timeout: float) -> None:
        """Wait until the next ``notify`` or ``timeout`` seconds, whichever comes first."""
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout)

    def enter(self, e: Entry) -> Callable[[], None]:
        """Count a request against ``e`` (eviction skips a model while its count is > 0); the returned function ends
        it and wakes waiters at zero. For callers that cannot hold a ``with`` block (the gateway's callbacks)."""
        e.in_flight += 1

        def leave() -> None:
            e.in_flight -= 1
            if e.in_flight == 0:
                self.notify()

        return leave

    def unpin_composing(self, e: Entry) -> None:
        """An ensemble that stops being loaded releases its pins on the models its steps use."""
        for dep in e.composing:
            d = self.entries.get(dep)
            if d is not None:
                d.pinned_by.discard(e.name)

    def update_gauges(self) -> None:
        self._metrics.loaded.set(float(sum(1 for e in self.entries.values() if e.state is State.READY)))
        self._metrics.disk_bytes.set(float(self._disk_cache.bytes_used if self._disk_cache is not None else 0))
        for e in self.entries.values():
            if e.state is State.READY:
                self._metrics.memory.set(float(e.size_bytes), model=e.name)
            elif self._metrics.memory.get(model=e.name):
                self._metrics.memory.set(0.0, model=e.name)
