"""Who is the bottleneck: the load generator's CPU share per process, the machine's busy share, and the verdict.

Why: a closed loop measures whatever limits it. When the client process is saturated (a Python process is one core)
the throughput and latency describe the client, not Triton; when every CPU of the machine is busy, client and server
compete for them (on a 2-core machine with Triton and its python stub beside the load generator that is common), and
the numbers describe the machine. The report states which, so that nobody provisions from a client-bound number.
"""

from __future__ import annotations

import time
from typing import Any

CLIENT_SATURATED = 0.9  # of one core, for a load-generating process
MACHINE_SATURATED = 0.95  # of all CPUs


class CpuMeter:
    """This process's CPU time (all its threads) over the measured window, as a share of one core."""

    def __init__(self) -> None:
        self._start: tuple[float, float] | None = None

    def open(self) -> None:
        """Start of the window (after the warm-up); later calls are no-ops."""
        if self._start is None:
            self._start = (time.process_time(), time.perf_counter())

    def close(self) -> float | None:
        """CPU seconds per wall second since ``open``; None when the window never opened or is too short."""
        if self._start is None:
            return None
        cpu, wall = time.process_time() - self._start[0], time.perf_counter() - self._start[1]
        return cpu / wall if wall > 0.2 else None


def host_times() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine so far (all CPUs); None where psutil cannot read them."""
    try:
        import psutil

        t = psutil.cpu_times()
    except (ImportError, OSError):
        return None
    idle = t.idle + getattr(t, "iowait", 0.0)
    total = sum(t)
    return total - idle, total


def verdict(per_process: list[float | None], before: Any, after: Any) -> dict[str, Any]:
    """The report's ``client.cpu``: shares, the machine's busy share between the snapshots, and the bottleneck."""
    import os

    shares = [c for c in per_process if c is not None]
    busy = None
    if before is not None and after is not None and after[1] > before[1]:
        busy = (after[0] - before[0]) / (after[1] - before[1])
    out: dict[str, Any] = {"per_process": per_process, "max": max(shares) if shares else None, "host_busy": busy,
                           "cpus": os.cpu_count(), "bottleneck": None, "note": ""}  # fmt: skip
    if shares and max(shares) >= CLIENT_SATURATED:
        i = per_process.index(max(shares))
        out["bottleneck"] = "client"
        out["note"] = (
            f"client-bound: load generator process {i} used {max(shares):.0%} of a core; the numbers measure the "
            "client (add --processes if the machine has idle cores)"
        )
    elif busy is not None and busy >= MACHINE_SATURATED:
        out["bottleneck"] = "machine"
        out["note"] = (
            f"machine-bound: all {out['cpus']} CPUs were {busy:.0%} busy; the load generator "
            f"({sum(shares):.0%} of a core) and the server competed for them"
        )
    return out
