"""One load-generating process: ``python -m toolkit.loadtest.worker CONFIG.json RESULT.json``.

It runs Locust in-process through its Environment API (headless, no web UI). A ready/go handshake over stdout/stdin
gives all workers one common start time; then it prints one JSON progress line per second for the orchestrator's
live display, and finally writes its Recorder (histograms, errors, time series) to RESULT.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from toolkit.loadtest.cpu import CpuMeter
from toolkit.loadtest.recorder import Recorder


def _wait_for_go() -> float | None:
    """Say we are ready (imports done), then wait for the common start time (epoch seconds) on stdin."""
    print(json.dumps({"ready": True}), flush=True)
    line = sys.stdin.readline()
    return float(line) if line.strip() else None  # empty: the orchestrator gave up


def _progress(rec: Recorder, cpu: CpuMeter, start_at: float, users: int) -> None:
    """One JSON progress line (the orchestrator's live display); also where the CPU window opens after warm-up."""
    now = time.time()
    rec.users[max(0, int(now - start_at))] = users
    if now >= start_at + rec.warmup:
        cpu.open()
    errs = sum(rec.series_errors.values())
    print(json.dumps({"t": now, "ok": rec.ok_count(), "errors": errs, "users": users}), flush=True)


def _finish(rec: Recorder, cpu: CpuMeter, result_path: Path) -> None:
    """Results first: what finished inside the window is final (later completions are ignored)."""
    rec.cpu = [cpu.close()]
    result_path.write_text(json.dumps(rec.to_dict()))
    rec.closed = True


def run_h2_worker(cfg: dict[str, Any], result_path: Path) -> None:
    """gRPC closed loop on raw HTTP/2 connections (no Locust, no gevent): see ``toolkit.loadtest.h2driver``."""
    from toolkit.loadtest.h2driver import H2Process

    warmup = float(cfg.get("warmup", 0.0))
    proc = H2Process(cfg, warmup)
    cpu = CpuMeter()
    start_at = _wait_for_go()
    if start_at is None:
        return
    proc.connect()
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    rec = Recorder(t0=start_at, warmup=warmup)
    rec.duration = float(cfg["duration"])

    def second(ok: int, errors: int, users: int) -> None:
        now = time.time()
        rec.users[max(0, int(now - start_at))] = users
        if now >= start_at + warmup:
            cpu.open()
        if ok >= 0:
            print(json.dumps({"t": now, "ok": ok, "errors": errors, "users": users}), flush=True)

    lanes = proc.run(start_at, start_at + rec.duration, second)
    share = cpu.close()
    for lane in lanes:
        rec.merge_dict(lane.to_dict())
    rec.cpu = [share]
    result_path.write_text(json.dumps(rec.to_dict()))
    sys.stdout.flush()


def run_worker(cfg: dict[str, Any], result_path: Path) -> None:
    if cfg.get("driver") == "h2":
        run_h2_worker(cfg, result_path)
        return
    import grpc.experimental.gevent as grpc_gevent

    grpc_gevent.init_gevent()  # before any channel exists, or gRPC blocks the gevent hub

    import gevent
    from locust.env import Environment

    from toolkit.loadtest.scenario import Shape, Target
    from toolkit.loadtest.users import configure, make_shape

    targets = [Target.model_validate(t) for t in cfg["targets"]]
    users = int(cfg["users"])
    rps = cfg.get("rps")
    user_cls = configure(
        cfg["protocol"],
        targets,
        cfg["binary"],
        cfg.get("endpoint") or "",
        (float(rps) / users) if rps and users else None,
        float(cfg.get("timeout", 60.0)),
    )
    shape = make_shape(
        Shape.model_validate(cfg["shape"]),
        int(cfg["shape_users"]),
        float(cfg["spawn_rate"]),
        float(cfg["duration"]),
        float(cfg["share"]),
    )
    rec = Recorder(t0=0.0, warmup=float(cfg.get("warmup", 0.0)))
    rec.cold_threshold_ms = cfg.get("cold_threshold_ms")
    env = Environment(user_classes=[user_cls], host=cfg["host"], shape_class=shape)
    user_cls.recorder = rec  # type: ignore[attr-defined]  # users report straight to it (no event dispatch)
    runner = env.create_local_runner()

    cpu = CpuMeter()
    start_at = _wait_for_go()
    if start_at is None:
        return
    rec.t0, rec.duration = start_at, float(cfg["duration"])
    delay = start_at - time.time()
    if delay > 0:
        gevent.sleep(delay)
    if shape is not None:
        runner.start_shape()
    elif users > 0:
        runner.start(users, spawn_rate=float(cfg["spawn_rate"]))
    stop_at = start_at + float(cfg["duration"])

    def progress() -> None:
        while True:
            _progress(rec, cpu, start_at, runner.user_count)
            gevent.sleep(1.0)

    ticker = gevent.spawn(progress)
    while time.time() < stop_at and (shape is None or runner.state not in ("stopped", "quitting")):
        gevent.sleep(min(0.1, max(0.0, stop_at - time.time())))
    # Results first, then stop the users; a gRPC call killed mid-flight under gevent can make channel teardown
    # hang, so the stop is bounded and the process exits hard.
    _finish(rec, cpu, result_path)
    ticker.kill()
    with gevent.Timeout(3.0, False):  # type: ignore[arg-type]  # False: gevent's silent timeout (not in the stub)
        runner.quit()
    sys.stdout.flush()
    os._exit(0)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m toolkit.loadtest.worker CONFIG.json RESULT.json", file=sys.stderr)
        return 2
    run_worker(json.loads(Path(argv[0]).read_text()), Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
