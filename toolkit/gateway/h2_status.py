"""The gRPC status of each call, read from Triton's answers by the frame forwarder (``h2_frames.TritonReader``).

Why decode Triton's headers at all: the front forwards Triton's frames unchanged, and a call's status is in its
trailers, HPACK-encoded against a table only a decoder that saw every earlier block can follow. Apart from
``h2_stats`` (which records the call and reads ``h2_frames.Stream``) so that ``h2_frames`` can use it without an
import cycle.
"""

from __future__ import annotations

import logging
from typing import Protocol

import hpack

log = logging.getLogger(__name__)
UNSET, CANCELLED, UNKNOWN = -1, 1, 2  # Stream.code before an answer; gRPC's codes for calls that end without one
# gRPC status of a stream Triton reset (the gRPC HTTP/2 spec's mapping; any other code: INTERNAL = 13)
RST_STATUS = {0x7: 14, 0x8: CANCELLED, 0xB: 8, 0xC: 7}  # REFUSED_STREAM, CANCEL, ENHANCE_YOUR_CALM, INADEQUATE_SECURITY


class Decoder(Protocol):
    """What is used of ``h2_frames.BlockDecoder`` (an ``hpack.Decoder`` with a cache of indexed-only blocks)."""

    cache: dict[bytes, list[tuple[str, str]]]
    max_allowed_table_size: int

    def decode_block(self, data: bytes) -> list[tuple[str, str]]: ...


class TritonStatuses:
    """Triton's header blocks on one connection, decoded in order with a table of their own (as the client's decoder
    keeps it), for the ``grpc-status`` of their trailers.

    ``TritonReader`` runs this for every call, so the usual case is one dict look-up: a warm call's blocks are one-byte
    indexed fields, which change no table, and ``statuses`` maps such a block to its status (``UNSET`` when it has
    none) for as long as ``BlockDecoder``'s cache holds it (``statuses`` is kept a subset of that cache)."""

    __slots__ = ("decoder", "statuses")

    def __init__(self, decoder: Decoder) -> None:
        self.decoder: Decoder | None = decoder  # None once a block failed: calls then read UNKNOWN
        decoder.max_allowed_table_size = 1 << 20  # the client enforces its own limit; this only follows it
        self.statuses: dict[bytes, int] = {}

    def decode(self, block: bytes) -> int:
        """A whole block not in ``statuses``: decoded (the table follows Triton's encoder), its status."""
        if self.decoder is None:
            return UNSET
        try:
            headers = self.decoder.decode_block(block)
        except (hpack.HPACKError, ValueError) as exc:
            log.warning("Triton's gRPC headers could not be decoded (statuses read UNKNOWN): %s", exc)
            self.decoder = None
            self.statuses.clear()
            return UNSET
        code = UNSET
        for k, v in headers:
            if k == "grpc-status":
                code = int(v) if v.isdigit() else UNKNOWN
        if block in self.decoder.cache:
            self.statuses[block] = code
        else:  # the table may have changed: an indexed block may now stand for other fields
            self.statuses.clear()
        return code
