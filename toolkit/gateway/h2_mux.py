"""A gRPC call to a multiplexed model, retargeted at its host by the frame-forwarding front (``h2_front``).

Why by appending: protobuf (and so Triton, and tritonclient) takes the *last* occurrence of a scalar field and the
last entry of a map key, and every field of a message the gateway forwards has been walked to its end (``protowire``:
the client's bytes end on a field boundary). So the request is retargeted by appending fields after the client's
last byte: ``model_name`` = the host, ``model_version`` = "" (HTTP ignores a version too) and, for ModelInfer,
``parameters["tritonctl_mux_model"]`` = the name admission authorized: whatever the client put in its own message,
in any position or encoding, comes earlier and loses. The answer gets ``model_name`` (ModelInfer, ModelMetadata) or
``config.name`` (ModelConfig: a repeated embedded message merges) set back to the model's name the same way, so
tritonclient shows what it shows for a model of its own. Only the 5-byte gRPC length prefix of each message changes
in place (held until it is whole); nothing else of either side's frames is re-encoded.

Flow control stays exact: the bytes the gateway adds consume the receiver's windows, which the sender does not know
of. So they are paid from *slack*: connection credit the receiver granted that the gateway did not pass on (at most
``SLACK`` bytes are kept back from each side's connection WINDOW_UPDATEs; Triton and grpc's clients send one with
nearly every write, so it refills at once). The sender's view of a window is never above the receiver's. On a stream
the suffix is the last thing sent: a request's needs Triton's stream window (counted from its SETTINGS and the
stream's updates, which Triton sends only for big requests); an answer's is always there, because the client's
SETTINGS_INITIAL_WINDOW_SIZE reaches Triton less a ``RESERVE`` (so the forwarding path counts no client update). Where
the slack is short, the suffix waits: a request's on its stream (the client's next frames on it queue behind it), an
answer's with Triton's whole frame stream (header blocks must keep their order for the client's HPACK decoder) until
the client's next connection WINDOW_UPDATE. Nothing of this runs on a gateway that serves no multiplexed model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from toolkit.gateway.h2_frames import (
    DATA,
    END_STREAM,
    PADDED,
    SETTINGS,
    SETTINGS_INITIAL_WINDOW_SIZE,
    FrameWriter,
    Stream,
    frame,
    window_update,
)
from toolkit.gateway.h2_frames import MUX_SLACK as SLACK
from toolkit.gateway.mux_rewrite import MUX_PARAM

if TYPE_CHECKING:
    from toolkit.gateway.h2_frames import TritonReader

DEFAULT_WINDOW = 65535  # RFC 7540: a window before SETTINGS or WINDOW_UPDATE change it
RESERVE = 2048  # kept off each stream window of the client as Triton sees it (half of a smaller window): > a suffix
_NAMED = ("ModelInfer", "ModelMetadata")  # answers whose field 1 is the model's name


def _field(number: int, value: bytes) -> bytes:
    """A length-delimited protobuf field (tag, varint length, bytes)."""
    out = bytearray(((number << 3) | 2,))
    n = len(value)
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out) + value


def request_suffix(method: str, host: str, model: str) -> bytes:
    """What follows the client's request so that Triton reads it as a request to ``host`` running ``model``."""
    out = _field(1, host.encode()) + _field(2, b"")
    if method == "ModelInfer":  # InferParameter.string_param is field 3; a map entry is {1: key, 2: value}
        out += _field(4, _field(1, MUX_PARAM.encode()) + _field(2, _field(3, model.encode())))
    return out


def response_suffix(method: str, model: str) -> bytes:
    """What follows the host's answer so that the client reads the model's name where the host's was."""
    if method in _NAMED:
        return _field(1, model.encode())
    if method == "ModelConfig":
        return _field(1, _field(1, model.encode()))
    return b""  # ModelReady: nothing names the model


