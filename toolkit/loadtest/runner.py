"""The orchestrator: resolve a scenario, run K worker processes, show live progress, merge, and build the report.

Workers are separate processes (``toolkit.loadtest.worker``) for two reasons: one Python process saturates one core
long before Triton does, and Locust's gevent monkey-patching must not leak into the CLI or the test process.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from toolkit.extras import require
from toolkit.loadtest.cpu import host_times, verdict
from toolkit.loadtest.hist import LatencyHistogram
from toolkit.loadtest.payload import resolve_target
from toolkit.loadtest.recorder import Recorder
from toolkit.loadtest.scenario import LoadTestError, Scenario, Target
from toolkit.loadtest.serverstats import diff_stats, mme_metrics, scrape, settle, snapshot_stats
from toolkit.server.endpoint import TritonEndpoint

READY_TIMEOUT_S = 60.0  # workers import locust, gevent, tritonclient (~1 s each, more on a loaded machine)
START_DELAY_S = 0.3  # between "all ready" and the common start


@dataclass
class RunOptions:
    scenario: Scenario
    target: str  # what the users hit: Triton HTTP URL, Triton gRPC host:port, or the gateway URL
    protocol: str | None = None  # overrides the scenario
    encoding: str | None = None
    triton_url: str | None = None  # Triton HTTP, for metadata + /v2/models/stats (default: target when http)
    mme_metrics_url: str | None = None  # the manager's Prometheus text (default: gateway /metrics for sagemaker)
    users: int | None = None
    spawn_rate: float | None = None
    duration: float | None = None
    warmup: float | None = None
    rps: float | None = None
    processes: int = 1
    grpc_client: str = "h2"  # h2: the raw HTTP/2 driver (constant/rate shapes); grpcio: the Locust gRPC user
    progress: Callable[[str], None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def proto(self) -> str:
        return self.protocol or self.scenario.protocol

    @property
    def driver(self) -> str:
        """``h2`` (toolkit.loadtest.h2driver) for gRPC at a constant user count, else ``locust``."""
        h2 = self.proto == "grpc" and self.grpc_client == "h2" and self.scenario.shape.kind in ("constant", "rate")
        return "h2" if h2 else "locust"

    def stats_url(self) -> str | None:
        if self.triton_url:
            return _http(self.triton_url)
        return _http(self.target) if self.proto == "http" else None

    def metrics_url(self) -> str | None:
        if self.mme_metrics_url:
            return self.mme_metrics_url
        return _http(self.target).rstrip("/") + "/metrics" if self.proto == "sagemaker" else None


def _http(url: str) -> str:
    return url if "://" in url else f"http://{url}"


def _get_json(url: str) -> dict[str, Any] | None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return dict(json.loads(r.read()))
    except (urllib.error.URLError, OSError, ValueError):
        return None


def resolve_targets(opts: RunOptions) -> list[Target]:
    base = opts.stats_url()
    out = []
    for t in opts.scenario.expanded_targets():
        meta = cfg = None
        if base and (t.inputs is None or t.batched is None):
            meta = _get_json(f"{base.rstrip('/')}/v2/models/{t.model}")
            cfg = _get_json(f"{base.rstrip('/')}/v2/models/{t.model}/config")
        out.append(resolve_target(t, meta, cfg, f"{base.rstrip('/')}/v2/models/{t.model}" if base else None))
    return out


def _split(total: int, k: int) -> list[int]:
    return [total // k + (1 if i < total % k else 0) for i in range(k)]


def run_loadtest(opts: RunOptions) -> dict[str, Any]:
    """Run one load test and return the report dict (see docs/loadtest.md for its fields)."""
    require("loadtest", "tritonctl loadtest")  # here, not in the workers: one line instead of a worker's traceback
    sc = opts.scenario
    users = opts.users or sc.users
    duration = opts.duration if opts.duration is not None else sc.duration
    warmup = opts.warmup if opts.warmup is not None else sc.warmup
    if warmup >= duration:
        raise LoadTestError(f"warmup ({warmup:g} s) must be shorter than the duration ({duration:g} s)")
    spawn_rate = opts.spawn_rate or sc.spawn_rate
    rps = opts.rps or (sc.shape.rps if sc.shape.kind == "rate" else None)
    shape_users = max([users] + [s.users for s in sc.shape.stages])
    k = max(1, min(opts.processes, shape_users))
    targets = resolve_targets(opts)
    binary = (opts.encoding or sc.encoding) == "binary"
    say = opts.progress or (lambda s: None)

    stats_url, metrics_url = opts.stats_url(), opts.metrics_url()
    snaps: dict[str, Any] = {}

    def take_before() -> None:
        snaps["host"] = host_times()
        snaps["stats"] = snapshot_stats(stats_url)
        snaps["mme"] = scrape(metrics_url)

    def take_host_after() -> None:
        snaps["host_after"] = host_times()

    with tempfile.TemporaryDirectory(prefix="tritonctl-loadtest-") as tmp:
        procs = _launch(opts, targets, binary, users, spawn_rate, rps, duration, warmup, k, Path(tmp))
        try:
            watcher = _Watcher(procs)
            watcher.wait_ready(READY_TIMEOUT_S)
            start_at = time.time() + START_DELAY_S
            timer = threading.Timer(max(0.0, start_at + warmup - time.time()), take_before)
            timer.start()
            end_timer = threading.Timer(max(0.0, start_at + duration - time.time()), take_host_after)
            end_timer.start()
            for p, _, _ in procs:
                assert p.stdin is not None
                p.stdin.write(f"{start_at!r}\n")
                p.stdin.flush()
            watcher.watch(start_at, duration, say)
            timer.join()
            end_timer.join()
        finally:
            for p, _, _ in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        settle(metrics_url)  # the stopped workers' last requests answered first (their loads counted)
        after_stats, after_mme = snapshot_stats(stats_url), scrape(metrics_url)
        rec = Recorder(t0=start_at, warmup=warmup)
        for i, (p, _, err_path) in enumerate(procs):
            res = Path(tmp) / f"result-{i}.json"
            if p.returncode != 0 or not res.is_file():
                tail = err_path.read_text(errors="replace")[-2000:]
                raise LoadTestError(f"load worker {i} failed (exit {p.returncode}):\n{tail}")
            rec.merge_dict(json.loads(res.read_text()))

    report = build_report(opts, rec, targets, users, k, duration, warmup, rps, start_at)
    report["client"]["cpu"] = verdict(rec.cpu, snaps.get("host"), snaps.get("host_after"))
    report["server"] = diff_stats(snaps.get("stats"), after_stats)
    report["server_stats_source"] = f"{stats_url}/v2/models/stats" if stats_url and after_stats is not None else None
    mme = mme_metrics(snaps.get("mme"), after_mme)
    if sc.mme is not None or mme:
        n_ok = sum(h.count for h in rec.per_target.values())
        cold = sum(rec.cold.values())
        mme["client_cold_estimate"] = cold
        mme["client_hit_ratio_estimate"] = (1 - cold / n_ok) if n_ok else None
        mme["cold_threshold_ms"] = sc.mme.cold_threshold_ms if sc.mme else None
        mme["source"] = metrics_url
    report["mme"] = mme
    return report


def _launch(
    opts: RunOptions,
    targets: list[Target],
    binary: bool,
    users: int,
    spawn_rate: float,
    rps: float | None,
    duration: float,
    warmup: float,
    k: int,
    tmp: Path,
) -> list[Any]:
    sc = opts.scenario
    shape_users = max([users] + [s.users for s in sc.shape.stages])
    procs = []
    for i, n in enumerate(_split(users, k)):
        cfg = {
            "driver": opts.driver,
            "protocol": opts.proto,
            "host": opts.target if opts.proto == "grpc" else _http(opts.target),
            "targets": [t.model_dump() for t in targets],
            "binary": binary,
            "endpoint": opts.extra.get("endpoint", ""),
            "users": n,
            "spawn_rate": spawn_rate / k,
            "rps": (rps * n / users) if rps else None,
            "shape": sc.shape.model_dump(),
            "shape_users": shape_users,
            "share": 1.0 / k,
            "duration": duration,
            "warmup": warmup,
            "timeout": sc.timeout,
            "cold_threshold_ms": sc.mme.cold_threshold_ms if sc.mme else None,
        }
        cfg_path = tmp / f"config-{i}.json"
        cfg_path.write_text(json.dumps(cfg))
        err_path = tmp / f"stderr-{i}.log"
        with open(err_path, "wb") as err:
            p = subprocess.Popen(
                [sys.executable, "-m", "toolkit.loadtest.worker", str(cfg_path), str(tmp / f"result-{i}.json")],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        procs.append((p, cfg_path, err_path))
    return procs


class _Watcher:
    """Reads the workers' JSON lines: the ready handshake, then one progress line per second each."""

    def __init__(self, procs: list[Any]) -> None:
        self.procs = procs
        self.latest: dict[int, dict[str, Any]] = {}
        self.ready: set[int] = set()
        self.fresh = threading.Event()
        self.readers = [
            threading.Thread(target=self._read, args=(i, p.stdout), daemon=True) for i, (p, _, _) in enumerate(procs)
        ]
        for r in self.readers:
            r.start()

    def _read(self, i: int, stream: Any) -> None:
        for line in stream:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("ready"):
                self.ready.add(i)
            else:
                self.latest[i] = msg
            self.fresh.set()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while len(self.ready) < len(self.procs):
            dead = [i for i, (p, _, _) in enumerate(self.procs) if p.poll() is not None]
            if dead:
                err = self.procs[dead[0]][2].read_text(errors="replace")[-2000:]
                raise LoadTestError(f"load worker {dead[0]} exited before starting:\n{err}")
            if time.time() > deadline:
                raise LoadTestError(f"load workers not ready after {timeout:.0f} s")
            time.sleep(0.02)

    def watch(self, start_at: float, duration: float, say: Callable[[str], None]) -> None:
        """Print one aggregated progress line per second until all workers have exited."""
        deadline = start_at + duration + 120.0
        last_ok, last_t = 0, time.time()
        while any(p.poll() is None for p, _, _ in self.procs):
            if time.time() > deadline:
                raise LoadTestError("load workers did not finish in time (killed)")
            time.sleep(0.2 if time.time() > start_at + duration else 1.0)
            if not self.latest or not self.fresh.is_set():
                continue
            self.fresh.clear()
            ok = sum(v["ok"] for v in self.latest.values())
            errs = sum(v["errors"] for v in self.latest.values())
            now = time.time()
            rate = (ok - last_ok) / max(now - last_t, 1e-6)
            last_ok, last_t = ok, now
            elapsed = min(now - start_at, duration)
            users = sum(v["users"] for v in self.latest.values())
            say(f"[{elapsed:5.0f}/{duration:.0f} s] users {users:4d}  ok {ok:8d}  errors {errs:6d}  {rate:8.1f} req/s")
        for r in self.readers:
            r.join(timeout=2)


