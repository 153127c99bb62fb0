"""A minimal keep-alive HTTP/1.1 connection pool to Triton, for the hot path.

aiohttp's client costs ~150-200 µs of CPU per request (measured: it made the gateway 0.25x of direct Triton at
c=8 on 2 cores); a request to Triton needs none of its generality: one host, small fixed headers, Content-Length
bodies. This pool writes the request in one call and reads the status line, headers and body with asyncio streams.
A connection that fails before any byte of the answer arrives (typically one Triton closed while idle, e.g. across
a restart) is retried once on a fresh connection; a timeout aborts the connection and raises ``asyncio.TimeoutError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

_MAX_HEAD = 64 * 1024


class UpstreamError(ConnectionError):
    """Triton closed or broke the connection, or sent something that is not HTTP/1.1."""


class _Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer


class UpstreamPool:
    def __init__(self, host: str, port: int, timeout: float, max_idle: int = 256) -> None:
        self.host, self.port, self.timeout, self.max_idle = host, port, timeout, max_idle
        self._host_header = f"Host: {host}:{port}\r\n".encode()
        self._idle: list[_Conn] = []

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for c in idle:
            c.writer.close()

    async def _open(self) -> _Conn:
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=_MAX_HEAD)
        return _Conn(reader, writer)

    async def request(
        self, method: str, path: str, body: bytes | None, headers: Mapping[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        """(status, lower-case headers, body). Raises UpstreamError, OSError or asyncio.TimeoutError."""
        parts = [f"{method} {path} HTTP/1.1\r\n".encode(), self._host_header]
        for k, v in headers.items():
            parts.append(f"{k}: {v}\r\n".encode("latin-1"))
        parts.append(f"Content-Length: {len(body) if body else 0}\r\n\r\n".encode())
        if body:
            parts.append(body)
        data = b"".join(parts)
        loop = asyncio.get_running_loop()
        for attempt in (0, 1):
            reused = bool(self._idle)
            conn = self._idle.pop() if reused else await asyncio.wait_for(self._open(), self.timeout)
            timed_out = False

            def _expire(c: _Conn = conn) -> None:
                nonlocal timed_out
                timed_out = True
                c.writer.transport.abort()

            timer = loop.call_later(self.timeout, _expire)
            got_bytes = False
            try:
                conn.writer.write(data)
                head = await conn.reader.readuntil(b"\r\n\r\n")
                got_bytes = True
                status, hdrs, keep = _parse_head(head)
                if "content-length" in hdrs:
                    payload = await conn.reader.readexactly(int(hdrs["content-length"]))
                elif hdrs.get("transfer-encoding", "").lower() == "chunked":
                    payload = await _read_chunked(conn.reader)
                else:
                    payload, keep = await conn.reader.read(), False
            except (
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
                ConnectionError,
                OSError,
                ValueError,
            ) as exc:
                conn.writer.transport.abort()
                if timed_out:
                    raise asyncio.TimeoutError() from None
                if reused and not got_bytes and attempt == 0:
                    continue  # a stale idle connection: once more on a fresh one
                raise UpstreamError(f"connection to Triton at {self.host}:{self.port} failed: {exc!r}") from None
            finally:
                timer.cancel()
            if keep and len(self._idle) < self.max_idle:
                self._idle.append(conn)
            else:
                conn.writer.close()
            return status, hdrs, payload
        raise AssertionError("unreachable")


def _parse_head(head: bytes) -> tuple[int, dict[str, str], bool]:
    lines = head.decode("latin-1").split("\r\n")
    proto, _, rest = lines[0].partition(" ")
    if not proto.startswith("HTTP/1."):
        raise ValueError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    status = int(rest[:3])
    hdrs: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
    keep = hdrs.get("connection", "").lower() != "close" and proto == "HTTP/1.1"
    return status, hdrs, keep


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return bytes(out)
        out += await reader.readexactly(size)
        await reader.readexactly(2)
