"""A small HTTP/1.1 server on asyncio protocols with the httptools parser: the gateway's listening side.

Why not aiohttp's server: on the 2-core machine its request and response machinery cost ~100 µs of CPU per request,
more than Triton spends on a small model, and the gateway ran at 0.56x of direct Triton at c=8. A byte-level proxy
on uvloop protocols reached ~0.9x in the same run (docs/benchmarks/gateway.md), so the gateway keeps that shape:
httptools (C) parses, one callback hands the whole request to the dispatcher, the answer goes out in one write. The
dispatcher decides per request whether to answer with callbacks only (a warm KServe infer) or from a task.

What the connection layer enforces itself, before any handler runs: a head size limit (431), the body limit from
Content-Length or while a chunked body arrives (413, then close: the rest is never read), malformed HTTP (400,
close), idle keep-alive and slow-head timeouts (a sweep every second, not a timer per request), and ordered answers
to pipelined requests (one request is handled at a time per connection; reading pauses when 16 wait behind it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import httptools
from multidict import CIMultiDict

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024
MAX_PIPELINED = 16  # requests queued behind the one being answered before reading pauses
MAX_FIELD_BYTES = 8190  # one header line or the request line, as aiohttp and most servers limit them
KEEPALIVE_S = 75.0
HEAD_TIMEOUT_S = 30.0
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


class Request:
    """What a handler sees: the subset of aiohttp's ``web.Request`` the gateway's handlers use.

    ``hmap`` maps lower-case header names to raw values (the last one wins) for the hot path; ``headers`` (a
    case-insensitive multidict of str) is built only when a handler asks for it.
    """

    __slots__ = ("_headers", "_raw_headers", "body", "hmap", "match_info", "method", "raw_path")

    def __init__(
        self, method: str, raw_path: str, raw_headers: list[tuple[bytes, bytes]], hmap: dict[bytes, bytes], body: bytes
    ) -> None:
        self.method = method
        self.raw_path = raw_path
        self._raw_headers = raw_headers
        self._headers: CIMultiDict[str] | None = None
        self.hmap = hmap
        self.body = body
        self.match_info: dict[str, str] = {}

    @property
    def headers(self) -> CIMultiDict[str]:
        if self._headers is None:
            self._headers = CIMultiDict((k.decode("latin-1"), v.decode("latin-1")) for k, v in self._raw_headers)
        return self._headers

    @property
    def path(self) -> str:
        return unquote(self.raw_path.partition("?")[0])

    @property
    def query_string(self) -> str:
        return self.raw_path.partition("?")[2]

    @property
    def content_length(self) -> int | None:
        v = self.hmap.get(b"content-length")
        return int(v) if v is not None and v.isdigit() else None

    async def read(self) -> bytes:
        return self.body


class Response:
    """A complete answer: status, headers and a bytes body (the gateway never streams an HTTP response)."""

    __slots__ = ("body", "headers", "status")

    def __init__(
        self,
        status: int = 200,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        content_type: str | None = None,
        text: str | None = None,
    ) -> None:
        self.status = status
        self.body = text.encode() if text is not None else body
        self.headers = dict(headers or {})
        if content_type is not None:
            self.headers["Content-Type"] = content_type + ("; charset=utf-8" if text is not None else "")

    @classmethod
    def json(cls, obj: Any, status: int = 200, dumps: Callable[[Any], str] = json.dumps) -> Response:
        return cls(status, dumps(obj).encode(), content_type="application/json")


def encode_headers(headers: Iterable[tuple[str, str]]) -> bytes:
    """``Name: value\\r\\n`` lines, as ``encode_response`` takes them."""
    return b"".join(f"{k}: {v}\r\n".encode("latin-1", "replace") for k, v in headers)


def encode_response(status: int, head: bytes, body: bytes, keep_alive: bool, head_only: bool = False) -> bytes:
    """The whole answer in one buffer. ``head`` holds the header lines already encoded (the hot path forwards
    Triton's as bytes); ``head_only`` (a HEAD request) keeps the GET answer's Content-Length but not its body."""
    return b"HTTP/1.1 %d %s\r\n%s%sContent-Length: %d\r\n\r\n%s" % (
        status,
        _REASONS.get(status, b"Unknown"),
        head,
        b"" if keep_alive else b"Connection: close\r\n",
        len(body),
        b"" if head_only else body,
    )


# dispatch(conn, request): must answer through conn.send / conn.send_response, at once or later (from a task).
Dispatch = Callable[["H1Connection", Request], None]
# reject(path, status, message): the shaped error for a request refused by the connection layer (413, 431, 400).
Reject = Callable[[str, int, str], Response]


class H1Server:
    """Listens, owns its connections, sweeps idle ones; ``start`` returns the bound port."""

    def __init__(
        self,
        dispatch: Dispatch,
        reject: Reject,
        *,
        max_body: int,
        max_head: int = MAX_HEAD_BYTES,
        keepalive_s: float = KEEPALIVE_S,
        head_timeout_s: float = HEAD_TIMEOUT_S,
    ) -> None:
        self.dispatch, self.reject = dispatch, reject
        self.max_body, self.max_head = max_body, max_head
        self.keepalive_s, self.head_timeout_s = keepalive_s, head_timeout_s
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
            if c.busy:
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
            now = loop.time()
            for c in list(self.connections):
                if c.busy:
                    continue
                limit = self.head_timeout_s if c.partial else self.keepalive_s
                if now - c.last_active > limit:
                    c.close()


class H1Connection(asyncio.Protocol):
    """One client connection. Not thread-safe: everything runs on the server's event loop."""

    def __init__(self, server: H1Server) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.busy = False  # a request is being answered
        self.partial = False  # bytes of a request that is not complete yet have arrived
        self.closing = False
        self.last_active = 0.0
        self.keep_alive = True
        self._pending: deque[tuple[Request, bool]] = deque()
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._hmap: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._in_head = True
        self._head_bytes = 0
        self._body_bytes = 0
        self._refused = False
        self._paused = False
        self._eof = False
        self._head = False

    # -- asyncio.Protocol ----------------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.last_active = self.loop.time()
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.connections.discard(self)

    def eof_received(self) -> bool:
        """A client that half-closes after its request still gets the answer; then the connection closes."""
        self._eof = True
        self.keep_alive = False
        return self.busy  # True keeps the transport open for the answer in progress

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_active = self.loop.time()
        self.partial = True
        if self._in_head:  # count the head against its limit (the body has its own)
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "Protocol upgrades (and CONNECT) are not supported by this server.")
        except httptools.HttpParserError as exc:
            if not self._refused:
                self._refuse(400, f"Malformed HTTP request: {exc}")
        if self._in_head and self._head_bytes > self.server.max_head and not self._refused:
            self._refuse(431, f"Request head larger than {self.server.max_head} bytes.")

    # -- httptools callbacks -------------------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url, self._headers, self._hmap, self._body, self._body_bytes = b"", [], {}, [], 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_FIELD_BYTES and not self._refused:
            self._refuse(414, f"Request URL longer than {MAX_FIELD_BYTES} bytes.")

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) > MAX_FIELD_BYTES and not self._refused:
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
        n = h.get(b"content-length")
        if n is not None and n.isdigit() and int(n) > self.server.max_body:
            self._refuse(413, f"Request body of {int(n)} bytes exceeds the limit of {self.server.max_body}.")
            return
        expect = h.get(b"expect")
        if expect is not None and expect.lower() == b"100-continue" and self.transport is not None:
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
        keep = self.parser.should_keep_alive()
        if self.busy:  # pipelined: answered in order after the current one; stop reading if a client overdoes it
            self._pending.append((req, keep))
            if len(self._pending) >= MAX_PIPELINED and self.transport is not None and not self._paused:
                self._paused = True
                self.transport.pause_reading()
            return
        self._start(req, keep)

    # -- answering -----------------------------------------------------------------------------------------------------
    def _start(self, req: Request, keep: bool) -> None:
        self.busy = True
        # draining: the last request received is answered with "Connection: close"
        self.keep_alive = keep and not self._eof and not (self.server.draining and not self._pending)
        self._head = req.method == "HEAD"
        if self._head:  # answered as the GET it mirrors, without the body (as aiohttp did for GET routes)
            req.method = "GET"
        try:
            self.server.dispatch(self, req)
        except Exception:  # a bug in a dispatcher must cost one 500, not the connection's other requests
            log.exception("gateway dispatch failed for %s %s", req.method, req.raw_path)
            if self.busy:
                self.send(500, [("Content-Type", "application/json")], b'{"error": "internal error"}')

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
        t.write(encode_response(status, head, body, self.keep_alive, self._head))
        self.last_active = self.loop.time()
        if not self.keep_alive:
            self.close()
        elif self._pending:
            self._start(*self._pending.popleft())
        elif self._paused:
            self._paused = False
            t.resume_reading()

    def send_response(self, resp: Response) -> None:
        self.send(resp.status, resp.headers.items(), resp.body)

    def _refuse(self, status: int, message: str) -> None:
        """Answer an unreadable or oversize request at once and close: its remaining bytes are never read."""
        self._refused = True
        if self.busy:  # a pipelined request behind one being answered: close after that answer, in order
            self.keep_alive = False
            self._pending.clear()
            return
        path = self._url.decode("latin-1", "replace").partition("?")[0]
        resp = self.server.reject(path, status, message)
        if self.transport is not None and not self.closing:
            head = encode_headers(resp.headers.items())
            self.transport.write(encode_response(resp.status, head, resp.body, keep_alive=False))
        self.close()

    def close(self) -> None:
        if not self.closing and self.transport is not None:
            self.closing = True
            self.transport.close()
