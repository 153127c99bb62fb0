"""perf_analyzer's ``-f`` CSV from our reports: same header, same units (µs), one row per concurrency or rate.

Why: Triton users keep perf_analyzer CSVs in spreadsheets and scripts (and Model Analyzer reads the same columns);
a ``tritonctl loadtest ... -f results.csv`` drops into them unchanged. The columns are perf_analyzer 2.41's (checked
by running it with ``-f``). What we measure differently, said once here and in docs/loadtest.md:

* ``Client Send`` and ``Client Recv`` are 0: our requests are serialised once before the run and the round trip is
  timed as a whole, so serialisation and response parsing are not split out; the round trip's non-server part is
  all in ``Network+Server Send/Recv`` (the average latency minus the server's queue and compute times, as
  perf_analyzer computes it).
* Server columns are the request-weighted averages of Triton's statistics over the scenario's target models (one
  model in perf_analyzer's case), over the measured window.
* ``Inferences/Second`` counts rows: requests x the target's batch size, as perf_analyzer's.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

HEADER = [
    "Inferences/Second",
    "Client Send",
    "Network+Server Send/Recv",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
    "Client Recv",
    "p50 latency",
    "p90 latency",
    "p95 latency",
    "p99 latency",
]
SERVER_PARTS = ("queue_us", "compute_input_us", "compute_infer_us", "compute_output_us")


def _server(report: dict[str, Any]) -> dict[str, float]:
    """Request-weighted server times (µs) over the target models that have statistics."""
    models = {t["model"] for t in report.get("targets", [])}
    rows = [s for m, s in (report.get("server") or {}).items() if m in models and s.get("requests")]
    n = sum(s["requests"] for s in rows)
    return {k: (sum(s.get(k, 0.0) * s["requests"] for s in rows) / n if n else 0.0) for k in SERVER_PARTS}


def row(report: dict[str, Any]) -> list[Any]:
    """One CSV row (without the level column) for one run's report."""
    per = report["client"]["per_target"]
    inferences = sum(per.get(t["label"], {}).get("throughput_rps", 0.0) * t.get("batch", 1) for t in report["targets"])
    total = report["client"]["total"]
    srv = _server(report)
    avg_us = total["avg_ms"] * 1000.0 if total.get("count") else 0.0
    network = max(0.0, avg_us - sum(srv.values())) if avg_us else 0.0
    return [
        f"{inferences:.6g}",
        0,
        round(network),
        *(round(srv[k]) for k in SERVER_PARTS),
        0,
        *(round(total[k] * 1000.0) for k in ("p50_ms", "p90_ms", "p95_ms", "p99_ms")),
    ]


def level_of(report: dict[str, Any]) -> tuple[str, str]:
    """(column name, value): ``Request Rate`` for a paced run, else ``Concurrency`` (the users)."""
    rate = report.get("target_rps")
    if rate:
        return "Request Rate", f"{rate:g}"
    return "Concurrency", str(report["users"])


def write_perf_csv(reports: list[dict[str, Any]], path: Path) -> Path:
    """perf_analyzer's CSV for these runs (one sweep's, or a single run); the level column follows the first run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    col = level_of(reports[0])[0]
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow([col, *HEADER])
        for r in reports:
            w.writerow([level_of(r)[1], *row(r)])
    return path
