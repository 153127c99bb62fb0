"""Sweeps: one run per concurrency level or per offered rate, as perf_analyzer's ``--concurrency-range`` and
``--request-rate-range`` (``start:end:step``), and the points of the throughput-vs-latency curve.

Why here and in perf_analyzer's syntax: that is what Triton users already type, and the CSV written from a sweep
(``perfcsv``) has perf_analyzer's ``-f`` columns, so existing spreadsheets and Model Analyzer habits keep working.
"""

from __future__ import annotations

import math
from typing import Any

from toolkit.loadtest.runner import RunOptions, run_loadtest
from toolkit.loadtest.scenario import LoadTestError

MAX_LEVELS = 100
POINT_KEYS = ("throughput_rps", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "avg_ms", "errors")


def parse_range(text: str, flag: str, *, integer: bool) -> list[float]:
    """perf_analyzer's ``start[:end[:step]]`` (end defaults to start, step to 1) -> the levels, end included."""
    parts = text.split(":")
    try:
        nums = [float(p) for p in parts]
    except ValueError:
        nums = []
    if not 1 <= len(nums) <= 3 or any(not math.isfinite(x) for x in nums):
        raise LoadTestError(f"bad {flag} {text!r}: use start[:end[:step]], e.g. 1:16:2")
    start, end, step = nums[0], nums[1] if len(nums) > 1 else nums[0], nums[2] if len(nums) > 2 else 1.0
    if integer and any(x != int(x) for x in (start, end, step)):
        raise LoadTestError(f"bad {flag} {text!r}: concurrency levels are whole numbers")
    if start <= 0 or step <= 0 or end < start:
        raise LoadTestError(f"bad {flag} {text!r}: needs 0 < start <= end and step > 0")
    count = int((end - start) / step + 1e-9) + 1
    if count > MAX_LEVELS:
        raise LoadTestError(f"bad {flag} {text!r}: {count} levels (at most {MAX_LEVELS})")
    return [start + i * step for i in range(count)]


def run_sweep(opts: RunOptions, levels: list[float], mode: str = "concurrency") -> dict[str, Any]:
    """One run per level: ``concurrency`` sets the users (closed loop), ``rate`` the total offered requests/s
    (paced users; their number is ``--users``, which must be enough for the rate at the observed latency)."""
    if mode not in ("concurrency", "rate"):
        raise LoadTestError(f"unknown sweep mode {mode!r}")
    if not levels or any(x <= 0 for x in levels):
        raise LoadTestError(f"bad sweep {levels}: give positive levels, e.g. 1,2,4,8")
    runs, points = [], []
    for level in levels:
        label = f"c{int(level)}" if mode == "concurrency" else f"r{level:g}"
        if opts.progress:
            opts.progress(f"--- {mode} {level:g} ---")
        update: dict[str, Any] = {"users": int(level)} if mode == "concurrency" else {"rps": float(level)}
        users = update.get("users", opts.users or opts.scenario.users)
        update["spawn_rate"] = max(float(users), opts.spawn_rate or 0.0)  # everyone running from the first second
        o = RunOptions(**{**opts.__dict__, **update})
        o.scenario = opts.scenario.model_copy(
            update={"shape": opts.scenario.shape.model_copy(update={"kind": "constant"})}
        )
        run = run_loadtest(o)
        runs.append(run)
        total = run["client"]["total"]
        points.append(
            {"label": label, "level": level, "users": run["users"], "rate": run["target_rps"],
             **{k: total[k] for k in POINT_KEYS}}
        )  # fmt: skip
    return {"scenario": opts.scenario.name, "protocol": opts.proto, "mode": mode, "sweep": points, "runs": runs}
