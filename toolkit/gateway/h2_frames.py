"""HTTP/2 wire work for the frame-forwarding gRPC front (``h2_front``): just enough of RFC 7540 to forward.

``FrameWriter`` writes one direction (forwarded frames in order, the front's own frames only where a frame may
start); ``TritonReader`` walks Triton's frames (9-byte headers only) to find stream ends and frame boundaries.

The front never re-encodes what Triton or the client wrote; it only builds a few frames of its own (a trailers-only
gRPC answer, RST_STREAM, WINDOW_UPDATE, GOAWAY, SETTINGS/PING acks) and reads the model name out of a gRPC message's
first bytes. Header blocks it writes use literal fields without indexing and literal names, so the client's HPACK
dynamic table is never touched by them: what Triton's encoder and the client's decoder share stays in step.
"""

from __future__ import annotations

import asyncio
import re
import struct
from time import perf_counter
from typing import TYPE_CHECKING, Protocol, cast

import grpc
import hpack

from toolkit.gateway.auth import ANONYMOUS
from toolkit.gateway.h2_status import RST_STATUS, UNKNOWN, UNSET, TritonStatuses
from toolkit.gateway.protowire import NameScanner

if TYPE_CHECKING:
    from toolkit.gateway.admission import Ticket
    from toolkit.gateway.auth import Principal

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
PAD_PRIO = PADDED | PRIORITY_FLAG
NO_ERROR, PROTOCOL_ERROR, CANCEL = 0x0, 0x1, 0x8
SETTINGS_HEADER_TABLE_SIZE, SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE = 0x1, 0x4, 0x5
DEFAULT_MAX_FRAME = 16384  # RFC 7540: what a peer may send until the other side's SETTINGS raise it
MAX_HEADER_BLOCK = 64 * 1024  # a client header block (HEADERS + CONTINUATION) larger than this closes the connection
FRAME_SIZE_ERROR, ENHANCE_YOUR_CALM = 0x6, 0xB
MUX_SLACK = 16384  # connection credit kept back from each side for multiplexed calls' suffixes (h2_mux)
MAX_HEAD = 64 * 1024  # bytes of a message read before its model name must be known (compressed: the whole message)
_HEAD = struct.Struct(">I")


