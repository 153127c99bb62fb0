"""Keep an embedded Triton alive: restart it with backoff when it dies or stops answering, and reload what was loaded.

The supervisor records which models were READY (it polls the repository index while healthy and callers can tell it
about loads/unloads), so a crash costs a restart plus reloads, not a cold repository. Callers such as the gateway read
``is_up`` to answer 503 at once instead of hanging on a dead socket.

A process that exists is not a Triton that works: a stopped process (SIGSTOP), or one whose HTTP worker threads are
all blocked (measured: 8 repository loads that never finish wedge Triton's whole HTTP API while the process lives)
answers nothing, yet looks alive to ``poll()``. So the watcher also probes ``/v2/health/live`` on a fresh connection
with a short timeout (``probe_timeout``, every ``probe_interval``); after ``probe_failures`` consecutive failures the
server is killed and goes through the same restart path as a crash. A fresh connection per probe matters: Triton pins
each connection to one worker thread, so a reused connection could be stuck behind one blocked thread while the
others still serve.

Two reload modes: ``eager`` restarts Triton with every previously loaded model on its command line (Triton is ready
only once all are loaded: seconds with many models), ``lazy`` restarts it empty (ready in a fraction of a second) and
leaves ``rewarm`` -- the models resident before the crash -- for the caller (the gateway) to reload in the background
while requests load what they need on demand.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Literal

from toolkit.errors import ServerError, TritonctlError
from toolkit.server.client import TritonAdmin
from toolkit.server.endpoint import TritonEndpoint
from toolkit.server.launcher import EmbeddedTriton

log = logging.getLogger(__name__)


class Supervisor:
    """Watches an ``EmbeddedTriton``; restarts it on unexpected exit, on the same ports, with the same models."""

    def __init__(
        self,
        server: EmbeddedTriton,
        *,
        poll_interval: float = 0.2,
        index_interval: float = 2.0,
        backoff: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0),
        on_state: Callable[[str], None] | None = None,
        reload: Literal["eager", "lazy"] = "eager",
        probe_interval: float = 1.0,
        probe_timeout: float = 2.0,
        probe_failures: int = 3,
    ) -> None:
        """``probe_interval`` 0 turns the liveness probe off (the process is then only checked for existing)."""
        if probe_timeout <= 0 or probe_failures < 1 or probe_interval < 0:
            raise ServerError("probe_timeout must be > 0, probe_failures >= 1 and probe_interval >= 0")
        self.server = server
        self.poll_interval = poll_interval
        self.index_interval = index_interval
        self.backoff = backoff
        self.on_state = on_state
        self.reload = reload
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.probe_failures = probe_failures
        self.wedges = 0  # restarts of a server that lived but did not answer its liveness probe
        self.rewarm: list[str] = []  # lazy mode: what was resident before the last restart
        self.restarts = 0
        self.last_error: str | None = None
        self._loaded: set[str] = set()
        self._lock = threading.Lock()
        # Serialises starting and stopping the server: stop() must never slip between a restart's stop and its start
        # (the restarted process would outlive the supervisor, in its own session, out of Ctrl-C's reach).
        self._lifecycle = threading.Lock()
        self._stop = threading.Event()
        self._up = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> TritonEndpoint:
        return self.server.endpoint

    @property
    def is_up(self) -> bool:
        return self._up.is_set() and self.server.is_running()

    def wait_up(self, timeout: float) -> bool:
        return self._up.wait(timeout)

    def note_loaded(self, name: str) -> None:
        with self._lock:
            self._loaded.add(name)

    def note_unloaded(self, name: str) -> None:
        with self._lock:
            self._loaded.discard(name)

    def loaded_models(self) -> set[str]:
        with self._lock:
            return set(self._loaded)

    def start(self, timeout: float = 60.0) -> TritonEndpoint:
        endpoint = self.server.start(timeout)
        self._refresh_index()
        self._set_up(True)
        self._thread = threading.Thread(target=self._watch, name="triton-supervisor", daemon=True)
        self._thread.start()
        return endpoint

    def stop(self) -> None:
        self._stop.set()
        with self._lifecycle:  # a restart in progress finishes starting first; then its process is stopped here
            self._set_up(False)
            self.server.stop()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def _set_up(self, up: bool) -> None:
        if up == self._up.is_set():
            return
        (self._up.set if up else self._up.clear)()
        if self.on_state is not None:
            try:
                self.on_state("up" if up else "down")
            except Exception:
                log.exception("supervisor state listener failed")

    def _refresh_index(self) -> None:
        admin = TritonAdmin(self.server.endpoint, timeout=2.0)
        try:
            loaded = set(admin.loaded())
        except TritonctlError:
            return
        finally:
            admin.close()
        with self._lock:
            self._loaded = loaded

    def _live(self) -> bool:
        """One liveness probe on a fresh connection, bounded by ``probe_timeout``."""
        return TritonAdmin(self.server.endpoint, timeout=self.probe_timeout).live()

    def _watch(self) -> None:
        now = time.monotonic()
        next_index, next_probe, failed = now + self.index_interval, now + self.probe_interval, 0
        while not self._stop.is_set():
            if self.server.is_running():
                if self.probe_interval and time.monotonic() >= next_probe:
                    failed = 0 if self._live() else failed + 1
                    next_probe = time.monotonic() + self.probe_interval
                    if failed >= self.probe_failures and self.server.is_running() and not self._stop.is_set():
                        failed = 0
                        self._restart_wedged()
                        next_index = next_probe = time.monotonic() + self.probe_interval
                        continue
                if time.monotonic() >= next_index:
                    self._refresh_index()
                    next_index = time.monotonic() + self.index_interval
                self._stop.wait(self.poll_interval)
                continue
            self._set_up(False)
            code = self.server.process.returncode if self.server.process else None
            log.warning("tritonserver exited unexpectedly (code %s); restarting", code)
            self._restart()
            failed, next_probe = 0, time.monotonic() + self.probe_interval

    def _restart_wedged(self) -> None:
        """The process exists but has not answered ``probe_failures`` probes: kill it (SIGKILL: a wedged server
        would not act on SIGTERM within its exit timeout, a stopped one not at all) and restart it as a crash."""
        self._set_up(False)
        pid = self.server.process.pid if self.server.process else None
        log.warning(
            "tritonserver (pid %s) is running but did not answer %d liveness probes (%.1f s timeout); "
            "killing and restarting it",
            pid, self.probe_failures, self.probe_timeout,
        )  # fmt: skip
        self.wedges += 1
        self.server.kill()
        self._restart()

    def _restart(self) -> None:
        ports = self.server._ports
        if self.reload == "lazy":
            with self._lock:
                self.rewarm = sorted(self._loaded)
                self._loaded = set()
        for attempt, delay in enumerate(self._delays()):
            with self._lifecycle:
                if self._stop.is_set():
                    return
                self.server.stop(timeout=2)  # reap the dead group, kill orphan stubs
                o = self.server.options
                if ports is not None:
                    o.http_port, o.grpc_port, o.metrics_port = ports
                o.load = sorted(self.loaded_models())
                try:
                    self.server.start(timeout=60)
                    failure = None
                except ServerError as exc:
                    failure = exc
            if failure is not None:
                self.last_error = str(failure)
                log.warning("restart attempt %d failed: %s", attempt + 1, failure)
                self._stop.wait(delay)
                continue
            self.restarts += 1
            self.last_error = None
            if not self._stop.is_set():  # stop() ran right after this start: it has already stopped the server
                self._set_up(True)
            return

    def _delays(self) -> list[float]:
        return list(self.backoff) + [self.backoff[-1]] * 1000
