"""Waiting on a condition instead of sleeping for a guessed time: poll until it holds, fail with what was awaited when
the deadline passes. The deadline only bounds a failure; a passing test waits exactly as long as the condition takes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.01) -> T:
    """Poll ``condition`` until it returns something truthy, and return that; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(interval)
    return value


async def until(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.01) -> T:
    """``wait_until`` inside an event loop: sleeps between polls let the loop's other tasks run."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(interval)
    return value
