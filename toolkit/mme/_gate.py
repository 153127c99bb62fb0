"""How many Triton loads run at once, and in which order they start: a FIFO gate in front of Triton's load call.

A python model's load is mostly its stub starting (a Python interpreter importing numpy): CPU work. Triton starts
up to 4 loads at once (``--model-load-thread-count``), and on a machine with fewer cores than that, concurrent loads
share the cores, so each takes several times longer and they all finish late together: under a cold burst the first
request waits as long as the last (measured in docs/benchmarks/mme_seed003.md). The gate lets ``limit`` loads run
(the usable CPUs, at most Triton's 4 threads, by default) and starts the others in the order they asked, so the
earliest cold request is served first and warm requests keep some CPU. Fetching, extracting and admitting a model
happen before the gate: the next model is ready on disk while the current one loads.

Only the Triton load call holds a slot: an ensemble waiting for its composing models holds none (no deadlock). A load
still running after ``hold_s`` (10 s: a python model loads in 0.1-1 s) gives its slot up and goes on outside the
gate: a model whose ``initialize`` hangs (it is only failed after the load timeout) must not stop every other cold
load behind it.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

TRITON_LOAD_THREADS = 4  # Triton's default --model-load-thread-count
HOLD_S = 10.0  # a load running longer than this gives its slot up


def default_limit() -> int:
    """The CPUs this process may use, at most Triton's default load threads."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cpus, TRITON_LOAD_THREADS))


class LoadGate:
    """At most ``limit`` holders at once; the others get in first come, first served (None: no limit)."""

    def __init__(self, limit: int | None, hold_s: float = HOLD_S) -> None:
        self.limit = limit
        self.hold_s = hold_s
        self.active = 0
        self.peak = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return sum(1 for f in self._waiters if not f.done())

    async def acquire(self) -> Callable[[], None]:
        """Take one slot (waiting, first come first served, while ``limit`` are held); returns its release, which
        may be called more than once (only the first call counts)."""
        if self.limit is not None and self.active >= self.limit:  # waiters exist only while all slots are held
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut  # the releaser hands its slot over: ``active`` already counts this holder
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._release()  # handed a slot, then cancelled before using it: pass it on
                else:
                    self._waiters.remove(fut)
                raise
        else:
            self.active += 1
        self.peak = max(self.peak, self.active)
        held = [True]

        def release() -> None:
            if held[0]:
                held[0] = False
                self._release()

        return release

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the block (``acquire`` and its release)."""
        release = await self.acquire()
        try:
            yield
        finally:
            release()

    def _release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # hand over: the count of holders stays the same
                return
        self.active -= 1
