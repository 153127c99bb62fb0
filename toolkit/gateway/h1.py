"""A small HTTP/1.1 server on asyncio protocols with the httptools parser: the gateway's listening side.

Why not aiohttp's server: on the 2-core machine its request and response machinery cost ~100 µs of CPU per request,
more than Triton spends on a small model, and the gateway ran at 0.56x of direct Triton at c=8. A byte-level proxy
on uvloop protocols reached ~0.9x in the same run (docs/benchmarks/gateway.md), so the gateway keeps that shape:
httptools (C) parses, one callback hands the whole request to the dispatcher, the answer goes out in one write. The
dispatcher decides per request whether to answer with callbacks only (a warm KServe infer) or from a task.

What the connection layer enforces itself, before any handler runs: a head size limit (431), the body limit from
Content-Length or while a chunked body arrives (413), malformed HTTP (400), HTTP versions other than 1.0 and 1.1
(505), connection caps in all and per client address (503, ``h1_limits``), idle keep-alive, and total deadlines
for a request's head and for the whole request from its first byte (408), so a client trickling one byte at a
time cannot hold a connection. Deadlines are checked by a sweep every second, never by a timer per request. A
refusal is answered in order after the requests received before it, then our side is half-closed and the client's
remaining bytes are read and dropped for a bounded time (a lingering close: the client reads the answer instead of
a reset). Pipelined requests are answered in order, one at a time per connection; reading pauses while 16 wait
behind the one being answered, and while the transport's write buffer is above its high-water mark (a client that
sends and never reads costs the gateway a bounded number of bytes, not every answer it never reads).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterable

import httptools

from toolkit.gateway.h1_limits import (
    EXCESS,
    EXCESS_GRACE_S,
    LINGER_S,
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_CLIENT,
    REFUSED,
    REQUEST_TIMEOUT_S,
    ConnectionLimits,
)
from toolkit.gateway.h1_messages import Request, Response, encode_headers, encode_response

__all__ = ["H1Connection", "H1Server", "Request", "Response", "encode_headers", "encode_response"]

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024
MAX_PIPELINED = 16  # requests queued behind the one being answered before reading pauses
FEED_SLICE = 8192  # a read larger than this is parsed a slice at a time (a request this small is parsed at once)
MAX_FIELD_BYTES = 8190  # one header line or the request line, as aiohttp and most servers limit them
KEEPALIVE_S = 75.0
HEAD_TIMEOUT_S = 30.0


# dispatch(conn, request): must answer through conn.send / conn.send_response, at once or later (from a task).
Dispatch = Callable[["H1Connection", Request], None]
# reject(path, status, message): the shaped error for a request refused by the connection layer (413, 431, 400).
Reject = Callable[[str, int, str], Response]


class H1Server:
    """Listens, owns its connections, sweeps idle and overdue ones; ``start`` returns the bound port.

    Limits (``h1_limits`` says why each exists): ``head_timeout_s`` for a request's head and ``request_timeout_s``
    for the whole request, both from its first byte; ``keepalive_s`` idle between requests; ``max_connections`` in
    all and ``max_connections_per_client`` per peer address (0: no cap); ``linger_s`` to drop a refused client's
    remaining bytes.
    """

    def __init__(
        self,
        dispatch: Dispatch,
        reject: Reject,
        *,
        max_body: int,
        max_head: int = MAX_HEAD_BYTES,
        keepalive_s: float = KEEPALIVE_S,
        head_timeout_s: float = HEAD_TIMEOUT_S,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
        max_connections_per_client: int = MAX_CONNECTIONS_PER_CLIENT,
        linger_s: float = LINGER_S,
    ) -> None:
        self.dispatch, self.reject = dispatch, reject
        self.max_body, self.max_head = max_body, max_head
        self.keepalive_s, self.head_timeout_s, self.request_timeout_s = keepalive_s, head_timeout_s, request_timeout_s
        self.linger_s, self.linger_bytes = linger_s, max_body + max_head  # about one more request's worth
        self.limits = ConnectionLimits(max_connections, max_connections_per_client)
        self.connections: set[H1Connection] = set()
        self.draining = False
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: H1Connection(self), host, port, backlog=1024, reuse_address=True
        )
        self._sweeper = loop.create_task(self._sweep())
        return int(self._server.sockets[0].getsockname()[1])

    def stop_accepting(self) -> None:
        """Drain, step one: no new connections; idle ones close now, a busy one after its last received request."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        for c in list(self.connections):
            if c.busy or c._pending:
                if not c._pending:  # with pipelined requests behind it, the last of them closes the connection
                    c.keep_alive = False
            elif not c.partial:
                c.close()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
            for c in list(self.connections):
                c.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            self.sweep(loop.time())

    def sweep(self, now: float) -> None:
        """Close what overstayed: a lingering close at its end, an over-cap connection without a head, an idle
        keep-alive connection; answer 408 to a request whose head or whole has taken too long since its first byte
        (a deadline, not an idle timer: bytes that trickle in do not extend it)."""
        for c in list(self.connections):
            if c.linger_until:
                if now > c.linger_until:
                    c.close()
            elif c.busy:
                continue
            elif c._excess is not None:
                if now - c.last_active > EXCESS_GRACE_S:
                    c.close()
            elif c.partial:
                limit = self.head_timeout_s if c._in_head else self.request_timeout_s
                if now - c.started > limit:
                    what = "head" if c._in_head else "request"
                    c._refuse(408, f"The request's {what} did not arrive within {limit:g} s of its first byte.")
            elif now - c.last_active > self.keepalive_s:
                c.close()


