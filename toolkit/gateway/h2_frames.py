"""HTTP/2 framing helpers for the frame-forwarding gRPC front (``h2_front``): just enough of RFC 7540 to forward.

The front never re-encodes what Triton or the client wrote; it only builds a few frames of its own (a trailers-only
gRPC answer, RST_STREAM, WINDOW_UPDATE, GOAWAY, SETTINGS/PING acks) and reads the model name out of a gRPC message's
first bytes. Header blocks it writes use literal fields without indexing and literal names, so the client's HPACK
dynamic table is never touched by them: what Triton's encoder and the client's decoder share stays in step.
"""

from __future__ import annotations

import struct
import zlib

import grpc

from toolkit.gateway.grpc_front import _varint

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, CANCEL = 0x0, 0x1, 0x8
SETTINGS_HEADER_TABLE_SIZE = 0x1
MAX_HEAD = 64 * 1024  # bytes of one message held while looking for the model name (field 1) before giving up
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


def settings_table_size(payload: bytes) -> int | None:
    """SETTINGS_HEADER_TABLE_SIZE of a SETTINGS frame, if it carries one (the last one wins)."""
    found = None
    for i in range(0, len(payload) - 5, 6):
        if int.from_bytes(payload[i : i + 2], "big") == SETTINGS_HEADER_TABLE_SIZE:
            found = int.from_bytes(payload[i + 2 : i + 6], "big")
    return found


class NeedMore(Exception):
    """The message's bytes seen so far do not yet decide its model name."""


def model_of(body: bytes, complete: bool) -> str:
    """Field 1 (the model name) of a serialized request, from a prefix of it; NeedMore until it is decided.

    Fields are scanned in order: protobuf serializers write them by number, so field 1 comes first and a few hundred
    bytes decide it; a field before it is skipped by its length, and a message without field 1 decides "" at its end.
    """
    i, n = 0, len(body)
    try:
        while i < n:
            key, i = _varint(body, i)
            field, wire = key >> 3, key & 7
            if wire == 0:
                _, i = _varint(body, i)
            elif wire == 1:
                i += 8
            elif wire == 5:
                i += 4
            elif wire == 2:
                size, i = _varint(body, i)
                if field == 1:
                    if i + size > n:
                        raise NeedMore
                    return body[i : i + size].decode()
                i += size
            else:
                raise ValueError(f"unsupported wire type {wire}")
    except ValueError:
        if complete:
            raise
        raise NeedMore from None
    if i > n or not complete:
        if complete:
            raise ValueError("truncated field")
        raise NeedMore
    return ""


def decompress(body: bytes, encoding: str) -> bytes:
    """A compressed gRPC message (flag byte 1) in the call's ``grpc-encoding``."""
    if encoding == "gzip":
        return zlib.decompress(body, 16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompress(body)
    raise ValueError(f"unsupported grpc-encoding {encoding!r}")
