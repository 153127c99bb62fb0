"""The gateway's gRPC port: a plain TCP server whose connections are ``h2_front.H2Connection`` frame forwarders.

It owns what is per port rather than per connection: the connection caps (in total and per client address: each
client connection also holds one to Triton), the sweep that closes idle connections and ones that never send the
HTTP/2 preface, and the graceful drain (GOAWAY, then close).
"""

from __future__ import annotations

import asyncio
import contextlib

from toolkit.gateway import h2_frames as f
from toolkit.gateway.core import GatewayCore
from toolkit.gateway.h2_front import H2Connection


class H2Front:
    """The gRPC port: a plain TCP server whose connections are ``H2Connection`` frame forwarders."""

    def __init__(self, core: GatewayCore) -> None:
        self.core = core
        host, _, port = core.triton.grpc.rpartition(":")
        self.upstream = (host, int(port))
        self.server: asyncio.base_events.Server | None = None
        self.conns: set[H2Connection] = set()
        self.per_client: dict[str, int] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self.loop_time = asyncio.get_running_loop().time  # built inside the gateway's loop (Gateway.start)

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: H2Connection(self), host, port)
        self._sweeper = loop.create_task(self._sweep())
        return int(self.server.sockets[0].getsockname()[1])

    # -- connection caps and idle connections (each client connection holds one to Triton) -----------------------
    def admit_connection(self, c: H2Connection) -> str | None:
        """None to accept ``c``; else why it is refused (over the total or the per-client cap)."""
        o = self.core.options
        if len(self.conns) >= o.max_connections:
            return f"{len(self.conns)} connections open (limit {o.max_connections})"
        if self.per_client.get(c.peer, 0) >= o.max_connections_per_client:
            return f"{self.per_client[c.peer]} connections from this client (limit {o.max_connections_per_client})"
        self.conns.add(c)
        self.per_client[c.peer] = self.per_client.get(c.peer, 0) + 1
        return None

    def forget(self, c: H2Connection) -> None:
        if c in self.conns:
            self.conns.discard(c)
            left = self.per_client.get(c.peer, 1) - 1
            if left:
                self.per_client[c.peer] = left
            else:
                self.per_client.pop(c.peer, None)

    async def _sweep(self) -> None:
        """Every second: close connections idle (no call open) past ``grpc_idle_s``, or still without the HTTP/2
        preface after ``HEAD_TIMEOUT_S``; each holds a connection to Triton."""
        o = self.core.options
        while True:
            await asyncio.sleep(1.0)
            now = self.loop_time()
            for c in list(self.conns):
                if c.closed or c.down.t is None:
                    continue
                if c.preface and now - c.opened > o.grpc_head_timeout_s:
                    c.down.t.close()
                elif not c.streams and not c.tasks and now - c.last_active > o.grpc_idle_s:
                    c.down.inject(f.goaway(min(c.last_sid, c.goaway_sid)))
                    c.down.t.close()

    def stop_accepting(self) -> None:
        """Drain, step one: no new connections; GOAWAY tells each client to open no more streams on its connection."""
        if self.server is not None:
            self.server.close()
        for c in list(self.conns):
            if not c.closed and c.dead is None:
                c.down.inject(f.goaway(min(c.last_sid, c.goaway_sid)))

    @property
    def pending(self) -> int:
        """Calls not answered yet (streams Triton has not ended) and tasks still running, over all connections."""
        return sum(len(c.streams) + len(c.tasks) for c in self.conns)

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.server is not None:
            self.server.close()
        tasks = [t for c in self.conns for t in c.tasks]
        for c in list(self.conns):
            if c.down.t is not None:
                with contextlib.suppress(Exception):
                    c.down.t.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2.0)
