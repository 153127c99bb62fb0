"""The floor for any Python proxy: a byte pipe on uvloop protocols, for the gateway benchmark only.

Each client connection gets its own upstream connection and bytes are copied both ways without being parsed: no
HTTP, no routing, no auth, no limits. Whatever a real gateway costs beyond this pipe is its own work; what the pipe
costs is the price of one more process and two more loopback hops on this machine. Not for serving anything.
"""

from __future__ import annotations

import asyncio
from multiprocessing.connection import Connection


class _Up(asyncio.Protocol):
    def __init__(self, down: _Down) -> None:
        self.down = down

    def data_received(self, data: bytes) -> None:
        if self.down.transport is not None:
            self.down.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.down.transport is not None:
            self.down.transport.close()


class _Down(asyncio.Protocol):
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None
        self.up: asyncio.Transport | None = None
        self.pending: list[bytes] = []
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.task = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        up, _ = await asyncio.get_running_loop().create_connection(lambda: _Up(self), *self.upstream)
        self.up = up  # type: ignore[assignment]
        for d in self.pending:
            up.write(d)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        if self.up is None:
            self.pending.append(data)
        else:
            self.up.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.up is not None:
            self.up.close()


async def start_pipe(upstream: str) -> tuple[asyncio.Server, str]:
    """The pipe to ``host:port`` listening on a free loopback port: (server, its address)."""
    host, _, port = upstream.rpartition(":")
    server = await asyncio.get_running_loop().create_server(lambda: _Down((host, int(port))), "127.0.0.1", 0)
    return server, f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


def pipe_process(upstream: str, conn: Connection) -> None:
    """Run the pipe to ``host:port`` on a free loopback port; send its address, stop on any message."""
    import uvloop

    async def main() -> None:
        server, addr = await start_pipe(upstream)
        conn.send(addr)
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        server.close()

    uvloop.run(main())
