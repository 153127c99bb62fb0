"""Time spent in the phases of a cold load that run deep inside a store's fetch, told to the loader that asked.

A store's ``fetch`` runs in a worker thread and rewrites the config (``adopt_config_name``) somewhere inside its
extraction; the ``ArtifactStore`` protocol returns only the fetched path. Rather than widen every store's signature to
carry timings, the loader runs the fetch inside ``collecting()`` (in that worker thread) and the code that knows a
phase adds its seconds with ``timed``: a thread-local dict, so concurrent fetches in other threads never mix. Outside
``collecting`` (a store used on its own, ``tritonctl mme load``) the timing is skipped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")
_local = threading.local()


@contextmanager
def collecting() -> Iterator[dict[str, float]]:
    """Collect the phases timed in this thread until the block ends; yields the dict that fills up."""
    previous = getattr(_local, "phases", None)
    found: dict[str, float] = {}
    _local.phases = found
    try:
        yield found
    finally:
        _local.phases = previous


def timed(phase: str, fn: Callable[[], T]) -> T:
    """``fn()``, its seconds added to ``phase`` when a ``collecting`` block is open in this thread."""
    sink: dict[str, float] | None = getattr(_local, "phases", None)
    if sink is None:
        return fn()
    t0 = time.perf_counter()
    try:
        return fn()
    finally:
        sink[phase] = sink.get(phase, 0.0) + time.perf_counter() - t0


def run_collecting(fn: Callable[[], T]) -> tuple[T, dict[str, float]]:
    """``fn()`` with the phases it timed (for ``asyncio.to_thread``: the collection happens in the worker thread)."""
    with collecting() as found:
        return fn(), found
