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


def run_worker(cfg: dict[str, Any], result_path: Path) -> None:
    import grpc.experimental.gevent as grpc_gevent

    grpc_gevent.init_gevent()  # before any channel exists, or gRPC blocks the gevent hub

    import gevent
    from locust.env import Environment

    from toolkit.loadtest.recorder import Recorder
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

    # handshake: say we are ready (imports done), then wait for the common start time on stdin
    print(json.dumps({"ready": True}), flush=True)
    line = sys.stdin.readline()
    if not line.strip():
        return  # the orchestrator gave up
    start_at = float(line)
    rec.t0 = start_at
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
            done = rec.ok_count()
            rec.users[max(0, int(time.time() - start_at))] = runner.user_count
            errs = sum(rec.series_errors.values())
            print(json.dumps({"t": time.time(), "ok": done, "errors": errs, "users": runner.user_count}), flush=True)
            gevent.sleep(1.0)

    ticker = gevent.spawn(progress)
    while time.time() < stop_at and (shape is None or runner.state not in ("stopped", "quitting")):
        gevent.sleep(min(0.1, max(0.0, stop_at - time.time())))
    # Results first: what finished inside the window is final. Then stop the users; a gRPC call killed mid-flight
    # under gevent can make channel teardown hang, so the stop is bounded and the process exits hard.
    result_path.write_text(json.dumps(rec.to_dict()))
    rec.closed = True
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
