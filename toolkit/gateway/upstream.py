"""Keep-alive HTTP/1.1 connections to Triton on asyncio protocols, for the hot path.

History, measured on the 2-core machine (docs/benchmarks/gateway.md): aiohttp's ``ClientSession`` cost ~150-200 µs
of CPU per request (0.25x of direct Triton at c=8); a pool on asyncio streams cut that, but streams still cost a
task switch per read. Here a connection is a protocol whose httptools parser calls back when Triton's answer is
complete, so a warm request is forwarded with callbacks only (``send``); ``request`` wraps the same in a future for
code that awaits. One host, small fixed headers, Content-Length bodies: no generality is needed.

A connection that fails before any byte of the answer arrives (typically one Triton closed while idle, e.g. across
a restart) is retried once on a fresh connection; at the timeout the connection is aborted and ``on_error`` gets an
``asyncio.TimeoutError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import httptools

from toolkit.gateway.errors import StoppingError, UpstreamError

RawHeaders = list[tuple[bytes, bytes]]
OnDone = Callable[[int, RawHeaders, bytes], None]
OnError = Callable[[BaseException], None]


class _Conn(asyncio.Protocol):
    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reused = False  # has answered before: a failure with no byte back may be a stale idle connection
        self.job: _Job | None = None
        self._headers: RawHeaders = []
        self._body: list[bytes] = []

    # -- protocol ------------------------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        job, self.job = self.job, None
        if job is not None:
            job.lost(self, exc or UpstreamError("Triton closed the connection"))

    def data_received(self, data: bytes) -> None:
        job = self.job
        if job is not None:
            job.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.job = None
            self.abort()
            if job is not None:
                job.fail(UpstreamError(f"Triton sent a malformed answer: {exc}"))

    # -- httptools -----------------------------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._headers, self._body = [], []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        job, self.job = self.job, None
        status = self.parser.get_status_code()
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        if self.parser.should_keep_alive():
            self.pool.give_back(self)
        else:
            self.abort()
        if job is not None:
            job.done(status, self._headers, body)

    # -- use -----------------------------------------------------------------------------------------------------------
    def start(self, job: _Job) -> None:
        self.job, job.conn = job, self
        assert self.transport is not None
        self.transport.write(job.data)

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class _Job:
    """One request: its bytes, its callbacks (exactly one runs), its deadline, and whether it was retried."""

    __slots__ = ("conn", "data", "finished", "got_bytes", "on_done", "on_error", "pool", "retried", "timer")

    def __init__(self, pool: UpstreamPool, data: bytes, on_done: OnDone, on_error: OnError) -> None:
        self.pool, self.data, self.on_done, self.on_error = pool, data, on_done, on_error
        self.conn: _Conn | None = None
        self.finished = False
        self.got_bytes = False
        self.retried = False
        self.timer: asyncio.TimerHandle | None = None

    def _finish(self) -> bool:
        """True the first time only: the one place that ends a job (and its deadline)."""
        if self.finished:
            return False
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()
        return True

    def done(self, status: int, headers: RawHeaders, body: bytes) -> None:
        if self._finish():
            self.on_done(status, headers, body)

    def fail(self, exc: BaseException) -> None:
        if self._finish():
            self.on_error(exc)

    def lost(self, conn: _Conn, exc: BaseException) -> None:
        """The connection carrying this request died."""
        if self.finished:
            return
        if not self.got_bytes and not self.retried and conn.reused:
            self.retried = True
            self.pool.dispatch(self, fresh=True)
            return
        p = self.pool
        self.fail(
            exc
            if isinstance(exc, UpstreamError)
            else UpstreamError(f"connection to Triton at {p.host}:{p.port} failed: {exc!r}")
        )

    def expire(self) -> None:
        self.timer = None
        conn, self.conn = self.conn, None
        self.fail(asyncio.TimeoutError())
        if conn is not None and conn.job is self:
            conn.job = None
            conn.abort()


class UpstreamPool:
    def __init__(self, host: str, port: int, timeout: float, max_idle: int = 256) -> None:
        self.host, self.port, self.timeout, self.max_idle = host, port, timeout, max_idle
        self.host_header = f"Host: {host}:{port}\r\n".encode()
        self._idle: list[_Conn] = []
        self._all: set[_Conn] = set()
        self._opening: set[asyncio.Future[None]] = set()
        self._closed = False

    async def close(self) -> None:
        """Abort every connection. A job whose connection this kills is not retried (``dispatch`` refuses once
        closed), and connection attempts are cancelled and awaited, so none outlives the event loop."""
        self._closed = True
        for c in list(self._all):  # fail in-flight jobs now, not when the aborts are reported: answers go out first
            job, c.job = c.job, None
            if job is not None:
                job.fail(StoppingError())
        opening = list(self._opening)
        for t in opening:
            t.cancel()
        self.reset()
        if opening:
            await asyncio.gather(*opening, return_exceptions=True)

    def reset(self) -> None:
        """Abort every connection (a request on one fails, or is retried once if it may have met a stale socket);
        the pool stays usable and opens fresh connections on demand."""
        for c in list(self._all):
            c.abort()
        self._idle.clear()

    def forget(self, conn: _Conn) -> None:
        self._all.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)

    def give_back(self, conn: _Conn) -> None:
        conn.reused = True
        if not conn.closed and len(self._idle) < self.max_idle:
            self._idle.append(conn)
        else:
            conn.abort()

    def encode(self, method: str, path: str, body: bytes | None, headers: Mapping[str, str]) -> bytes:
        parts = [f"{method} {path} HTTP/1.1\r\n".encode("latin-1"), self.host_header]
        for k, v in headers.items():
            parts.append(f"{k}: {v}\r\n".encode("latin-1"))
        parts.append(b"Content-Length: %d\r\n\r\n" % (len(body) if body else 0))
        if body:
            parts.append(body)
        return b"".join(parts)

    def send(self, data: bytes, on_done: OnDone, on_error: OnError) -> None:
        """Send one encoded request; exactly one of the callbacks runs later, on this loop."""
        job = _Job(self, data, on_done, on_error)
        self.dispatch(job, fresh=False)  # the write first; no callback can run before this function returns
        if not job.finished:
            job.timer = asyncio.get_running_loop().call_later(self.timeout, job.expire)

    def dispatch(self, job: _Job, fresh: bool) -> None:
        if self._closed:
            job.fail(StoppingError())
            return
        while not fresh and self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                conn.start(job)
                return
        task = asyncio.ensure_future(self._open_and_start(job))
        self._opening.add(task)
        task.add_done_callback(self._opening.discard)

        def stopped(t: asyncio.Task[None]) -> None:
            if t.cancelled():  # the pool closed while connecting: the job learns why
                job.fail(StoppingError())

        task.add_done_callback(stopped)

    async def _open_and_start(self, job: _Job) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(lambda: _Conn(self), self.host, self.port)
        except OSError as exc:
            job.fail(UpstreamError(f"cannot connect to Triton at {self.host}:{self.port}: {exc}"))
            return
        self._all.add(conn)
        if job.finished:  # expired while connecting
            self.give_back(conn)
            return
        conn.start(job)

    async def request(
        self, method: str, path: str, body: bytes | None, headers: Mapping[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        """(status, lower-case headers, body). Raises UpstreamError or asyncio.TimeoutError."""
        fut: asyncio.Future[tuple[int, RawHeaders, bytes]] = asyncio.get_running_loop().create_future()

        def done(status: int, h: RawHeaders, b: bytes) -> None:
            if not fut.done():
                fut.set_result((status, h, b))

        def error(exc: BaseException) -> None:
            if not fut.done():
                fut.set_exception(exc)

        self.send(self.encode(method, path, body, headers), done, error)
        status, raw, data = await fut
        return status, {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw}, data
