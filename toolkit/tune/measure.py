"""One measurement: NVIDIA's perf_analyzer at one concurrency against one model, read from its CSV.

Why perf_analyzer and not our Locust driver: it is what Model Analyzer measures with, so a comparison of the two
tuners compares search strategies, not load generators; and it costs less CPU per request on a 2-core machine.

Why ``-s 999``: perf_analyzer's stability rule (the last three windows' latency within ``-s`` percent) fails on a
shared, busy machine (measured here: it gave up at ``-s 100`` with 500 ms windows), and then it writes no result at
all. The noise is handled one level up instead: configs whose results are within the measured noise are measured
again (``toolkit.tune.search``). The three windows are still averaged by perf_analyzer.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from toolkit.tune.space import TuneError

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Measurement:
    """perf_analyzer's summary of one run: throughput (inferences/s) and client-side latency percentiles (ms)."""

    concurrency: int
    throughput: float
    p50_ms: float
    p99_ms: float


def find_perf_analyzer(explicit: Path | str | None = None) -> Path:
    """``explicit``, else $TRITONCTL_PERF_ANALYZER, else ``perf_analyzer`` on PATH, else the checkout's
    tools/perf_analyzer (``make perf-analyzer``)."""
    candidates = [explicit, os.environ.get("TRITONCTL_PERF_ANALYZER"), shutil.which("perf_analyzer")]
    candidates.append(ROOT / "tools" / "perf_analyzer" / "perf_analyzer")
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    raise TuneError(
        "perf_analyzer not found: `make perf-analyzer` (tools/perf_analyzer), put it on PATH, "
        "or pass --perf-analyzer / set TRITONCTL_PERF_ANALYZER"
    )


@dataclass
class PerfAnalyzer:
    """Runs perf_analyzer against one Triton (``url``: host:port of its gRPC or HTTP port, per ``protocol``)."""

    binary: Path
    url: str
    protocol: str = "grpc"
    window_ms: int = 500
    windows: int = 3
    timeout_s: float = 60.0

    def command(self, model: str, concurrency: int, csv_path: str, window_ms: int | None = None) -> list[str]:
        return [str(self.binary), "-m", model, "-u", self.url, "-i", self.protocol,
                "--concurrency-range", str(concurrency), "--measurement-interval", str(window_ms or self.window_ms),
                "-r", str(self.windows), "-s", "999", "-f", csv_path]  # fmt: skip

    def measure(self, model: str, concurrency: int) -> Measurement:
        """One measurement; a failed one is tried once more with windows twice as long (on a loaded machine a
        window can end with no request completed: "No valid requests recorded within time interval")."""
        try:
            return self._run(model, concurrency, self.window_ms)
        except TuneError:
            return self._run(model, concurrency, self.window_ms * 2)

    def _run(self, model: str, concurrency: int, window_ms: int) -> Measurement:
        with tempfile.TemporaryDirectory(prefix="tritonctl-pa-") as tmp:
            out = str(Path(tmp) / "pa.csv")
            try:
                r = subprocess.run(
                    self.command(model, concurrency, out, window_ms),
                    capture_output=True,
                    text=True,
                    timeout=self.timeout_s,
                )
            except subprocess.TimeoutExpired:
                raise TuneError(
                    f"perf_analyzer on {model} at concurrency {concurrency} ran past {self.timeout_s:.0f} s"
                ) from None
            if r.returncode != 0 or not Path(out).is_file():
                tail = (r.stderr.strip() or r.stdout.strip()).splitlines()[-3:]
                raise TuneError(f"perf_analyzer failed on {model} (exit {r.returncode}): {' | '.join(tail)[:500]}")
            return parse_csv(Path(out).read_text(), concurrency)


def parse_csv(text: str, concurrency: int) -> Measurement:
    """The first row of perf_analyzer's ``-f`` CSV (latencies there are in microseconds)."""
    rows = list(csv.DictReader(text.splitlines()))
    if not rows:
        raise TuneError("perf_analyzer wrote an empty CSV")
    row = rows[0]
    try:
        return Measurement(
            concurrency=int(row.get("Concurrency") or concurrency),
            throughput=float(row["Inferences/Second"]),
            p50_ms=float(row["p50 latency"]) / 1000.0,
            p99_ms=float(row["p99 latency"]) / 1000.0,
        )
    except (KeyError, ValueError) as exc:
        raise TuneError(f"perf_analyzer's CSV lacks {exc}: header {list(row)}") from None
