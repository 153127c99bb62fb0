"""Keep an embedded Triton alive: restart it with backoff when it dies and reload what was loaded.

The supervisor records which models were READY (it polls the repository index while healthy and callers can tell it
about loads/unloads), so a crash costs a restart plus reloads, not a cold repository. Callers such as the gateway read
``is_up`` to answer 503 at once instead of hanging on a dead socket.

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
    ) -> None:
        self.server = server
        self.poll_interval = poll_interval
        self.index_interval = index_interval
        self.backoff = backoff
        self.on_state = on_state
        self.reload = reload
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

    def _watch(self) -> None:
        next_index = time.monotonic() + self.index_interval
        while not self._stop.is_set():
            if self.server.is_running():
                if time.monotonic() >= next_index:
                    self._refresh_index()
                    next_index = time.monotonic() + self.index_interval
                self._stop.wait(self.poll_interval)
                continue
            self._set_up(False)
            code = self.server.process.returncode if self.server.process else None
            log.warning("tritonserver exited unexpectedly (code %s); restarting", code)
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
