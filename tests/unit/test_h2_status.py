"""``h2_status.TritonStatuses``: the gRPC status of Triton's header blocks, read with a table that follows Triton's
HPACK encoder (hpack's own ``Encoder`` plays Triton here). The look-up by block bytes must never outlive a table
change: after one, the same one-byte block can stand for another status."""

from __future__ import annotations

import hpack

from toolkit.gateway.h2_frames import BlockDecoder
from toolkit.gateway.h2_status import UNKNOWN, UNSET, TritonStatuses


def _status(st: TritonStatuses, block: bytes) -> int:
    """What ``TritonReader`` does per block: the look-up, else a decode."""
    code = st.statuses.get(block)
    return st.decode(block) if code is None else code


def test_a_repeated_block_is_looked_up_until_the_table_changes() -> None:
    enc, st = hpack.Encoder(), TritonStatuses(BlockDecoder())
    headers = [(":status", "200"), ("content-type", "application/grpc")]
    assert _status(st, enc.encode(headers)) == UNSET  # response headers carry no status
    first = enc.encode([("grpc-status", "0")])  # a literal: the entry is added to the table
    assert _status(st, first) == 0 and first not in st.statuses
    ok = enc.encode([("grpc-status", "0")])  # now one indexed byte, the same every call
    assert len(ok) == 1 and _status(st, ok) == 0 and st.statuses[ok] == 0
    assert _status(st, enc.encode(headers)) == UNSET
    # Triton adds "grpc-status: 5" (an error's literal): the newest entry takes the lowest dynamic index, which is
    # the byte that meant "grpc-status: 0" a moment ago
    err = enc.encode([("grpc-message", "unknown model"), ("grpc-status", "5")])
    assert _status(st, err) == 5 and not st.statuses
    again = enc.encode([("grpc-status", "5")])
    assert again == ok  # the same byte ...
    assert _status(st, again) == 5  # ... now read as what it means now, not as the status it had before
    assert _status(st, enc.encode([("grpc-status", "0")])) == 0


def test_odd_statuses_and_a_broken_block() -> None:
    enc, st = hpack.Encoder(), TritonStatuses(BlockDecoder())
    assert _status(st, enc.encode([("grpc-status", "abc")])) == UNKNOWN
    assert st.decode(b"\xff\xff\xff\xff\xff\xff") == UNSET  # an index past any table: decoding stops for good
    assert st.decoder is None and not st.statuses
    assert st.decode(enc.encode([("grpc-status", "0")])) == UNSET
