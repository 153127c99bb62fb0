"""The scrape's side of fresh host counters (``HostStats.wait_fresh``), without Triton: a state file's mtime is the
moment up to which it counts every request; a scrape asks (touches ``want``) only when the last reading is older than
the last answer, never waits for a dead host's file, and gives up after its bound on a live host that does not write.
The host's side (re-stamping on ``want``) is exercised by tests/integration/test_mux.py."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path

from toolkit.mme.metrics import MMEMetrics
from toolkit.mme.muxstats import WANT, HostStats


def _state(root: Path, instance: str, pid: int, stamp: int, resident: dict[str, int] | None = None) -> None:
    path = root / ".state" / f"{instance}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "counts": {}, "resident": resident or {}}, separators=(",", ":")))
    os.utime(path, ns=(stamp, stamp))


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_reading_as_new_as_the_last_answer_asks_nothing(tmp_path: Path) -> None:
    stamp = time.time_ns() - 10**9
    _state(tmp_path, "h_0", os.getpid(), stamp)
    stats = HostStats(tmp_path, MMEMetrics())
    stats.refresh()
    assert stats.covered == stamp
    assert asyncio.run(stats.wait_fresh(stamp))
    assert not (tmp_path / ".state" / WANT).exists()


def test_a_live_host_that_does_not_write_is_waited_for_a_bounded_time(tmp_path: Path) -> None:
    _state(tmp_path, "h_0", os.getpid(), time.time_ns() - 10**9)
    stats = HostStats(tmp_path, MMEMetrics())
    since = time.time_ns()
    t0 = time.monotonic()
    assert not asyncio.run(stats.wait_fresh(since, timeout=0.2))
    assert 0.2 <= time.monotonic() - t0 < 2.0
    assert (tmp_path / ".state" / WANT).stat().st_mtime_ns >= since  # asked, exactly (not the coarse fs clock)


def test_a_dead_hosts_file_is_not_waited_for(tmp_path: Path) -> None:
    _state(tmp_path, "h_0", _dead_pid(), time.time_ns() - 10**9)
    _state(tmp_path, "h_1", os.getpid(), time.time_ns() + 10**9)  # a live one, fresh
    stats = HostStats(tmp_path, MMEMetrics())
    t0 = time.monotonic()
    assert asyncio.run(stats.wait_fresh(time.time_ns(), timeout=5.0))
    assert time.monotonic() - t0 < 1.0


def test_no_host_ever_started_is_no_wait(tmp_path: Path) -> None:
    assert not asyncio.run(HostStats(tmp_path, MMEMetrics()).wait_fresh(time.time_ns()))


def test_holds_agrees_with_resident(tmp_path: Path) -> None:
    """The gateway's per-request question (``holds``) answers as ``resident()`` does: live hosts only."""
    _state(tmp_path, "h_0", os.getpid(), time.time_ns(), {"a": 10, "b": 20})
    _state(tmp_path, "h_1", os.getpid(), time.time_ns(), {"b": 5, "c": 1})
    _state(tmp_path, "h_2", _dead_pid(), time.time_ns(), {"d": 7})  # a killed host's last file
    stats = HostStats(tmp_path, MMEMetrics())
    stats.refresh()
    assert stats.resident() == {"a": 10, "b": 25, "c": 1}
    for name in ("a", "b", "c", "d", "e"):
        assert stats.holds(name) == (name in stats.resident())
