"""A minimal HTTP/2 gRPC client connection for the load generator: unary KServe v2 calls on one blocking socket.

Why not grpcio: under gevent every grpcio call hops between the gevent hub and gRPC's completion-queue thread, and
even with plain threads grpcio's Python layer costs ~200-300 µs of client CPU per call; on a 2-core machine that CPU
is taken from Triton and the gRPC user measured 0.67x perf_analyzer's throughput with p50 +39%. Here a call is one
pre-built byte string (HEADERS + DATA frames; only the two stream ids change) written with the other calls of the
same loop turn in one ``send``, and an answer is found by walking 9-byte frame headers. Response header blocks are
HPACK-decoded (``hpack``) in order, with a cache for blocks of indexed fields only (Triton's repeated answers), so
``grpc-status`` and ``grpc-message`` are read for every call. The response message itself is not parsed.

Scope: what a unary load test needs. Flow control is honoured both ways (we announce the largest windows and top up
the connection window; our DATA waits for the server's connection window), SETTINGS/PING are acknowledged, GOAWAY
and RST_STREAM end the calls they concern. No TLS, no compression, request messages up to 64 KiB (larger ones are
refused with a message: use ``--grpc-client grpcio``, which the runner also uses for the step/ramp shapes).
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

import hpack

from toolkit.loadtest.scenario import LoadTestError

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
MAX_WINDOW = 2**31 - 1
MAX_MESSAGE = 64 * 1024  # our request messages must fit in one default stream window (65,535) with the prefix
MAX_STREAM_ID = 2**31 - 1
CHUNK = 16384  # DATA frames no larger than the default SETTINGS_MAX_FRAME_SIZE
METHOD = "/inference.GRPCInferenceService/ModelInfer"
# grpc-status numbers -> names (the gRPC spec's codes; grpcio's StatusCode names without the enum prefix)
STATUS = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
          "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
          "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")  # fmt: skip
_U32 = struct.Struct(">I")
_INDEXED_ONLY = re.compile(rb"[\x80-\xff]*")


class H2Error(ConnectionError):
    """The connection cannot carry more calls (GOAWAY, a protocol violation, the stream ids ran out)."""


def frame(ftype: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return bytes((n >> 16 & 0xFF, n >> 8 & 0xFF, n & 0xFF, ftype, flags)) + _U32.pack(stream) + payload


def _literal(name: bytes, value: bytes) -> bytes:
    """HPACK 'literal header field without indexing, new name' (lengths < 127 here): leaves no table state."""
    if len(name) >= 127 or len(value) >= 127:
        raise LoadTestError(f"header {name!r} too long for the raw gRPC client")
    return b"\x00" + bytes((len(name),)) + name + bytes((len(value),)) + value


@dataclass
class Call:
    """One prepared call: frame templates split where the stream id goes (``parts[i] + sid + parts[i+1]``)."""

    parts: list[bytes]
    data_len: int  # bytes of DATA payload (counted against the server's connection window)

    def encode(self, sid: int) -> bytes:
        return _U32.pack(sid).join(self.parts)


def prepare_call(authority: str, message: bytes) -> Call:
    """HEADERS (static-table :method POST and :scheme http, literal others) + DATA frames with the gRPC prefix."""
    if len(message) > MAX_MESSAGE:
        raise LoadTestError(f"request message of {len(message)} bytes: the raw gRPC client sends up to {MAX_MESSAGE}")
    block = b"\x83\x86" + b"".join(
        _literal(n, v)
        for n, v in (
            (b":path", METHOD.encode()),
            (b":authority", authority.encode()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"user-agent", b"tritonctl-loadtest"),
        )
    )
    body = b"\x00" + _U32.pack(len(message)) + message
    heads = [frame(HEADERS, END_HEADERS, 0, block)[:5]]  # then sid, then the block + the first DATA frame head
    tails = [block]
    chunks = [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)]
    for j, chunk in enumerate(chunks):
        flags = END_STREAM if j == len(chunks) - 1 else 0
        heads.append(frame(DATA, flags, 0, chunk)[:5])
        tails.append(chunk)
    parts = [heads[0]] + [tails[k] + heads[k + 1] for k in range(len(chunks))] + [tails[-1]]
    return Call(parts, len(body))


@dataclass
class Stream:
    user: int
    target: int
    t0: float  # perf_counter at send
    status: str | None = None
    message: str = ""
    got_data: bool = False


@dataclass
class Connection:
    """One HTTP/2 connection; ``feed`` turns received bytes into finished calls ``(Stream, error or None)``."""

    sock: socket.socket
    streams: dict[int, Stream] = field(default_factory=dict)
    next_sid: int = 1
    send_window: int = 65535  # the server's connection-level window for our DATA
    max_streams: int = MAX_STREAM_ID  # the server's SETTINGS_MAX_CONCURRENT_STREAMS (unlimited until it says)
    consumed: int = 0  # DATA bytes received since our last connection WINDOW_UPDATE
    buf: bytearray = field(default_factory=bytearray)
    out: list[bytes] = field(default_factory=list)  # control frames to send with the next write
    pending_block: bytearray | None = None  # a header block continued by CONTINUATION frames
    pending_sid: int = 0
    pending_end: bool = False
    decoder: Any = field(default_factory=hpack.Decoder)
    cache: dict[bytes, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def open(cls, host: str, port: int, timeout: float) -> Connection:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        settings = struct.pack(">HIHI", 0x2, 0, 0x4, MAX_WINDOW)  # no push; largest stream windows
        sock.sendall(
            PREFACE + frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, _U32.pack(MAX_WINDOW - 65535))
        )
        return cls(sock)

    def start(self, call: Call, user: int, target: int, t0: float) -> bytes | None:
        """The bytes of a new call (the caller batches them into one send), or None while the server's window is
        short or its limit of concurrent streams is reached (the user waits for an answer or a WINDOW_UPDATE)."""
        if call.data_len > self.send_window or len(self.streams) >= self.max_streams:
            return None
        sid = self.next_sid
        if sid > MAX_STREAM_ID:
            raise H2Error("stream ids exhausted")
        self.next_sid += 2
        self.send_window -= call.data_len
        self.streams[sid] = Stream(user, target, t0)
        return call.encode(sid)

    def cancel(self, sid: int) -> None:
        self.streams.pop(sid, None)
        self.out.append(frame(RST_STREAM, 0, sid, _U32.pack(0x8)))

    def control(self) -> bytes:
        """Control frames owed to the server (acks, window updates), to prepend to the next write."""
        if self.consumed > 1 << 30:
            self.out.append(frame(WINDOW_UPDATE, 0, 0, _U32.pack(self.consumed)))
            self.consumed = 0
        if not self.out:
            return b""
        data, self.out = b"".join(self.out), []
        return data

    def feed(self, data: bytes) -> list[tuple[Stream, str | None]]:
        """Walk the complete frames in the buffer; returns the calls they finished (error text or None)."""
        buf = self.buf
        buf += data
        done: list[tuple[Stream, str | None]] = []
        pos, n = 0, len(buf)
        while n - pos >= 9:
            length = buf[pos] << 16 | buf[pos + 1] << 8 | buf[pos + 2]
            end = pos + 9 + length
            if end > n:
                break
            ftype, flags = buf[pos + 3], buf[pos + 4]
            sid = _U32.unpack_from(buf, pos + 5)[0] & 0x7FFFFFFF
            payload = bytes(buf[pos + 9 : end])
            pos = end
            if ftype == DATA:
                self.consumed += length
                self._data(sid, flags, done)
            elif ftype in (HEADERS, CONTINUATION):
                self._headers(ftype, sid, flags, payload, done)
            else:
                self._other(ftype, sid, flags, payload, done)
        del buf[:pos]
        return done

    def _data(self, sid: int, flags: int, done: list[tuple[Stream, str | None]]) -> None:
        s = self.streams.get(sid)
        if s is None:
            return
        s.got_data = True
        if flags & END_STREAM:
            del self.streams[sid]
            done.append((s, "gRPC: the stream ended without a grpc-status"))

    def _headers(self, ftype: int, sid: int, flags: int, payload: bytes, done: list[tuple[Stream, str | None]]) -> None:
        if ftype == HEADERS:
            start, stop = 0, len(payload)
            if flags & PADDED:
                start, stop = 1, len(payload) - payload[0]
            if flags & PRIORITY_FLAG:
                start += 5
            self.pending_block, self.pending_sid, self.pending_end = (
                bytearray(payload[start:stop]),
                sid,
                bool(flags & END_STREAM),
            )
        elif self.pending_block is None or sid != self.pending_sid:
            raise H2Error("CONTINUATION without an open header block")
        else:
            self.pending_block += payload
        if not flags & END_HEADERS:
            return
        block, self.pending_block = bytes(self.pending_block), None
        fields = self._decode(block)  # every block, in order: the HPACK table must follow the server's
        s = self.streams.get(sid)
        if s is None:
            return
        if "grpc-status" in fields:
            s.status, s.message = fields["grpc-status"], fields.get("grpc-message", "")
        if self.pending_end:
            del self.streams[sid]
            done.append((s, _error(s)))

    def _decode(self, block: bytes) -> dict[str, str]:
        got = self.cache.get(block)
        if got is not None:
            return got
        fields = {str(k): str(v) for k, v in self.decoder.decode(block)}
        if _INDEXED_ONLY.fullmatch(block):  # no table change: the same bytes mean the same fields until one does
            if len(self.cache) < 64:
                self.cache[block] = fields
        else:
            self.cache.clear()
        return fields

    def _other(self, ftype: int, sid: int, flags: int, payload: bytes, done: list[tuple[Stream, str | None]]) -> None:
        if ftype == SETTINGS and not flags & ACK:
            for i in range(0, len(payload) - 5, 6):
                if int.from_bytes(payload[i : i + 2], "big") == 0x3:  # SETTINGS_MAX_CONCURRENT_STREAMS
                    self.max_streams = int.from_bytes(payload[i + 2 : i + 6], "big")
            self.out.append(frame(SETTINGS, ACK, 0))
        elif ftype == PING and not flags & ACK:
            self.out.append(frame(PING, ACK, 0, payload))
        elif ftype == WINDOW_UPDATE and sid == 0:
            self.send_window += _U32.unpack_from(payload)[0] & 0x7FFFFFFF
        elif ftype == RST_STREAM:
            s = self.streams.pop(sid, None)
            if s is not None:
                done.append((s, f"gRPC RST_STREAM: error code {_U32.unpack_from(payload)[0]}"))
        elif ftype == GOAWAY:
            code = _U32.unpack_from(payload, 4)[0]
            raise H2Error(f"GOAWAY (error code {code}) {payload[8:200].decode(errors='replace')}".strip())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _error(s: Stream) -> str | None:
    if s.status == "0":
        return None if s.got_data else "gRPC OK without a response message"
    if s.status is None:
        return "gRPC: no grpc-status in the trailers"
    code = int(s.status) if s.status.isdigit() else -1
    name = STATUS[code] if 0 <= code < len(STATUS) else f"status {s.status}"
    from urllib.parse import unquote

    return f"gRPC {name}: {unquote(s.message)}"