def patch_prefix(frames: list[bytearray], add: int) -> int | None:
    """The message size in the 5-byte gRPC prefix spread over the first payload bytes of ``frames`` (DATA frames
    of one stream, from its first); the size is raised by ``add`` in place unless the message is compressed.
    None while fewer than 5 payload bytes are there."""
    pos: list[tuple[int, int]] = []
    for k, fr in enumerate(frames):
        start, end = (10, len(fr) - fr[9]) if fr[4] & PADDED else (9, len(fr))
        pos.extend((k, o) for o in range(start, min(end, start + 5 - len(pos))))
        if len(pos) == 5:
            break
    else:
        return None
    head = bytes(frames[k][o] for k, o in pos)
    size = int.from_bytes(head[1:], "big")
    if not head[0] & 1 and size + add < 1 << 32:
        for (k, o), b in zip(pos[1:], (size + add).to_bytes(4, "big"), strict=True):
            frames[k][o] = b
    elif add:
        return -1  # not rewritten (compressed): the caller leaves the message alone
    return size


def _payload_len(raw: bytes | bytearray) -> int:
    return len(raw) - 10 - raw[9] if raw[4] & PADDED else len(raw) - 9


class MuxCall:
    """One call's rewrite: its suffixes, and where each direction's message is."""

    __slots__ = ("down", "gated", "left", "queue", "rframes", "rleft", "sent", "up")

    def __init__(self, method: str, host: str, model: str) -> None:
        self.up = request_suffix(method, host, model)
        self.down = response_suffix(method, model)  # b"" once sent (or when there is none)
        self.sent = 0  # DATA payload (padding included) forwarded to Triton on the stream: its stream window
        self.left = -1  # request bytes (prefix included) still to forward; -1 until the prefix is read
        self.queue: list[bytes | bytearray] | None = None  # the suffix and frames after it, waiting for window
        self.rleft = -1  # answer bytes still to forward; -1 until its prefix is read
        self.rframes: list[bytearray] = []  # the answer's first frames, until its prefix is whole
        self.gated = b""  # the answer's suffix frame while it waits for the client's window


def _keep_back(flow: Flow, slack: str, raw: bytes) -> bytes:
    """A connection WINDOW_UPDATE less the credit that tops ``flow``'s slack up to SLACK (dropped when nothing is
    left: an increment of 0 is a protocol error)."""
    have = getattr(flow, slack)
    if len(raw) != 13 or have >= SLACK:
        return raw  # (malformed: the peer answers it as it would have)
    inc = int.from_bytes(raw[9:13], "big") & 0x7FFFFFFF
    keep = min(inc, SLACK - have)
    setattr(flow, slack, have + keep)
    return window_update(0, inc - keep) if inc > keep else b""


def _call(s: Stream) -> MuxCall:
    assert isinstance(s.mux, MuxCall)
    return s.mux


class Conn(Protocol):
    """What ``Flow`` needs of the client connection (``h2_front.H2Connection``)."""

    up: FrameWriter
    down: FrameWriter
    streams: dict[int, Stream]


