"""A gRPC call through the frame-forwarding front (``h2_front``), counted and timed as an HTTP request is.

Why a module of its own: the front forwards frames and never holds a call as an object of the metrics path; what a
call needs for its one ``RequestStats.record`` is kept on its ``Stream`` as it goes (start time, first message sent
to Triton, Triton's answer starting, the admitted model, the cold-load wait, the status) and turned into a record
here, once, when the call ends (``H2Connection.end``). The rules for labels and timing are those of the HTTP wing
(``telemetry``), with gRPC's own status as ``code``:

* ``code``: Triton's ``grpc-status`` (its trailers, decoded by ``TritonReader``), the gateway's refusal, CANCELLED
  when the client reset the call or its connection closed first, UNKNOWN when Triton ended it without trailers.
* timed: ``ModelInfer`` (request latency from the call's HEADERS to its end; upstream latency from its message
  going to Triton to Triton's response HEADERS), as HTTP times invocations only. ``ModelStreamInfer`` is counted
  once per call (label: its first message's model) and not timed: its length is the client's choice, not a latency.
* cold-load wait: the time admission waited for a load (``h2_policy``), for any call that waited.
* model label: the admitted model; a name the provider does not know (a refused call, a readiness probe) is ``""``.
"""

from __future__ import annotations

import logging
from time import perf_counter
from typing import TYPE_CHECKING

import hpack

from toolkit.gateway.admission import KSERVE_ENDPOINT
from toolkit.gateway.grpc_service import STREAM
from toolkit.gateway.telemetry import GRPC_API

if TYPE_CHECKING:
    from toolkit.gateway.core import GatewayCore
    from toolkit.gateway.h2_frames import BlockDecoder, Stream

log = logging.getLogger(__name__)
UNSET, CANCELLED, UNKNOWN = -1, 1, 2  # Stream.code before an answer; gRPC's codes for calls that end without one
# gRPC status of a stream Triton reset (the gRPC HTTP/2 spec's mapping; any other code: INTERNAL = 13)
RST_STATUS = {0x7: 14, 0x8: CANCELLED, 0xB: 8, 0xC: 7}  # REFUSED_STREAM, CANCEL, ENHANCE_YOUR_CALM, INADEQUATE_SECURITY
ADMITTED = frozenset(("ModelInfer", STREAM, "ModelMetadata", "ModelConfig"))  # answered OK: their model is known


class TritonStatuses:
    """Triton's header blocks on one connection, decoded in order with a table of their own (as the client's decoder
    keeps it), for the ``grpc-status`` of their trailers.

    ``TritonReader`` runs this for every call, so the usual case is one dict look-up: a warm call's blocks are one-byte
    indexed fields, which change no table, and ``statuses`` maps such a block to its status (``UNSET`` when it has
    none) for as long as ``BlockDecoder``'s cache holds it (``statuses`` is kept a subset of that cache)."""

    __slots__ = ("decoder", "statuses")

    def __init__(self, decoder: BlockDecoder) -> None:
        self.decoder: BlockDecoder | None = decoder  # None once a block failed: calls then read UNKNOWN
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


def record_call(core: GatewayCore, s: Stream) -> None:
    """The call is over: one ``RequestStats`` update (once, whichever way it ended).

    A warm ``ModelInfer`` answered OK takes ``RequestStats.hot``, as the HTTP hot path does (~2,000 instructions
    less than ``record``'s general form); every other call ``record``."""
    s.recorded = True
    stats, code, t_up = core.stats, s.code, s.t_up
    if not code and s.cold is None and s.method == "ModelInfer" and s.t_answer > t_up > 0:
        key = (GRPC_API, KSERVE_ENDPOINT, s.model, 0)
        took, up = perf_counter() - s.t0, s.t_answer - t_up
        stats.hot(key, took, up)
        if stats.access is not None:
            stats.log(key, took, up, None, s.principal.name, s.trace)
        return
    if code == UNSET:
        code = CANCELLED
    model = s.model
    if model and (code or s.method not in ADMITTED) and not core.models.knows(model):
        model = ""  # label values stay bounded: no client-made names
    seconds: float | None = None
    upstream: float | None = None
    if s.method == "ModelInfer":
        seconds = perf_counter() - s.t0
        if t_up and s.t_answer > t_up:
            upstream = s.t_answer - t_up
    stats.record(GRPC_API, KSERVE_ENDPOINT, model, code, seconds, upstream, s.cold, s.principal.name, s.trace)