def frame(ftype: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return bytes((n >> 16 & 0xFF, n >> 8 & 0xFF, n & 0xFF, ftype, flags)) + _HEAD.pack(stream & 0x7FFFFFFF) + payload


def rst_stream(stream: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream, _HEAD.pack(code))


def window_update(stream: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream, _HEAD.pack(increment))


def goaway(last_stream: int, code: int = NO_ERROR, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, _HEAD.pack(last_stream) + _HEAD.pack(code) + debug)


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal_block(fields: list[tuple[bytes, bytes]]) -> bytes:
    """An HPACK block of 'literal header field without indexing, new name' entries: no dynamic table change."""
    out = bytearray()
    for name, value in fields:
        out += b"\x00" + _hpack_int(len(name), 7) + name + _hpack_int(len(value), 7) + value
    return bytes(out)


def grpc_status(code: str) -> int:
    """``GatewayError.grpc_code`` (a ``grpc.StatusCode`` name) -> the number sent in ``grpc-status``."""
    member = getattr(grpc.StatusCode, code, grpc.StatusCode.INTERNAL)
    return int(member.value[0])


def percent_encode(message: str) -> bytes:
    """grpc-message encoding: printable ASCII except '%' as is, every other byte as %XX (gRPC HTTP/2 spec)."""
    raw = message.encode()[:4096]
    return b"".join(bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in raw)


def trailers_frame(stream: int, status: int, message: str, *, headers_sent: bool) -> bytes:
    """The answer for a refused call: trailers-only (or plain trailers when Triton already sent response headers)."""
    fields = [] if headers_sent else [(b":status", b"200"), (b"content-type", b"application/grpc")]
    fields += [(b"grpc-status", str(status).encode()), (b"grpc-message", percent_encode(message))]
    return frame(HEADERS, END_STREAM | END_HEADERS, stream, literal_block(fields))


def header_fragment(flags: int, payload: bytes) -> bytes:
    """The header block fragment of a HEADERS frame, without padding and priority fields."""
    start, end = 0, len(payload)
    if flags & PADDED:
        if not payload:
            raise ValueError("PADDED HEADERS frame without a pad length")
        start, end = 1, len(payload) - payload[0]
    if flags & PRIORITY_FLAG:
        start += 5
    if start > end:
        raise ValueError("HEADERS padding exceeds the frame")
    return payload[start:end]


def data_payload(flags: int, payload: bytes) -> bytes:
    if flags & PADDED:
        if not payload or payload[0] >= len(payload):
            raise ValueError("DATA padding exceeds the frame")
        return payload[1 : len(payload) - payload[0]]
    return payload


def settings_value(payload: bytes, ident: int) -> int | None:
    """One setting of a SETTINGS frame's payload, if it carries it (the last one wins)."""
    found = None
    for i in range(0, len(payload) - 5, 6):
        if int.from_bytes(payload[i : i + 2], "big") == ident:
            found = int.from_bytes(payload[i + 2 : i + 6], "big")
    return found


_INDEXED_ONLY = re.compile(rb"[\x80-\xfe]*")  # HPACK "indexed header field" representations of one byte each


class BlockDecoder(hpack.Decoder):
    """Decodes every client header block in order, so its table stays the one Triton's decoder has. A block of
    one-byte indexed fields only (a repeated call's usual block) changes no table: its result is reused until a
    block that does change the table."""

    def __init__(self) -> None:
        super().__init__(max_header_list_size=1 << 20)
        self.cache: dict[bytes, list[tuple[str, str]]] = {}

    def decode_block(self, data: bytes) -> list[tuple[str, str]]:
        got = self.cache.get(data)
        if got is not None:
            return got
        headers = cast("list[tuple[str, str]]", self.decode(data))  # str pairs: raw=False
        if _INDEXED_ONLY.fullmatch(data):
            if len(self.cache) < 64:
                self.cache[data] = headers
        else:
            self.cache.clear()
        return headers


class Stream:
    """One call's state in the front: what is held, where its messages are, the pins it holds."""

    __slots__ = (
        "check", "checking", "client_ended", "code", "cold", "compressed", "done", "encoding", "headers_sent", "held",
        "messages", "method", "model", "mux", "prefix", "principal", "recorded", "remaining", "scanner", "scanning",
        "sid", "size", "t0", "t_answer", "t_up", "ticket", "timer", "trace", "unscanned", "wu", "zbuf",
    )  # fmt: skip
    ticket: Ticket | None  # what admission holds for the call (slot, pin): released by end()
    mux: object | None  # an h2_mux.MuxCall: a multiplexed model's call, retargeted at its host

    def __init__(self, sid: int, method: str, scanning: bool) -> None:
        self.sid, self.method = sid, method
        self.scanning = scanning  # every DATA byte is read before it is forwarded (calls that name a model)
        self.done = False  # refused: its frames are dropped (DATA credited) until the client ends it
        self.checking = False  # an async check (model load) is running: frames wait in held
        self.check: asyncio.Task[None] | None = None
        self.held: list[bytes] = []
        self.prefix = bytearray()  # the 5-byte gRPC message prefix being read
        self.scanner: NameScanner | None = None  # the current message's fields, while it lasts
        self.size = self.remaining = self.wu = 0  # the current message's size, its bytes still to come;
        # Triton's stream WINDOW_UPDATE credit (counted for h2_mux)
        self.compressed = False
        self.zbuf = bytearray()  # a compressed message is read whole (at most MAX_HEAD bytes)
        self.messages = 0
        self.unscanned = bytearray()
        self.ticket = self.mux = None
        self.timer: asyncio.TimerHandle | None = None  # unary calls: the gateway's request timeout
        self.client_ended = self.headers_sent = False
        self.principal: Principal = ANONYMOUS
        self.encoding = "identity"
        # what h2_stats.record_call reads when the call ends: one perf_counter here, one when the first message
        # goes to Triton, one when Triton's answer starts, one at the end
        self.t0 = perf_counter()
        self.t_up = self.t_answer = 0.0
        self.code = UNSET  # the gRPC status the client got (Triton's trailers, the gateway's refusal, a reset)
        self.model = ""  # the first model admission was asked for (ModelStreamInfer: its first message's)
        self.cold: float | None = None  # seconds admission waited for a model to load
        self.recorded = False
        self.trace: str | None = None  # the call's traceparent, kept only when the access log is on


class FrameWriter:
    """One direction's writer: forwarded frames in order; injected frames only where a frame may start."""

    __slots__ = ("batch", "held", "in_block", "pending", "ready", "t")

    def __init__(self, ready: bool) -> None:
        self.t: asyncio.Transport | None = None
        self.pending: list[bytes] = []  # forwarded before the transport exists (upstream still connecting)
        self.held: list[bytes] = []  # injected while a header block is open or before the server preface
        self.in_block = False
        self.ready = ready
        self.batch: list[bytes] | None = None  # while one read is processed: one write (one syscall) at its end

    def fwd(self, data: bytes) -> None:
        if self.batch is not None:
            self.batch.append(data)
        elif self.t is None:
            self.pending.append(data)
        else:
            self.t.write(data)

    def cork(self) -> None:
        self.batch = []

    def uncork(self) -> None:
        batch, self.batch = self.batch, None
        data = b"".join(batch) if batch else b""
        if data:
            self.fwd(data)

    def inject(self, data: bytes) -> None:
        if self.in_block or not self.ready:
            self.held.append(data)
        else:
            self.fwd(data)

    def unblock(self) -> None:
        if self.held and self.ready and not self.in_block:
            data = b"".join(self.held)
            self.held.clear()
            self.fwd(data)

    def attach(self, t: asyncio.Transport) -> None:
        self.t = t
        if self.pending:
            t.write(b"".join(self.pending))
            self.pending.clear()


class Rewrites(Protocol):
    """What ``TritonReader`` needs of the connection's multiplexed-call rewriting (``h2_mux.Flow``)."""

    counting: bool
    short_up: bool
    up_init: int
    gate: Stream | None
    waiting: list[Stream]

    def triton_wu(self, c: Forwarder, raw: bytes) -> bytes: ...

    def retry_up(self, c: Forwarder) -> None: ...

    def forward_down(self, c: Forwarder, s: Stream, raw: bytes) -> bool: ...


class Forwarder(Protocol):
    """What ``TritonReader`` needs of the client-side connection (``h2_front.H2Connection``)."""

    down: FrameWriter
    up: FrameWriter
    streams: dict[int, Stream]
    decoder: BlockDecoder
    max_frame: int

    @property
    def flow(self) -> Rewrites: ...

    def end(self, s: Stream) -> None: ...

    def upstream_gone(self, clean: bool, why: str) -> None: ...


class TritonReader(asyncio.Protocol):
    """Triton -> client: whole frames forwarded; ends of streams release pins; refused streams' frames dropped.

    Triton's header blocks are decoded in order too (``h2_status.TritonStatuses``): the trailers' ``grpc-status`` is
    the call's status in the gateway's metrics; a warm call's blocks cost a dict look-up each."""

    def __init__(self, conn: Forwarder) -> None:
        self.conn = conn
        self.buf = b""
        self.answers = TritonStatuses(BlockDecoder())
        self.block: tuple[int, bytearray, bool] | None = None  # (stream, fragments, END_STREAM) until END_HEADERS

    def data_received(self, data: bytes) -> None:
        c = self.conn
        if c.flow.gate is not None:  # an answer's suffix waits for the client's window: so do Triton's frames
            self.buf += data
            return
        c.down.cork()
        c.up.cork()
        try:
            self._received(data)
        finally:
            c.down.uncork()
            c.up.uncork()

    def resume(self) -> None:
        """Triton's frames go on after an answer's suffix that waited (``h2_mux``)."""
        self._received(b"")

    def _received(self, data: bytes) -> None:  # noqa: C901 (one pass over Triton's frames of a read: the hot path)
        c = self.conn
        out = c.down
        buf = self.buf + data if self.buf else data
        n, i, start, in_block = len(buf), 0, 0, out.in_block
        counting = c.flow.counting
        ended: list[int] = []
        answered: list[Stream] = []  # unary calls whose answer has begun: Triton's work for them is done
        now = 0.0  # one perf_counter per read, taken when a call's answer starts
        statuses = self.answers.statuses
        while n - i >= 9:
            end = i + 9 + int.from_bytes(buf[i : i + 3], "big")
            if end > n:
                break
            t, flags, sid = buf[i + 3], buf[i + 4], int.from_bytes(buf[i + 5 : i + 9], "big") & 0x7FFFFFFF
            s = c.streams.get(sid) if sid else None
            if s is not None and s.done and t in (DATA, RST_STREAM, WINDOW_UPDATE):
                out.fwd(buf[start:i])
                start = end
                if t == DATA and end - i > 9:
                    c.up.inject(window_update(0, end - i - 9))  # Triton's window back for what was dropped
            elif t in (DATA, HEADERS):
                if t == HEADERS:
                    in_block = not flags & END_HEADERS
                    frag = buf[i + 9 : end] if not flags & PAD_PRIO else header_fragment(flags, buf[i + 9 : end])
                    if in_block:  # trailers end the call once their block is whole (the status is read then)
                        self.block = (sid, bytearray(frag), bool(flags & END_STREAM))
                    else:
                        code = statuses.get(frag)
                        if code is None:
                            code = self.answers.decode(frag)
                        if code != UNSET and s is not None and not s.done:
                            s.code = code
                    if s is not None:
                        if not s.headers_sent:
                            s.t_answer = now = now or perf_counter()
                        s.headers_sent = True
                        if s.ticket is not None and s.method == "ModelInfer":
                            answered.append(s)
                elif s is not None and s.mux is not None:  # a multiplexed call's answer (h2_mux)
                    out.fwd(buf[start:i])
                    start = end
                    if c.flow.forward_down(c, s, buf[i:end]):
                        n = end  # its suffix waits for the client's window: the rest of Triton's frames with it
                if flags & END_STREAM and not in_block:
                    ended.append(sid)
            elif t == CONTINUATION:
                in_block = not flags & END_HEADERS
                if self.block is not None:
                    self.block[1].extend(buf[i + 9 : end])
                    if not in_block:
                        bsid, block, block_ends = self.block
                        self.block = None
                        code, bs = self.answers.decode(bytes(block)), c.streams.get(bsid)
                        if code != UNSET and bs is not None and not bs.done:
                            bs.code = code
                        if block_ends:
                            ended.append(bsid)
            elif t == RST_STREAM:
                ended.append(sid)
                if s is not None and s.code == UNSET:
                    s.code = RST_STATUS.get(int.from_bytes(buf[i + 9 : end], "big"), 13)
            elif counting and t == WINDOW_UPDATE:  # for multiplexed calls (h2_mux): cheap while nothing is short
                fl = c.flow
                if s is not None:
                    if end - i == 13:
                        s.wu += int.from_bytes(buf[i + 9 : end], "big") & 0x7FFFFFFF
                        if fl.waiting:
                            fl.retry_up(c)
                elif fl.short_up and not sid:
                    out.fwd(buf[start:i])
                    start = end
                    out.fwd(fl.triton_wu(c, buf[i:end]))
            elif t == SETTINGS and not flags & ACK:
                size = settings_value(buf[i + 9 : end], SETTINGS_HEADER_TABLE_SIZE)
                if size is not None:
                    c.decoder.max_allowed_table_size = size
                frame_max = settings_value(buf[i + 9 : end], SETTINGS_MAX_FRAME_SIZE)
                if frame_max is not None:
                    c.max_frame = frame_max  # what Triton lets the client send: larger frames close the connection
                window = settings_value(buf[i + 9 : end], SETTINGS_INITIAL_WINDOW_SIZE)
                if window is not None:
                    c.flow.up_init = window
            i = end
            if not in_block and out.held:
                out.fwd(buf[start:i])
                start = i
                out.in_block = False
                out.ready = True
                out.unblock()
        if start < i:
            out.fwd(buf[start:i])
        out.in_block = in_block
        if i and not out.ready:
            out.ready = True
            out.unblock()
        self.buf = buf[i:]
        for a in answered:  # the slot and pin end when the answer starts: a client that never reads it (a zero
            if a.ticket is not None:  # flow-control window) cannot hold Triton's concurrency until the timeout
                ticket, a.ticket = a.ticket, None
                ticket.release()
        for sid in ended:  # bookkeeping after the answer is on its way
            s = c.streams.get(sid)
            if s is not None and not s.done:
                if s.code == UNSET:  # ended without trailers (or undecodable ones)
                    s.code = UNKNOWN
                c.end(s)
                del c.streams[sid]

    def pause_writing(self) -> None:
        if self.conn.down.t is not None:
            self.conn.down.t.pause_reading()

    def resume_writing(self) -> None:
        t = self.conn.down.t
        if t is not None and not t.is_closing():
            t.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.upstream_gone(self.buf == b"", f"Triton closed the connection: {exc or 'EOF'}")