def _summ(h: LatencyHistogram, errors: int, window: float) -> dict[str, Any]:
    s: dict[str, Any] = h.summary()
    s["throughput_rps"] = h.count / window if window > 0 else 0.0
    s["errors"] = errors
    s["error_rate"] = errors / (h.count + errors) if (h.count + errors) else 0.0
    return s


def build_report(
    opts: RunOptions,
    rec: Recorder,
    targets: list[Target],
    users: int,
    k: int,
    duration: float,
    warmup: float,
    rps: float | None,
    start_at: float,
) -> dict[str, Any]:
    window = duration - warmup
    err_by_target: dict[str, int] = {}
    for (t, _), n in rec.errors.items():
        err_by_target[t] = err_by_target.get(t, 0) + n
    labels = sorted({t.label for t in targets} | set(rec.per_target) | set(err_by_target))
    total = LatencyHistogram.merged(rec.per_target.values())
    seconds = range(0, math.ceil(duration))
    series = []
    for s in seconds:
        h = rec.series.get(s, LatencyHistogram())
        row: dict[str, Any] = {"t": s, "rps": h.count, "errors": rec.series_errors.get(s, 0), "users": rec.users.get(s)}
        row.update({k2: h.summary()[k2] for k2 in ("avg_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms")})
        series.append(row)
    return {
        "scenario": opts.scenario.name,
        "description": opts.scenario.description,
        "protocol": opts.proto,
        "driver": opts.driver,
        "encoding": opts.encoding or opts.scenario.encoding,
        "target": opts.target,
        "shape": opts.scenario.shape.kind,
        "users": users,
        "processes": k,
        "target_rps": rps,
        "duration_s": duration,
        "warmup_s": warmup,
        "window_s": window,
        "started": datetime.fromtimestamp(start_at, tz=timezone.utc).isoformat(timespec="seconds"),
        "client": {
            "total": _summ(total, sum(rec.errors.values()), window),
            "per_target": {
                lb: _summ(rec.per_target.get(lb, LatencyHistogram()), err_by_target.get(lb, 0), window) for lb in labels
            },
            "errors": [{"target": t, "type": e, "count": n} for (t, e), n in rec.errors.most_common()],
        },
        "timeseries": series,
        "timeseries_per_target": {
            lb: [rec.series_per_target.get(lb, Counter()).get(s, 0) for s in seconds] for lb in labels
        },
        "targets": [
            {"label": t.label, "model": t.model, "weight": t.weight, "batch": t.batch, "target_model": t.target_model}
            for t in targets
        ],
    }


@contextmanager
def embedded_triton(repository: Path, models: list[str], workdir: Path) -> Iterator[TritonEndpoint]:
    """Start our embedded Triton over ``repository`` with ``models`` loaded; yields its endpoint."""
    from toolkit.server import EmbeddedTriton, ServerOptions, TritonAdmin

    server = EmbeddedTriton(ServerOptions(repository=repository, workdir=workdir, log_file=workdir / "triton.log"))
    server.start(timeout=120)
    try:
        admin = TritonAdmin(server.endpoint)
        for m in models:
            admin.load(m)
        admin.close()
        yield server.endpoint
    finally:
        server.stop()
