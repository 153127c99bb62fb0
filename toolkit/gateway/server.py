"""The gateway process: one event loop running the HTTP, gRPC and admin front ends over one ``GatewayCore``.

``Gateway`` is used from async code (``await gw.start()`` / ``await gw.stop()``); ``GatewayThread`` runs one in a
background thread with its own loop, for tests, the benchmark, and the CLI (whose main thread waits for signals).
Supervisor state changes arrive from the supervisor's thread and are handed to the loop thread-safely.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from toolkit.errors import ServerError
from toolkit.gateway.core import GatewayCore, GatewayOptions
from toolkit.gateway.h1 import H1Server
from toolkit.gateway.h2_port import H2Front
from toolkit.gateway.http_dispatch import HttpDispatcher
from toolkit.gateway.http_front import HttpFront
from toolkit.gateway.models import ModelProvider, RepositoryModels
from toolkit.server.endpoint import TritonEndpoint
from toolkit.server.supervisor import Supervisor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GatewayAddresses:
    http: str
    grpc: str | None
    admin: str | None

    @property
    def http_url(self) -> str:
        return f"http://{self.http}"

    @property
    def admin_url(self) -> str | None:
        return f"http://{self.admin}" if self.admin else None


class Gateway:
    """The front door over one Triton. ``models`` is the manager it serves through, chosen by the caller
    (``toolkit.serving.build_models`` for ``tritonctl serve``): the gateway never decides which manager runs.
    Without one it uses the plain ``RepositoryModels`` (load on first use, never evict) over
    ``options.repository``, which is what a gateway in front of an already-populated Triton needs."""

    def __init__(
        self,
        options: GatewayOptions,
        triton: TritonEndpoint,
        models: ModelProvider | None = None,
        is_up: Callable[[], bool] | None = None,
    ) -> None:
        self.options = options
        self.models = models or RepositoryModels(triton, options.repository, load_timeout=options.timeout_s)
        self.core = GatewayCore(options, triton, self.models, is_up)
        self.http = HttpFront(self.core)
        self.grpc: H2Front | None = None
        self._servers: list[tuple[H1Server, HttpDispatcher]] = []
        self.addresses: GatewayAddresses | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._supervisor: Supervisor | None = None
        self._rewarm_task: asyncio.Future[None] | None = None

    async def _serve(self, admin: bool, port: int, host: str | None = None) -> int:
        d = HttpDispatcher(self.http, admin=admin)
        o = self.options
        server = H1Server(
            d.dispatch,
            d.reject,
            max_body=o.max_body_bytes,
            keepalive_s=o.keepalive_s,
            head_timeout_s=o.head_timeout_s,
            request_timeout_s=o.request_read_timeout_s,
            max_connections=o.max_connections,
            max_connections_per_client=o.max_connections_per_client,
        )
        self._servers.append((server, d))
        return await server.start(host or self.options.host, port)

    async def start(self) -> GatewayAddresses:
        self.loop = asyncio.get_running_loop()
        o = self.options
        await self.core.start()
        try:
            http_port = await self._serve(False, o.http_port)
            admin = None
            if o.admin_port is not None:  # model control: loopback only, whatever the public host is
                admin = f"127.0.0.1:{await self._serve(True, o.admin_port, '127.0.0.1')}"
            grpc_addr = None
            if o.grpc_port is not None:
                self.grpc = H2Front(self.core)
                bound = await self.grpc.start(o.host, o.grpc_port)
                if bound == 0:
                    raise ServerError(f"gateway gRPC port {o.grpc_port} on {o.host} could not be bound")
                grpc_addr = f"{o.host}:{bound}"
        except OSError as exc:
            await self.stop()
            raise ServerError(f"gateway cannot listen on {o.host}: {exc.strerror or exc}") from None
        self.addresses = GatewayAddresses(f"{o.host}:{http_port}", grpc_addr, admin)
        return self.addresses

    async def stop(self) -> None:
        """Graceful: stop accepting, answer what was received (up to ``drain_s``), then close whatever is left.

        Why: SIGTERM on a serving container (a deploy, a scale-in) must not cost the requests in flight. New
        connections are refused at once; idle keep-alive connections close; a busy one answers its last received
        request with ``Connection: close``; gRPC clients get GOAWAY. A handler still running at the deadline is
        cancelled and its client answered 503 (retryable) before the connection closes.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.drain_s
        for srv, _ in self._servers:
            srv.stop_accepting()
        if self.grpc is not None:
            self.grpc.stop_accepting()
        while self.pending() and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if self.grpc is not None:
            await self.grpc.stop()
        # What is still unanswered gets its 503 before the connections close: cancelled handlers answer as they
        # unwind, and closing the pool fails the hot path's calls at once (their callbacks answer).
        for _, dispatcher in self._servers:
            await dispatcher.cancel_all()
        if self.core.upstream is not None:
            await self.core.upstream.close()
        for srv, _ in self._servers:
            await srv.close()
        self._servers.clear()
        await self.core.close()

    def pending(self) -> int:
        """Requests received and not answered yet (any port), plus HTTP connections still open."""
        n = self.core.inflight + sum(d.pending + len(srv.connections) for srv, d in self._servers)
        if self.grpc is not None:
            n += self.grpc.pending
        return n

    def attach(self, supervisor: Supervisor) -> None:
        """Follow a supervisor: its state drives 503s and, after a restart, resync plus background re-warm."""
        self._supervisor = supervisor
        self.core.follow(lambda: supervisor.is_up)
        supervisor.on_state = self.triton_state_changed

    def triton_state_changed(self, state: str) -> None:
        """Supervisor callback (any thread): after a restart, the manager resyncs with the restarted Triton."""
        if self.loop is None or self.loop.is_closed():
            return
        if state == "down":  # before any request can see the restarted Triton, forget what the dead one held
            self.loop.call_soon_threadsafe(self.models.on_triton_down)
        elif state == "up":
            self.loop.call_soon_threadsafe(self._after_restart)

    def _after_restart(self) -> None:
        self.models.on_triton_restart()
        names = list(getattr(self._supervisor, "rewarm", None) or [])
        if names:
            self._rewarm_task = asyncio.ensure_future(self._rewarm(names))

    async def _rewarm(self, names: list[str]) -> None:
        await asyncio.sleep(0.05)  # let the manager's resync run first
        for name in names:
            try:
                await self.models.ensure_loaded(name, timeout=self.options.timeout_s)
            except Exception as exc:  # a model that no longer loads must not stop the others
                log.warning("re-warming %s after the restart failed: %s", name, exc)


class GatewayThread:
    """A ``Gateway`` on its own event loop in a daemon thread (uvloop when available)."""

    def __init__(self, gateway: Gateway, use_uvloop: bool = True) -> None:
        self.gateway = gateway
        self.use_uvloop = use_uvloop
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="tritonctl-gateway", daemon=True)

    def _new_loop(self) -> asyncio.AbstractEventLoop:
        if self.use_uvloop:
            try:
                import uvloop

                return uvloop.new_event_loop()
            except ImportError:
                pass
        return asyncio.new_event_loop()

    def _run(self) -> None:
        loop = self._new_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            await self.gateway.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.gateway.stop()

    def start(self, timeout: float = 30.0) -> GatewayAddresses:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise ServerError("gateway did not start in time")
        if self._error is not None:
            raise self._error
        assert self.gateway.addresses is not None
        return self.gateway.addresses

    def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully (see ``Gateway.stop``); wait up to ``timeout`` (default: the drain time + 10 s)."""
        loop, ev = self.gateway.loop, self._stop
        if loop is not None and ev is not None and not loop.is_closed():
            loop.call_soon_threadsafe(ev.set)
        self._thread.join(self.gateway.options.drain_s + 10.0 if timeout is None else timeout)
