"""The gRPC load generator without Locust: closed-loop (or paced) users multiplexed on one raw HTTP/2 connection.

One thread, one socket: each loop turn reads what arrived, records the finished calls, and sends every user's next
call in one write. This is perf_analyzer's closed loop (``--concurrency-range N``: N calls always in flight) at a
client cost of tens of µs per call instead of grpcio's hundreds (see ``h2wire``). Users start at the spawn rate;
with a rate, each user waits so that its calls start at least ``users / rate`` seconds apart (Locust's
``constant_throughput``, which the other users get). Shapes that change the user count (step, ramp) stay with the
Locust gRPC user.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from toolkit.loadtest.h2wire import Call, Connection, H2Error, prepare_call
from toolkit.loadtest.payload import grpc_request, make_arrays
from toolkit.loadtest.recorder import Recorder
from toolkit.loadtest.scenario import Target, TargetMix

RETRY_S = 0.1  # after a failed connection, before the users try again
MAX_LANES = 16  # threads (and connections) per worker process


class H2Users:
    """One lane: some of the process's users (``user_ids``) on one connection, driven by one thread until
    ``stop_at``."""

    def __init__(self, cfg: dict[str, Any], rec: Recorder, user_ids: list[int]) -> None:
        self.targets = [Target.model_validate(t) for t in cfg["targets"]]
        self.mix = TargetMix([t.weight for t in self.targets])
        self.user_ids = user_ids
        users = int(cfg["users"])
        self.spawn_rate = float(cfg["spawn_rate"])
        rps = cfg.get("rps")
        self.interval = users / float(rps) if rps and users else 0.0  # per user, between call starts
        self.timeout = float(cfg.get("timeout", 60.0))
        host, _, port = str(cfg["host"]).split("://", 1)[-1].rstrip("/").rpartition(":")
        self.addr = (host.strip("[]") or "127.0.0.1", int(port))
        rng = np.random.default_rng(os.getpid())
        self.calls: list[Call] = [
            prepare_call(f"{host}:{port}", grpc_request(t, make_arrays(t, rng)).SerializeToString())
            for t in self.targets
        ]
        self.rec = rec
        self.conn: Connection | None = None
        self.due: list[tuple[float, int]] = []  # (perf_counter time, user) of calls to start

    def run(self, start_at: float, stop_at: float) -> None:
        """Drive the users from epoch ``start_at`` to ``stop_at`` (user i starts at ``i / spawn_rate``)."""
        offset = time.time() - time.perf_counter()  # epoch = perf + offset, for the recorder's start times
        p_start, p_stop = start_at - offset, stop_at - offset
        self.due = [(p_start + i / self.spawn_rate, i) for i in self.user_ids]
        heapq.heapify(self.due)
        next_tick = p_start
        while True:
            now = time.perf_counter()
            if now >= p_stop:
                break
            if now >= next_tick:
                self._expire(now, offset)
                next_tick += 1.0
            self._send_due(now, offset)
            wait = min(next_tick, p_stop, self.due[0][0] if self.due else p_stop) - time.perf_counter()
            if self.conn is None:  # between connection attempts
                time.sleep(min(max(wait, 0.0), 0.05))
                continue
            self._receive(max(wait, 0.0005), offset)  # also with nothing in flight: WINDOW_UPDATE, PING, GOAWAY
        if self.conn is not None:
            self.conn.close()

    def _send_due(self, now: float, offset: float) -> None:
        batch: list[bytes] = []
        while self.due and self.due[0][0] <= now:
            _, user = self.due[0]
            target = self.mix.pick()
            try:
                conn = self._connection()
                data = conn.start(self.calls[target], user, target, time.perf_counter())
            except (OSError, H2Error) as exc:
                self._fail_all(exc, offset)
                heapq.heapreplace(self.due, (now + RETRY_S, user))
                self.rec.add(self.targets[target].label, 0.0, now + offset, _describe(exc))
                continue
            if data is None:  # the server's connection window is short: wait for its WINDOW_UPDATE
                break
            heapq.heappop(self.due)
            batch.append(data)
        if batch:
            self._write(batch, offset)

    def connect(self) -> None:
        """Open the connection before the start (as perf_analyzer does); a failure is retried, and counted, in
        ``run``."""
        with contextlib.suppress(OSError):
            self._connection()

    def _connection(self) -> Connection:
        if self.conn is None:
            self.conn = Connection.open(self.addr[0], self.addr[1], min(self.timeout, 10.0))
        return self.conn

    def _write(self, batch: list[bytes], offset: float) -> None:
        conn = self.conn
        assert conn is not None
        try:
            conn.sock.sendall(conn.control() + b"".join(batch))
        except OSError as exc:
            self._fail_all(exc, offset)

    def _receive(self, wait: float, offset: float) -> None:
        conn = self.conn
        assert conn is not None
        conn.sock.settimeout(wait)
        try:
            data = conn.sock.recv(1 << 18)
            if not data:
                raise H2Error("the server closed the connection")
            end = time.perf_counter()
            finished = conn.feed(data)
        except TimeoutError:
            return
        except (OSError, H2Error) as exc:
            self._fail_all(exc, offset)
            return
        add, labels = self.rec.add, [t.label for t in self.targets]
        batch: list[bytes] = []
        for s, error in finished:
            add(labels[s.target], (end - s.t0) * 1000.0, s.t0 + offset, error)
            if self.interval and s.t0 + self.interval > end:
                heapq.heappush(self.due, (s.t0 + self.interval, s.user))
                continue
            target = self.mix.pick()
            call = conn.start(self.calls[target], s.user, target, time.perf_counter())
            if call is None:
                heapq.heappush(self.due, (end, s.user))
            else:
                batch.append(call)
        ctl = conn.control()
        if batch or ctl:
            self._write([ctl, *batch], offset)

    def _expire(self, now: float, offset: float) -> None:
        """Calls older than the scenario's timeout: cancelled (RST_STREAM) and counted as DEADLINE_EXCEEDED."""
        if self.conn is None:
            return
        for sid, s in list(self.conn.streams.items()):
            if now - s.t0 > self.timeout:
                self.conn.cancel(sid)
                self.rec.add(self.targets[s.target].label, (now - s.t0) * 1000.0, s.t0 + offset,
                             f"gRPC DEADLINE_EXCEEDED: no answer in {self.timeout:g} s")  # fmt: skip
                heapq.heappush(self.due, (now, s.user))

    def _fail_all(self, exc: BaseException, offset: float) -> None:
        """The connection is gone: its calls fail with this error, their users retry on a new one shortly."""
        conn, self.conn = self.conn, None
        if conn is None:
            return
        conn.close()
        now = time.perf_counter()
        for s in conn.streams.values():
            self.rec.add(self.targets[s.target].label, (now - s.t0) * 1000.0, s.t0 + offset, _describe(exc))
            heapq.heappush(self.due, (now + RETRY_S, s.user))


