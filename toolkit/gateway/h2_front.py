"""gRPC front that forwards HTTP/2 frames: each client connection gets its own connection to Triton's gRPC port.

Why: grpcio's per-call machinery (a server call plus a client call per request) halved throughput (the first gRPC front,
since deleted). Mapping connections 1:1 lets stream ids, SETTINGS, flow control, PING and GOAWAY pass unchanged (but for
the connection credit ``h2_mux`` keeps back); only what the policy needs is read. Client HEADERS are forwarded at once
and decoded in order with one ``hpack.Decoder`` per connection (its table follows the client's encoder exactly as
Triton's does). Every DATA byte of a call that names a model is read before it is forwarded (``protowire``: the model
name as protobuf reads it, a repeated name refused); a message's frames are held only until its model name is approved
by the gateway's admission (``h2_policy``), so a big tensor never waits for flow-control window that only Triton can
grant.
A multiplexed model's call is retargeted at its host by appending fields to its messages (``h2_mux``, which keeps
both sides' flow-control windows exact); every other call's bytes pass unchanged.
A refused call is cancelled upstream (RST_STREAM) and answered to the client with a trailers-only HEADERS frame of
literal fields (no HPACK table change), written only between Triton's frames. Dropped DATA is credited back with a
connection WINDOW_UPDATE, so neither side's window leaks. ModelStreamInfer has every message checked this way.
Triton gone: pending calls get UNAVAILABLE, then GOAWAY and close, so the client's next call reconnects at once.

Limits of reading frames rather than messages: a SigV4 ``authorization`` on a gRPC call is checked against an empty
body (the message is never held whole; API keys are the way for gRPC); a compressed message is read whole, so it
must be at most 64 KiB compressed; unary calls get ``timeout_s`` from when Triton has the request (a cold load has
``load_wait_s`` of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from time import perf_counter
from typing import Any, Protocol

import hpack

from toolkit.gateway import h2_frames as f
from toolkit.gateway.bodies import inflate
from toolkit.gateway.core import GatewayCore
from toolkit.gateway.errors import (
    GatewayError,
    PayloadTooLargeError,
    ServiceUnavailableError,
    TimeoutError_,
    ValidationError,
    to_gateway_error,
)
from toolkit.gateway.grpc_service import SCANNED, STREAM, method_of
from toolkit.gateway.h2_mux import Flow
from toolkit.gateway.h2_policy import check_call, check_message
from toolkit.gateway.h2_stats import record_call
from toolkit.gateway.protowire import NameScanner, model_of

log = logging.getLogger(__name__)
_DEAD_LINGER_S = 0.5  # with Triton gone, a connection answers UNAVAILABLE this long, then GOAWAY and close


class Port(Protocol):
    """What a connection needs of the gRPC port it was accepted on (``h2_port.H2Front``)."""

    core: GatewayCore
    upstream: tuple[str, int]

    def admit_connection(self, c: H2Connection) -> str | None: ...

    def forget(self, c: H2Connection) -> None: ...

    def loop_time(self) -> float: ...


class H2Connection(asyncio.Protocol):
    """Client -> Triton for one client connection: the policy runs here."""

    def __init__(self, front: Port) -> None:
        self.front = front
        self.core = front.core
        self.decoder = f.BlockDecoder()
        self.down = f.FrameWriter(ready=False)
        self.up = f.FrameWriter(ready=True)
        self.streams: dict[int, f.Stream] = {}
        self.buf = b""
        self.preface = True
        self.block: tuple[int, int, bytearray] | None = None  # (stream, HEADERS flags, fragments) until END_HEADERS
        self.last_sid = 0
        self.settings_seen = 0
        self.goaway_sid = 0x7FFFFFFF  # the last stream id of a GOAWAY Triton sent: ours must not be higher
        self.dead: str | None = None  # why Triton is gone: streams are answered UNAVAILABLE
        self.closed = False
        self.tasks: set[asyncio.Task[None]] = set()
        self.max_frame = f.DEFAULT_MAX_FRAME  # raised only by Triton's SETTINGS (TritonReader)
        # multiplexed calls: windows and waiting suffixes, and each host answer noted for the scrape (h2_mux)
        self.flow = Flow(self.core.multiplexes, self.core.mux_answer if self.core.multiplexes else None)
        self.peer = ""
        self.last_active = self.opened = asyncio.get_running_loop().time()

    # -- connection --------------------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.down.t = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else ""
        refusal = self.front.admit_connection(self)
        if refusal is not None:  # over a connection cap: closed before any connection to Triton is made
            log.warning("gRPC connection from %s refused: %s", self.peer or "?", refusal)
            self.closed = True
            transport.close()
            return
        self._spawn(self._connect())

    async def _connect(self) -> None:
        host, port = self.front.upstream
        try:
            t, self.flow.reader = await asyncio.get_running_loop().create_connection(
                lambda: f.TritonReader(self), host, port
            )
        except OSError as exc:
            self.upstream_gone(True, f"Triton is unavailable: {exc.strerror or exc}")
            return
        if self.closed:
            t.close()
        else:
            self.up.attach(t)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.front.forget(self)
        for s in self.streams.values():
            self.end(s)
        self.streams.clear()
        for task in self.tasks:
            task.cancel()
        if self.up.t is not None:
            self.up.t.close()

    # flow control between the sockets: a slow reader on one side stops reading from the other
    def pause_writing(self) -> None:
        if self.up.t is not None:
            self.up.t.pause_reading()

    def resume_writing(self) -> None:
        if self.up.t is not None and not self.up.t.is_closing():
            self.up.t.resume_reading()

    def upstream_gone(self, clean: bool, why: str) -> None:
        """Triton's side ended: answer what is pending with UNAVAILABLE when the frame stream allows, then close."""
        if self.closed or self.dead is not None:
            return
        self.dead = why
        if not clean or self.down.in_block:  # mid-frame: nothing more can be said on this connection
            assert self.down.t is not None
            self.down.t.close()
            return
        with contextlib.suppress(Exception):
            self.down.t.resume_reading()  # type: ignore[union-attr]  # paused for Triton: now its frames are ours
        if not self.down.ready:  # the server preface Triton never sent, and the acks it owed
            self.down.fwd(f.frame(f.SETTINGS, 0, 0) + f.frame(f.SETTINGS, f.ACK, 0) * self.settings_seen)
            self.down.ready = True
            self.down.unblock()
        err = ServiceUnavailableError(why)
        for s in list(self.streams.values()):
            if not s.done:
                self.refuse(s, err)
        asyncio.get_running_loop().call_later(_DEAD_LINGER_S, self._close_dead)

    def _close_dead(self) -> None:
        if not self.closed and self.down.t is not None:
            self.down.t.write(f.goaway(min(self.last_sid, self.goaway_sid)))
            self.down.t.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # -- client frames -----------------------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self.last_active = self.front.loop_time()
        self.up.cork()
        self.down.cork()
        try:
            self._received(data)
        finally:
            self.up.uncork()
            self.down.uncork()

    def _received(self, data: bytes) -> None:  # noqa: C901 (one pass over the client's frames of a read: the hot path)
        buf = self.buf + data if self.buf else data
        if self.preface:
            if len(buf) < 24:
                self.buf = buf
                return
            if buf[:24] != f.PREFACE:
                assert self.down.t is not None
                self.down.t.close()  # not HTTP/2 with prior knowledge: nothing to answer in
                return
            self.preface = False
            self.up.fwd(buf[:24])
            buf = buf[24:]
        n, i, start = len(buf), 0, 0
        streams, up, flow = self.streams, self.up, self.flow
        counting = flow.counting
        try:
            while n - i >= 9:
                length = int.from_bytes(buf[i : i + 3], "big")
                if length > self.max_frame:  # checked before its payload is buffered
                    raise ValueError(f"a frame of {length} bytes exceeds the peer's maximum of {self.max_frame}")
                end = i + 9 + length
                if end > n:
                    break
                t = buf[i + 3]
                if t == f.DATA:
                    s = streams.get(int.from_bytes(buf[i + 5 : i + 9], "big") & 0x7FFFFFFF)
                    if (s is not None and (s.scanning or s.held or s.done)) or self.dead is not None:
                        up.fwd(buf[start:i])
                        start = end
                        self._data(s, buf[i:end])
                elif t in (f.HEADERS, f.CONTINUATION, f.RST_STREAM, f.SETTINGS) or self.dead is not None:
                    if counting and t == f.SETTINGS and not buf[i + 4] & f.ACK and self.dead is None:
                        up.fwd(buf[start:i])  # stream windows less a reserve (h2_mux)
                        up.fwd(flow.client_settings(buf[i:end]))
                    else:
                        up.fwd(buf[start:end] if self.dead is None else buf[start:i])
                    start = end
                    self._control(buf[i:end])
                elif counting and flow.short_down and t == f.WINDOW_UPDATE and buf[i + 5 : i + 9] == b"\0\0\0\0":
                    up.fwd(buf[start:i])  # a connection update while h2_mux needs the client's credit
                    start = end
                    up.fwd(flow.client_wu(self, buf[i:end]))
                i = end
        except (hpack.HPACKError, ValueError) as exc:  # the shared HPACK table can no longer be trusted
            log.warning("gRPC client broke HTTP/2 framing or HPACK: %s", exc)
            assert self.down.t is not None
            self.down.t.close()
            return
        if start < i and self.dead is None:
            up.fwd(buf[start:i])
        self.buf = buf[i:]

    def _control(self, raw: bytes) -> None:
        t, flags, sid = raw[3], raw[4], int.from_bytes(raw[5:9], "big") & 0x7FFFFFFF
        if t == f.SETTINGS and not flags & f.ACK:
            self.settings_seen += 1
        if self.dead is not None and t in (f.SETTINGS, f.PING) and not flags & f.ACK:
            self.down.inject(f.frame(t, f.ACK, 0, raw[9:] if t == f.PING else b""))  # keep the client talking
            return
        if t == f.RST_STREAM:
            s = self.streams.pop(sid, None)
            if s is not None and not s.done:
                s.done = True  # a check still running ends with nothing forwarded and its pins released
                self.flow.release(s)
                self._credit(s)
                self.end(s)
            return
        if t == f.HEADERS:
            frag = f.header_fragment(flags, raw[9:])
            self.block = (sid, flags, bytearray(frag))
        elif t == f.CONTINUATION and self.block is not None:
            self.block[2].extend(raw[9:])
            if len(self.block[2]) > f.MAX_HEADER_BLOCK:  # a CONTINUATION flood: nothing is buffered past this
                raise ValueError(f"a header block larger than {f.MAX_HEADER_BLOCK} bytes")
        else:
            return
        self.up.in_block = not flags & f.END_HEADERS
        if not self.up.in_block:
            self._header_block()

    def _header_block(self) -> None:
        """A whole header block arrived: decoded in order (the HPACK table), then a new call or a call's trailers."""
        assert self.block is not None
        sid, hflags, block = self.block
        self.block = None
        headers = self.decoder.decode_block(bytes(block))
        self.up.unblock()
        s = self.streams.get(sid)
        if s is None and sid > self.last_sid:
            self.last_sid = sid
            self._open(sid, headers, bool(hflags & f.END_STREAM))
            return
        if s is not None and (s.held or s.checking or self.flow.holds(s)) and not s.done:
            self.refuse(s, ValidationError("request trailers before the first message was checked"))
        if s is not None and hflags & f.END_STREAM:
            s.client_ended = True
            if s.done:
                self.streams.pop(sid, None)

    def _open(self, sid: int, headers: list[tuple[str, str]], ended: bool) -> None:
        hm = dict(headers)
        path = hm.get(":path", "")
        method = method_of(path)
        s = self.streams[sid] = f.Stream(sid, method, method in SCANNED)
        s.client_ended = ended
        s.encoding = hm.get("grpc-encoding", "identity")
        if self.core.stats.access is not None:
            s.trace = hm.get("traceparent")
        try:
            check_call(self.core, s, path, headers, self.dead)
        except Exception as exc:
            self.refuse(s, to_gateway_error(exc))
            return
        if not s.scanning:
            self._arm(s)

    def _arm(self, s: f.Stream) -> None:
        """Triton gets timeout_s to answer a unary call (from when it has the request; loading a cold
        model has its own load_wait_s); a stream lives as long as the client keeps it."""
        if s.method != STREAM and s.timer is None:
            s.timer = asyncio.get_running_loop().call_later(self.core.options.timeout_s, self._expire, s)

    def _expire(self, s: f.Stream) -> None:
        s.timer = None
        if not s.done and self.streams.get(s.sid) is s:
            self.refuse(s, TimeoutError_(f"Triton did not answer within {self.core.options.timeout_s:g} s"))

    def _data(self, s: f.Stream | None, raw: bytes) -> None:
        if s is None or s.done or self.dead is not None:
            if s is not None and raw[4] & f.END_STREAM:
                s.client_ended = True
                self.streams.pop(s.sid, None)
            if len(raw) > 9:
                self.down.inject(f.window_update(0, len(raw) - 9))  # the client's window back for the drop
            return
        if raw[4] & f.END_STREAM:
            s.client_ended = True
        s.held.append(raw)
        payload = f.data_payload(raw[4], raw[9:])
        if s.checking:
            s.unscanned += payload
            return
        self._scan(s, payload)

    # -- the policy --------------------------------------------------------------------------------------------------
    def _scan(self, s: f.Stream, data: bytes) -> None:  # noqa: C901 (one pass over the bytes of a read, measured)
        """Read every byte of the call's messages before it is forwarded; decide each message's model as protobuf
        will read it; forward what is held once no message in progress is undecided.

        A message's frames are held until its model name (field 1) is read and approved; the rest is forwarded as
        it is read, so a field that would change the model (a second field 1) is refused before the message's last
        byte reaches Triton: an incomplete message is never run.
        """
        try:
            pos, n = 0, len(data)
            while pos < n or (s.scanner is not None and s.remaining == 0):
                if s.scanner is None:  # a message starts: its 5-byte prefix (flag, size)
                    if s.messages and s.method != STREAM:
                        raise ValidationError(f"{s.method} is a unary call: it takes one request message")
                    take = min(5 - len(s.prefix), n - pos)
                    s.prefix += data[pos : pos + take]
                    pos += take
                    if len(s.prefix) < 5:
                        break
                    s.size = s.remaining = int.from_bytes(s.prefix[1:5], "big")
                    limit = self.core.options.max_body_bytes
                    if s.size > limit:
                        raise PayloadTooLargeError(f"gRPC message of {s.size} bytes exceeds the limit of {limit} bytes")
                    s.compressed = bool(s.prefix[0] & 1)
                    if s.compressed and s.size > f.MAX_HEAD:
                        raise ValidationError(f"a compressed gRPC message must be at most {f.MAX_HEAD // 1024} KiB")
                    s.prefix.clear()
                    s.scanner = NameScanner()
                    s.messages += 1
                sc = s.scanner
                undecided = sc.model is None
                take = min(s.remaining, n - pos)
                if take:
                    chunk = memoryview(data)[pos : pos + take]
                    pos += take
                    s.remaining -= take
                    if s.compressed:
                        s.zbuf += chunk
                    else:
                        sc.feed(chunk)
                pending = None
                if s.remaining == 0 and s.compressed:  # inflated (bounded) in a thread, then read and admitted
                    z, s.scanner = bytes(s.zbuf), None
                    s.zbuf.clear()
                    pending = self._inflate_and_check(s, z)
                    model: str | None = None
                elif s.remaining == 0:  # the message is whole here: its name is final
                    model = sc.finish()
                    s.scanner = None
                else:
                    model = None if s.compressed else sc.model
                    if model is None and s.size - s.remaining > f.MAX_HEAD:
                        raise ValidationError(
                            f"the model name must be within the first {f.MAX_HEAD} bytes of a message"
                        )
                if undecided and model is not None:
                    pending = check_message(self.core, s, model)
                if pending is not None:
                    s.checking = True
                    s.unscanned += data[pos:]
                    s.check = task = self._spawn(pending)
                    task.add_done_callback(lambda t, s=s: self._checked(s, t))  # type: ignore[misc]
                    return
        except Exception as exc:
            self.refuse(s, to_gateway_error(exc))
            return
        # (a message's prefix is held until whole: a multiplexed call's size changes, h2_mux)
        if s.held and (s.scanner is None or (s.scanner.model is not None and not s.compressed)) and not s.prefix:
            held, s.held = s.held, []
            if s.mux is None:
                self.up.fwd(b"".join(held))
            elif not self.flow.forward_up(self, s, held):  # retargeted at its host (h2_mux), or:
                s.held = held
                self.refuse(s, ValidationError("a multiplexed model's answer needs stream windows of 2 KiB or more"))
                return
            if not s.t_up:
                s.t_up = perf_counter()  # upstream latency starts: the first message is on its way to Triton
            if s.messages and s.method != STREAM:
                self._arm(s)

    async def _inflate_and_check(self, s: f.Stream, data: bytes) -> None:
        """A compressed message: inflated off the event loop (refused past the body limit), then admitted."""
        body = await asyncio.to_thread(inflate, data, s.encoding, self.core.options.max_body_bytes)
        pending = check_message(self.core, s, model_of(body))
        if pending is not None:
            await pending

    def _checked(self, s: f.Stream, task: asyncio.Task[None]) -> None:
        s.checking = False
        s.check = None
        exc = None if task.cancelled() else task.exception()
        if task.cancelled() or s.done or self.closed:
            self.end(s)
            return
        if exc is not None:
            self.refuse(s, to_gateway_error(exc))
            return
        data = bytes(s.unscanned)
        s.unscanned.clear()
        self._scan(s, data)

    # -- answers -----------------------------------------------------------------------------------------------------
    def refuse(self, s: f.Stream, err: GatewayError) -> None:
        """Cancel the call upstream, answer it with the error's gRPC status, drop (and credit) what it still sends."""
        if s.done:
            return
        s.done = True
        self.flow.release(s)
        s.code = f.grpc_status(err.grpc_code)
        self._credit(s)
        self.end(s)
        if self.dead is None:
            self.up.inject(f.rst_stream(s.sid, f.CANCEL))
        out = f.trailers_frame(s.sid, s.code, err.message, headers_sent=s.headers_sent)
        if not s.client_ended:
            out += f.rst_stream(s.sid, f.NO_ERROR)  # "stop sending": the answer is complete
            self.streams[s.sid] = s
        else:
            self.streams.pop(s.sid, None)
        self.down.inject(out)

    def _credit(self, s: f.Stream) -> None:
        n = sum(len(r) - 9 for r in s.held if r[3] == f.DATA)
        s.held.clear()
        s.prefix.clear()
        s.zbuf.clear()
        s.scanner = None
        s.unscanned.clear()
        if n:
            self.down.inject(f.window_update(0, n))

    def end(self, s: f.Stream) -> None:
        """The call is over (answered, reset, refused or the connection lost): its pins end, once; it is recorded."""
        if not s.recorded:
            record_call(self.core, s)
        if s.timer is not None:
            s.timer.cancel()
            s.timer = None
        if s.check is not None:  # admission still waiting (a cold load): it gives back what it holds as it unwinds
            s.check.cancel()
        if s.ticket is not None:
            ticket, s.ticket = s.ticket, None
            ticket.release()