class Flow:
    """One client connection's slack in both directions, and the suffixes waiting for window."""

    __slots__ = (
        "answered", "counting", "down_slack", "gate", "reader", "reserve", "settings", "short_down", "short_up",
        "up_init", "up_slack", "waiting",
    )  # fmt: skip

    def __init__(self, counting: bool = True, answered: Callable[[], None] | None = None) -> None:
        """``counting``: the gateway serves multiplexed models. Without, nothing is counted or kept back (the
        slack reads full), so the forwarding path pays nothing for this. ``answered``: called when a host's answer
        arrives (``GatewayCore.mux_answer``: a scrape then waits for the host's counters to include it)."""
        self.counting = counting
        self.answered = answered
        # Triton's / the client's connection window beyond the other's view
        self.up_slack = self.down_slack = 0 if counting else SLACK
        self.up_init = DEFAULT_WINDOW  # Triton's SETTINGS_INITIAL_WINDOW_SIZE
        self.reserve = 0  # the client's stream windows beyond what Triton sees of them (client_settings)
        self.settings = False  # the client's first SETTINGS was relayed
        self.waiting: list[Stream] = []  # requests whose suffix waits for Triton's window
        self.gate: Stream | None = None  # an answer whose suffix waits for the client's window (Triton's frames wait)
        self.reader: TritonReader | None = None
        self.short_up = self.short_down = counting  # a slack below SLACK or a suffix waiting: the readers call in

    def client_settings(self, raw: bytes) -> bytes:
        """The client's SETTINGS as Triton gets them: each INITIAL_WINDOW_SIZE less the reserve (RESERVE, or half of
        a smaller window), the first SETTINGS given one (65535 less RESERVE) when it has none. Every stream window
        Triton sees is then the client's less the same reserve, so an answer's suffix fits (SETTINGS are frames no
        window counts)."""
        if len(raw) % 6 != 3:
            return raw  # malformed: Triton answers it as it would have
        out, named = [], False
        for k in range(9, len(raw), 6):
            p = raw[k : k + 6]
            if int.from_bytes(p[:2], "big") == SETTINGS_INITIAL_WINDOW_SIZE:
                v, named = int.from_bytes(p[2:], "big"), True
                self.reserve = min(RESERVE, v // 2)
                p = p[:2] + (v - self.reserve).to_bytes(4, "big")
            out.append(p)
        if not self.settings and not named:
            self.reserve = RESERVE
            out.append(SETTINGS_INITIAL_WINDOW_SIZE.to_bytes(2, "big") + (DEFAULT_WINDOW - RESERVE).to_bytes(4, "big"))
        self.settings = True
        return frame(SETTINGS, raw[4], 0, b"".join(out))

    # -- client -> Triton ----------------------------------------------------------------------------------------
    def forward_up(self, c: Conn, s: Stream, held: list[bytes]) -> bool:
        """The held frames of a multiplexed call, forwarded: the prefix raised by the suffix's size, the suffix after
        the message's last byte (END_STREAM moved onto it). False (nothing forwarded) when the client's stream
        windows are too small for the answer's suffix (under 2 KiB: its SETTINGS asked for that)."""
        m = _call(s)
        if m.queue is not None:
            m.queue.extend(held)
            return True
        frames: list[bytes | bytearray] = list(held)
        if m.left < 0:
            if len(m.down) > self.reserve:
                return False
            self.short_up = True  # (until its suffix is sent and the slack refilled)
            first = [bytearray(r) for r in held]
            size = patch_prefix(first, len(m.up))
            assert size is not None and size >= 0  # the front holds a message until its prefix is read and admitted
            m.left, frames = 5 + size, list(first)
        out: list[bytes | bytearray] = []
        for k, raw in enumerate(frames):
            m.sent += len(raw) - 9
            out.append(raw)
            if m.left > 0:
                m.left -= _payload_len(raw)
                if m.left == 0:  # the message's last byte: the suffix follows it
                    flags = 0
                    if raw[4] & END_STREAM:
                        raw = bytearray(raw)
                        raw[4] &= ~END_STREAM
                        out[-1], flags = raw, END_STREAM
                    suffix = frame(DATA, flags, s.sid, m.up)
                    if self._fits_up(s, m):
                        self._send_up(c, m, b"".join(out) + suffix)
                        out = []
                    else:
                        c.up.fwd(b"".join(out))
                        out, m.queue = [], [suffix, *frames[k + 1 :]]
                        self.waiting.append(s)
                        return True
        if out:
            c.up.fwd(b"".join(out))
        return True

    def _fits_up(self, s: Stream, m: MuxCall) -> bool:
        k = len(m.up)
        return self.up_slack >= k and self.up_init + s.wu - m.sent >= k

    def _send_up(self, c: Conn, m: MuxCall, data: bytes) -> None:
        self.up_slack -= len(m.up)
        m.sent += len(m.up)
        c.up.fwd(data)

    def triton_wu(self, c: Conn, raw: bytes) -> bytes:
        """Triton's connection WINDOW_UPDATE as the client gets it (credit kept back until the slack is SLACK);
        waiting request suffixes go on when they fit. (Stream updates pass unchanged, counted in ``Stream.wu``.)"""
        raw = _keep_back(self, "up_slack", raw)
        self.retry_up(c)
        self.short_up = self.up_slack < SLACK or bool(self.waiting)
        return raw

    def retry_up(self, c: Conn) -> None:
        """Request suffixes waiting for Triton's window go when they fit."""
        still = []
        for s in self.waiting:
            m = _call(s)
            if m.queue is None or s.done or c.streams.get(s.sid) is not s:
                continue  # reset or refused: its suffix is dropped with it
            if self._fits_up(s, m):
                queue, m.queue = m.queue, None
                self._send_up(c, m, b"".join(queue))
            else:
                still.append(s)
        self.waiting = still

    # -- Triton -> client ----------------------------------------------------------------------------------------
    def forward_down(self, c: Conn, s: Stream, raw: bytes) -> bool:
        """A DATA frame of Triton's answer to a multiplexed call, forwarded with the answer's suffix after its last
        byte; True when that suffix must wait for the client's window (the caller stops forwarding Triton's frames)."""
        m = _call(s)
        if self.answered is not None:
            self.answered()
        if not m.down:
            c.down.fwd(raw)
            return False
        frames: list[bytes | bytearray] = [raw]
        if m.rleft < 0:
            m.rframes.append(bytearray(raw))
            size = patch_prefix(m.rframes, len(m.down))
            if size is None:
                return False  # held until the prefix is whole
            frames, m.rframes = list(m.rframes), []
            if size < 0:  # a compressed answer is forwarded as it is
                m.down = b""
                c.down.fwd(b"".join(frames))
                return False
            m.rleft = 5 + size
        m.rleft -= sum(_payload_len(r) for r in frames)
        if m.rleft > 0:
            c.down.fwd(b"".join(frames))
            return False
        last = bytearray(frames[-1])
        flags = last[4] & END_STREAM
        last[4] &= ~END_STREAM
        frames[-1] = last
        suffix = frame(DATA, flags, s.sid, m.down)
        c.down.fwd(b"".join(frames))
        if self.down_slack >= len(m.down):  # (the stream window: see client_settings)
            self._send_down(c, m, suffix)
            return False
        m.gated, self.gate = suffix, s
        self.short_down = True
        return True

    def _send_down(self, c: Conn, m: MuxCall, suffix: bytes) -> None:
        self.down_slack -= len(m.down)
        self.short_down = True
        m.down = m.gated = b""
        c.down.fwd(suffix)

    def client_wu(self, c: Conn, raw: bytes) -> bytes:
        """The client's connection WINDOW_UPDATE as Triton gets it (credit kept back until the slack is SLACK); a
        waiting answer suffix goes on when it fits. (Stream updates pass unchanged.)"""
        raw = _keep_back(self, "down_slack", raw)
        self.retry_gate(c)
        self.short_down = self.down_slack < SLACK or self.gate is not None
        return raw

    def retry_gate(self, c: Conn) -> None:
        """An answer's suffix waiting for the client's window goes when it fits, and Triton's frames after it."""
        g = self.gate
        if g is not None and self.down_slack >= len((m := _call(g)).down):
            self._send_down(c, m, m.gated)
            self._ungate()

    def holds(self, s: Stream) -> bool:
        """Whether a multiplexed call's request is not yet whole at Triton (its suffix not sent): the client's
        trailers then would end it too early."""
        m = s.mux
        return isinstance(m, MuxCall) and (m.left != 0 or m.queue is not None)

    def release(self, s: Stream) -> None:
        """The call was reset or refused: a suffix waiting for it is dropped (Triton's frames go on)."""
        if self.gate is s:
            self._ungate()

    def _ungate(self) -> None:
        self.gate = None
        if self.reader is not None:
            self.reader.resume()