class H2Process:
    """All lanes of one worker process: one thread and one connection per lane (up to ``MAX_LANES``), the users
    dealt round-robin.

    Why several lanes and not one loop for all users: on a machine whose CPUs are all busy (Triton beside the client
    on 2 cores), one thread holding every call in flight stalls them all whenever it is not scheduled, which showed
    as a heavy latency tail and 0.75x perf_analyzer's throughput at equal p50; perf_analyzer runs one thread per
    concurrent request, and so do the lanes (the calls of a lane still share its writes).
    """

    def __init__(self, cfg: dict[str, Any], warmup: float) -> None:
        self.users = int(cfg["users"])
        self.spawn_rate = float(cfg["spawn_rate"])
        k = max(1, min(self.users, MAX_LANES))
        self.recs = [Recorder(warmup=warmup) for _ in range(k)]
        self.lanes = [H2Users(cfg, self.recs[j], list(range(j, self.users, k))) for j in range(k)]

    def connect(self) -> None:
        for lane in self.lanes:
            lane.connect()

    def run(self, start_at: float, stop_at: float, on_second: Callable[[int, int, int], None]) -> list[Recorder]:
        """Run the lanes; ``on_second(ok, errors, users started)`` once a second; returns the lanes' recorders."""
        for rec in self.recs:
            rec.t0, rec.duration = start_at, stop_at - start_at
        threads = [threading.Thread(target=lane.run, args=(start_at, stop_at), daemon=True) for lane in self.lanes]
        for t in threads:
            t.start()
        next_tick = start_at
        while any(t.is_alive() for t in threads):
            now = time.time()
            if now >= next_tick:
                started = sum(1 for i in range(self.users) if start_at + i / self.spawn_rate <= now)
                on_second(*self._counts(), started)
                next_tick += 1.0
            time.sleep(max(0.0, min(next_tick - time.time(), 0.05)))
        return self.recs

    def _counts(self) -> tuple[int, int]:
        """Successes and errors so far, read while the lanes append (a lane's first sample of a target may resize
        its dict under us: then this second's count is skipped)."""
        try:
            return sum(r.ok_count() for r in self.recs), sum(sum(r.series_errors.values()) for r in self.recs)
        except RuntimeError:
            return -1, -1


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or "connection failed"
    return f"{type(exc).__name__}: {text}"[:160]