class H1Connection(asyncio.Protocol):
    """One client connection. Not thread-safe: everything runs on the server's event loop."""

    # Slots: per-request attribute access is faster (an instance dict is slower past 30 keys), the object smaller.
    # fmt: off
    __slots__ = (
        "_admitted", "_body", "_body_bytes", "_client", "_dropped", "_eof", "_excess", "_head", "_head_bytes",
        "_headers", "_hmap", "_in_head", "_keep", "_paused", "_pending", "_refused", "_unparsed", "_url",
        "_write_paused", "busy", "closing", "keep_alive", "last_active", "linger_until", "loop", "parser", "partial",
        "server", "started", "transport",
    )
    # fmt: on

    def __init__(self, server: H1Server) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.busy = False  # a request is being answered
        self.partial = False  # a request has begun arriving and is not complete yet
        self.closing = False
        self.last_active = 0.0  # when the connection last went idle (opened, answered): the keep-alive clock
        self.started = 0.0  # when the partial request's first byte arrived: its deadlines' clock
        self.linger_until = 0.0  # lingering close after a refusal: until then the client's bytes are dropped
        self.keep_alive = True
        # requests received while one is answered (or while writing is paused); a Response is a queued refusal
        self._pending: deque[tuple[Request | Response, bool]] = deque()
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._hmap: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._in_head = True
        self._head_bytes = 0
        self._body_bytes = 0
        self._keep = True
        self._refused = False  # refused or closing: nothing more is parsed, later bytes are dropped
        self._dropped = 0
        self._unparsed = b""  # bytes read before reading paused, parsed when it resumes
        self._paused = False  # reading paused by us
        self._write_paused = False  # the transport's write buffer is above its high-water mark
        self._eof = False
        self._head = False
        self._client = ""
        self._admitted = REFUSED
        self._excess: str | None = None  # over a connection cap: why, for the 503

    # -- asyncio.Protocol ----------------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.last_active = self.loop.time()
        peer = transport.get_extra_info("peername")
        self._client = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        limits = self.server.limits
        self._admitted = limits.admit(self._client)
        if self._admitted == REFUSED:  # over a cap with too many over-cap connections waiting already
            self.closing = self._refused = True
            transport.close()
            return
        if self._admitted == EXCESS:  # its own parser: the hot path's callbacks need no check for it
            self._excess = limits.reason(self._client)
            self.parser = httptools.HttpRequestParser(_OverCap(self))
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = self._refused = True
        if self._admitted != REFUSED:
            self.server.limits.release(self._client, self._admitted)
            self._admitted = REFUSED
        self.server.connections.discard(self)

    def eof_received(self) -> bool:
        """A client that half-closes after its requests still gets the answers; then the connection closes."""
        self._eof = True
        more = bool(self._pending or self._unparsed)
        if not more:  # else the last pipelined request's answer closes it
            self.keep_alive = False
        return (self.busy or more) and not self.linger_until  # True: keep the transport open

    def pause_writing(self) -> None:
        """The client is not reading fast enough: stop reading its requests until what we wrote drains."""
        self._write_paused = True
        self._pause()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.closing:
            return
        self.last_active = self.loop.time()  # the client reads: it is not idle
        if self._pending and not self.busy:
            self._next()
        elif not self._pending:
            self._resume()

    def data_received(self, data: bytes) -> None:
        if self._refused:  # answered (or closing): the rest is read and dropped
            self._dropped += len(data)
            if self._dropped > self.server.linger_bytes:
                self.close()
            return
        if len(data) > 8192:  # FEED_SLICE, as a literal: this runs per request
            self._feed_slices(data)
            return
        if self._in_head:  # count the head against its limit (the body has its own)
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "Protocol upgrades (and CONNECT) are not supported by this server.")
        except httptools.HttpParserError as exc:
            self._refuse(400, f"Malformed HTTP request: {exc}")
        if self._in_head and self._head_bytes > self.server.max_head:
            self._refuse(431, f"Request head larger than {self.server.max_head} bytes.")

    def _feed_slices(self, data: bytes) -> None:
        """A big read may hold thousands of small pipelined requests, and pausing the transport does not stop the
        parser inside one read: parse it a slice at a time (small ones once requests wait), and keep the bytes
        after a pause for ``_resume``. What waits is then bytes, not thousands of parsed requests."""
        view, i, n = memoryview(data), 0, len(data)
        while i < n:
            if self._paused or self._refused:
                if not self._refused:
                    self._unparsed = bytes(view[i:])
                return
            step = 512 if self._pending else FEED_SLICE
            self.data_received(view[i : i + step])  # type: ignore[arg-type]
            i += step

    # -- httptools callbacks -------------------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url, self._headers, self._hmap, self._body, self._body_bytes = b"", [], {}, [], 0
        self.partial = True
        self.started = self.loop.time()

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_FIELD_BYTES:
            self._refuse(414, f"Request URL longer than {MAX_FIELD_BYTES} bytes.")

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) > MAX_FIELD_BYTES:
            self._refuse(431, f"Header {name[:64].decode('latin-1')!r} is longer than {MAX_FIELD_BYTES} bytes.")
        self._headers.append((name, value))
        self._hmap[name.lower()] = value

    def on_headers_complete(self) -> None:
        self._in_head = False
        size = len(self._url) + sum(len(k) + len(v) + 4 for k, v in self._headers)
        if size > self.server.max_head:  # a whole oversize head that arrived in one read
            self._refuse(431, f"Request head larger than {self.server.max_head} bytes.")
            return
        h = self._hmap
        # Keep-alive without a Connection header is HTTP/1.1 and nothing else (llhttp): the version is read, at ~1 µs,
        # only when that does not say it already.
        self._keep = keep = self.parser.should_keep_alive()
        if not keep or b"connection" in h:
            version = self.parser.get_http_version()
            if version not in ("1.1", "1.0"):
                self._refuse(505, f"HTTP/{version} is not supported: use HTTP/1.1 (or 1.0).")
                return
        n = h.get(b"content-length")
        if n is not None and n.isdigit() and int(n) > self.server.max_body:
            self._refuse(413, f"Request body of {int(n)} bytes exceeds the limit of {self.server.max_body}.")
            return
        expect = h.get(b"expect")
        if expect is not None and expect.lower() == b"100-continue" and not self._refused and self.transport:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._refused:
            return
        self._body_bytes += len(body)
        if self._body_bytes > self.server.max_body:
            self._refuse(413, f"Request body exceeds the limit of {self.server.max_body} bytes.")
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self.partial = False
        self._in_head, self._head_bytes = True, 0
        req = Request(
            self.parser.get_method().decode("latin-1"),
            self._url.decode("latin-1"),
            self._headers,
            self._hmap,
            b"".join(self._body) if len(self._body) != 1 else self._body[0],
        )
        # Answered in order once those ahead are out. (Not checking _write_paused here is deliberate: reading is
        # paused then, so at most the rest of one read starts while writing is paused, and the check costs per request.)
        if self.busy or self._pending:
            self._pending.append((req, self._keep))
            if len(self._pending) >= MAX_PIPELINED:  # a client that overdoes it
                self._pause()
            return
        self._start(req, self._keep)

    # -- answering -----------------------------------------------------------------------------------------------------
    def _start(self, req: Request, keep: bool) -> None:
        self.busy = True
        # end of input (a half-close, a drain): the last request received is answered with "Connection: close"
        self.keep_alive = keep and not ((self._eof or self.server.draining) and not (self._pending or self._unparsed))
        self._head = req.method == "HEAD"
        if self._head:  # answered as the GET it mirrors, without the body (as aiohttp did for GET routes)
            req.method = "GET"
        try:
            self.server.dispatch(self, req)
        except Exception:  # a bug in a dispatcher must cost one 500, not the connection's other requests
            log.exception("gateway dispatch failed for %s %s", req.method, req.raw_path)
            if self.busy:
                self.send(500, [("Content-Type", "application/json")], b'{"error": "internal error"}')

    def _next(self) -> None:
        """Start the oldest pipelined request, or write the refusal queued behind the requests before it."""
        item, keep = self._pending.popleft()
        if isinstance(item, Response):
            self._write_refusal(item)
        else:
            self._start(item, keep)

    def send(self, status: int, headers: Iterable[tuple[str, str]], body: bytes) -> None:
        """Answer the request being handled; then the next pipelined one, if any, or read on."""
        self.send_raw(status, encode_headers(headers), body)

    def send_raw(self, status: int, head: bytes, body: bytes) -> None:
        """``send`` with the header lines already encoded (``Name: value\\r\\n`` each): the hot path's answer."""
        if not self.busy:
            return  # answered already (a late timeout after a reply, say)
        self.busy = False
        t = self.transport
        if t is None or self.closing:
            return
        t.write(encode_response(status, head, body, self.keep_alive, self._head))  # may pause writing
        self.last_active = self.loop.time()
        if not self.keep_alive:
            self.close()
        elif self._pending:
            if not self._write_paused:  # else resume_writing starts it
                self._next()
        elif self._paused:
            self._resume()

    def send_response(self, resp: Response) -> None:
        self.send(resp.status, resp.headers.items(), resp.body)

    def _pause(self) -> None:
        if not self._paused and self.transport is not None and not self.closing:
            self._paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        """Read again, unless the client's answers still do not drain or requests still wait behind one; first
        parse what a pause left unparsed (which may pause again)."""
        if self._paused and not self._write_paused and not self._pending and not self.closing:
            self._paused = False
            if self._unparsed:
                data, self._unparsed = self._unparsed, b""
                self.data_received(data)
            if not self._paused and not self.closing:
                self.transport.resume_reading()  # type: ignore[union-attr]

    # -- refusing ------------------------------------------------------------------------------------------------------
    def _refuse(self, status: int, message: str) -> None:
        """Refuse the request being received (unreadable, oversize, too slow, over a cap): nothing more is parsed;
        the answer goes out after those of the requests received before it, then the connection closes."""
        if self._refused:
            return
        self._refused = True
        self.partial = False
        resp = self.server.reject(self._url.decode("latin-1", "replace").partition("?")[0], status, message)
        if self.busy or self._pending or self._write_paused:
            self._pending.append((resp, False))
        else:
            self._write_refusal(resp)

    def _write_refusal(self, resp: Response) -> None:
        """Write the refusal, half-close, and linger: the client reads the answer instead of a reset."""
        t = self.transport
        self._pending.clear()
        if t is None or self.closing:
            return
        t.write(encode_response(resp.status, encode_headers(resp.headers.items()), resp.body, keep_alive=False))
        if self._eof:  # the client has sent everything already
            self.close()
            return
        if t.can_write_eof():
            t.write_eof()
        self.linger_until = self.loop.time() + self.server.linger_s
        if self._paused:
            self._paused = False
            t.resume_reading()

    def close(self) -> None:
        self._refused = True
        if not self.closing and self.transport is not None:
            self.closing = True
            self.transport.close()


class _OverCap:
    """The parser callbacks of a connection over a cap: its request's path (for the error's shape), then 503."""

    def __init__(self, conn: H1Connection) -> None:
        self.conn = conn

    def on_url(self, url: bytes) -> None:
        self.conn.on_url(url)

    def on_headers_complete(self) -> None:
        self.conn._refuse(503, self.conn._excess or "")
