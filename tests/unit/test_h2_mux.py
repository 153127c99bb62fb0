"""The gRPC retargeting of multiplexed calls (``h2_mux``) against protobuf's own parser (differential, generated).

The property that matters for access control: for any request the gateway's scanner accepts as naming model M (the
client's own ``tritonctl_mux_model`` anywhere in it, repeated, in odd encodings), the bytes Triton receives, in any
framing and padding, parse (tritonclient's protobuf classes) to model_name = the host and
parameters[tritonctl_mux_model] = M, with everything else the client sent unchanged. Answers parse to the model's name
with everything else unchanged. Flow control: a suffix waits for window and never takes more than was granted.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb

from toolkit.gateway import h2_frames as f
from toolkit.gateway.h2_mux import RESERVE, SLACK, Flow, MuxCall, request_suffix, response_suffix
from toolkit.gateway.mux_rewrite import MUX_PARAM
from toolkit.gateway.protowire import ProtoError, model_of

EXAMPLES = int(os.environ.get("TRITONCTL_FUZZ_EXAMPLES", "1500"))
fuzz = settings(max_examples=EXAMPLES // 3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HOST = "tritonctl_mux_0123abcd"


class Conn:
    """The two writers a connection has (``FrameWriter`` without a transport keeps what it is given)."""

    def __init__(self) -> None:
        self.up = f.FrameWriter(ready=True)
        self.down = f.FrameWriter(ready=True)
        self.streams: dict[int, f.Stream] = {}

    @staticmethod
    def frames(w: f.FrameWriter) -> list[tuple[int, int, int, bytes]]:
        buf, out = b"".join(w.pending), []
        while buf:
            n = int.from_bytes(buf[:3], "big")
            out.append((buf[3], buf[4], int.from_bytes(buf[5:9], "big"), f.data_payload(buf[4], buf[9 : 9 + n])))
            buf = buf[9 + n :]
        return out


def varint(n: int, extra: int = 0) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n | (0x80 if extra else 0))
    out += b"\x80" * (extra - 1) + b"\x00" if extra else b""
    return bytes(out)


def ld(field: int, value: bytes, extra: int = 0) -> bytes:
    return varint(field << 3 | 2, extra) + varint(len(value), extra) + value


names = st.sampled_from(["housing_Chicago_IL", "housing_Houston_TX", "m", "", "é" * 3, "x" * 128])
params = st.one_of(
    st.builds(lambda v: ld(3, v.encode()), names),  # string_param
    st.builds(lambda v: b"\x08" + varint(v), st.integers(0, 1)),  # bool_param
    st.builds(lambda v: b"\x10" + varint(v, 1), st.integers(0, 1 << 40)),  # int64_param, non-canonical
    st.just(b""),
)


@st.composite
def entry(draw: st.DrawFn) -> bytes:
    """A field-4 map entry, as an attacker may write one: the mux key or another, in any order, repeated, with
    unknown fields and non-canonical varints."""
    key = ld(1, draw(st.sampled_from([MUX_PARAM, MUX_PARAM, "x", ""])).encode(), draw(st.sampled_from([0, 0, 1])))
    value = ld(2, draw(params), draw(st.sampled_from([0, 0, 1])))
    parts = draw(st.permutations([key, value, draw(st.sampled_from([b"", key, value, b"\x18\x05", ld(9, b"zz")]))]))
    return ld(4, b"".join(parts), draw(st.sampled_from([0, 0, 2])))


@st.composite
def request(draw: st.DrawFn) -> tuple[str, bytes]:
    model = draw(names)
    req = pb.ModelInferRequest(model_name=model, id=draw(st.text(max_size=8)))
    for k in draw(st.lists(st.sampled_from([MUX_PARAM, "a", "sequence_id"]), max_size=3)):
        req.parameters[k].string_param = draw(names)
    t = req.inputs.add(name="raw", datatype="FP32")
    t.shape.extend([1, 2])
    req.raw_input_contents.append(draw(st.binary(min_size=8, max_size=8)))
    before, after = draw(st.lists(entry(), max_size=3)), draw(st.lists(entry(), max_size=3))
    return model, b"".join(before) + req.SerializeToString() + b"".join(after)


@st.composite
def framing(draw: st.DrawFn, body: bytes) -> list[bytes]:
    """``body`` as a gRPC message in DATA frames of stream 1: cut anywhere, some padded, END_STREAM on the last one
    or on an empty frame after it."""
    msg = b"\0" + len(body).to_bytes(4, "big") + body
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(msg) - 1)), max_size=6))))
    pieces = [msg[a:b] for a, b in zip([0, *cuts], [*cuts, len(msg)], strict=True)]
    if draw(st.booleans()):
        pieces.append(b"")
    out = []
    for k, p in enumerate(pieces):
        end = f.END_STREAM if k == len(pieces) - 1 else 0
        pad = draw(st.sampled_from([None, None, 0, 3]))
        out.append(
            f.frame(f.DATA, end, 1, p)
            if pad is None
            else f.frame(f.DATA, end | f.PADDED, 1, bytes((pad,)) + p + b"\0" * pad)
        )
    return out


def _stream(c: Conn, method: str, model: str) -> f.Stream:
    s = f.Stream(1, method, True)
    s.mux = MuxCall(method, HOST, model)
    c.streams[1] = s
    return s


def _forward(flow: Flow, c: Conn, s: f.Stream, frames: list[bytes], first: int) -> None:
    """As the front does: the frames held until the prefix is read, then the rest as they come."""
    flow.forward_up(c, s, frames[:first])
    for fr in frames[first:]:
        flow.forward_up(c, s, [fr])


def _message(frames: list[tuple[int, int, int, bytes]], ended: bool = True) -> bytes:
    """The one message of stream 1's DATA frames (its prefix checked); END_STREAM only on the last frame."""
    assert all(t == f.DATA and sid == 1 for t, _, sid, _ in frames)
    assert [fl & f.END_STREAM for _, fl, _, _ in frames][:-1] == [0] * (len(frames) - 1)
    assert bool(frames[-1][1] & f.END_STREAM) == ended
    msg = b"".join(p for *_, p in frames)
    assert msg[0] == 0 and int.from_bytes(msg[1:5], "big") == len(msg) - 5
    return msg[5:]


@fuzz
@given(data=st.data())
def test_triton_reads_the_host_and_the_admitted_model_whatever_the_client_sent(data: st.DataObject) -> None:
    model, body = data.draw(request())
    try:
        client = pb.ModelInferRequest.FromString(body)
        scanned = model_of(body)
    except (ProtoError, Exception):
        assume(False)
    assert scanned == client.model_name == model
    frames = data.draw(framing(body))
    first = data.draw(st.integers(1, len(frames)))
    assume(sum(len(f.data_payload(fr[4], fr[9:])) for fr in frames[:first]) >= 5)
    c, flow = Conn(), Flow()
    flow.up_slack, flow.up_init, flow.reserve = SLACK, 1 << 20, RESERVE
    _forward(flow, c, _stream(c, "ModelInfer", model), frames, first)
    got = pb.ModelInferRequest.FromString(_message(Conn.frames(c.up)))
    assert got.model_name == HOST and got.model_version == ""
    assert got.parameters[MUX_PARAM].WhichOneof("parameter_choice") == "string_param"
    assert got.parameters[MUX_PARAM].string_param == model
    client.model_name, client.model_version = HOST, ""
    client.parameters[MUX_PARAM].Clear()
    client.parameters[MUX_PARAM].string_param = model
    assert got == client  # nothing else changed


@fuzz
@given(data=st.data(), model=names)
def test_answers_read_the_models_name_and_nothing_else_changes(data: st.DataObject, model: str) -> None:
    outs = data.draw(st.lists(st.binary(max_size=40), max_size=3))
    answers = [
        ("ModelInfer", pb.ModelInferResponse(model_name=HOST, model_version="1", raw_output_contents=outs)),
        ("ModelMetadata", pb.ModelMetadataResponse(name=HOST, versions=["1"], platform="python")),
        ("ModelConfig", pb.ModelConfigResponse(config=mc.ModelConfig(name=HOST, backend="python", max_batch_size=8))),
    ]
    for method, answer in answers:
        c, flow = Conn(), Flow()
        flow.down_slack = SLACK
        s = _stream(c, method, model)
        frames = data.draw(framing(answer.SerializeToString()))
        assert not any(flow.forward_down(c, s, fr) for fr in frames)
        got = type(answer).FromString(_message(Conn.frames(c.down)))
        if method == "ModelConfig":
            answer.config.name = model
        elif method == "ModelInfer":
            answer.model_name = model
        else:
            answer.name = model
        assert got == answer


def test_a_request_suffix_waits_for_tritons_windows() -> None:
    """No slack yet (Triton's connection credit not kept back), then a stream window 3 bytes short: the suffix, and
    the client's END_STREAM frame behind it, go only once Triton grants enough; Triton's connection credit reaches
    the client less what the gateway keeps back."""
    model = "housing_Chicago_IL"
    body = pb.ModelInferRequest(model_name=model).SerializeToString()
    k = len(request_suffix("ModelInfer", HOST, model))
    c, flow = Conn(), Flow()
    s = _stream(c, "ModelInfer", model)
    flow.up_init, flow.reserve = len(body) + 5 + k - 3, RESERVE
    msg = b"\0" + len(body).to_bytes(4, "big") + body
    flow.forward_up(c, s, [f.frame(f.DATA, 0, 1, msg)])
    flow.forward_up(c, s, [f.frame(f.DATA, f.END_STREAM, 1, b"")])
    assert len(Conn.frames(c.up)) == 1 and flow.waiting == [s]
    relayed = flow.triton_wu(c, f.window_update(0, SLACK + 100))
    assert relayed == f.window_update(0, 100) and flow.up_slack == SLACK  # kept back: no more than SLACK
    assert len(Conn.frames(c.up)) == 1  # the stream window is still short
    s.wu += 2  # a stream's update passes unchanged: TritonReader counts it and retries
    flow.retry_up(c)
    assert len(Conn.frames(c.up)) == 1
    s.wu += 1
    flow.retry_up(c)
    frames = Conn.frames(c.up)
    assert len(frames) == 3 and frames[1][3] == request_suffix("ModelInfer", HOST, model)
    assert flow.up_slack == SLACK - k and not flow.waiting
    assert pb.ModelInferRequest.FromString(_message(frames)).model_name == HOST
    assert flow.triton_wu(c, f.window_update(0, k)) == b""  # the slack refills first


def test_an_answers_suffix_waits_for_the_clients_credit_and_a_reset_lets_triton_go_on() -> None:
    c, flow = Conn(), Flow()
    s = _stream(c, "ModelInfer", "m")
    body = pb.ModelInferResponse(model_name=HOST).SerializeToString()
    answer = f.frame(f.DATA, 0, 1, b"\0" + len(body).to_bytes(4, "big") + body)
    assert flow.forward_down(c, s, answer)  # no slack yet
    assert flow.gate is s and len(Conn.frames(c.down)) == 1
    assert flow.client_wu(c, f.window_update(0, 2)) == b""  # kept back: not enough yet
    assert flow.gate is s
    assert flow.client_wu(c, f.window_update(0, SLACK)) == f.window_update(0, 2)
    assert flow.gate is None and flow.down_slack == SLACK - 3
    assert pb.ModelInferResponse.FromString(_message(Conn.frames(c.down), ended=False)).model_name == "m"
    assert Conn.frames(c.down)[1][3] == response_suffix("ModelInfer", "m")
    c2, flow2 = Conn(), Flow()
    s2 = _stream(c2, "ModelInfer", "m")
    assert flow2.forward_down(c2, s2, answer)
    flow2.release(s2)
    assert flow2.gate is None


@given(
    first=st.booleans(),
    pairs=st.lists(st.tuples(st.sampled_from([1, 3, 4, 4, 5, 6, 9]), st.integers(0, (1 << 31) - 1)), max_size=5),
)
def test_client_settings_reach_triton_with_every_stream_window_less_the_reserve(
    first: bool, pairs: list[tuple[int, int]]
) -> None:
    """Triton's view of the client's stream windows is the client's less ``flow.reserve`` (>= a suffix, or the call
    is refused), whatever the SETTINGS; everything else in them unchanged."""
    flow = Flow()
    flow.settings = not first
    payload = b"".join(k.to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in pairs)
    out = flow.client_settings(f.frame(f.SETTINGS, 0, 0, payload))
    assert out[3] == f.SETTINGS and out[4] == 0 and int.from_bytes(out[:3], "big") == len(out) - 9
    got = f.settings_value(out[9:], f.SETTINGS_INITIAL_WINDOW_SIZE)
    sent = f.settings_value(payload, f.SETTINGS_INITIAL_WINDOW_SIZE)
    if sent is None and first:
        sent = 65535
    assert got == (None if sent is None else sent - flow.reserve)
    if sent is not None:
        assert flow.reserve == min(RESERVE, sent // 2)
    for ident in (1, 3, 5, 6, 9):
        assert f.settings_value(out[9:], ident) == f.settings_value(payload, ident)
    m = MuxCall("ModelInfer", HOST, "x" * 128)
    s = f.Stream(1, "ModelInfer", True)
    s.mux = m
    assert flow.forward_up(Conn(), s, [f.frame(f.DATA, 0, 1, b"\0\0\0\0\0")]) == (len(m.down) <= flow.reserve)


def _sent(w: f.FrameWriter) -> int:
    """DATA payload bytes written (and forgets them)."""
    n = sum(len(p) for t, _, _, p in Conn.frames(w) if t == f.DATA)
    w.pending.clear()
    return n


def _plenty(flow: Flow, c: Conn) -> None:
    """Both peers grant plenty, as the readers pass it on (to Flow only while a side is short)."""
    for _ in range(2):
        if flow.short_up:
            flow.triton_wu(c, f.window_update(0, 1 << 20))
        if flow.short_down:
            flow.client_wu(c, f.window_update(0, 1 << 20))


@fuzz
@given(data=st.data())
def test_no_side_ever_believes_in_more_connection_window_than_the_other_grants(data: st.DataObject) -> None:
    """Random interleavings of plain and multiplexed calls and both peers' WINDOW_UPDATEs, through the Flow calls the
    readers make: the sender's view of each connection window is never above the receiver's, and every suffix goes
    once enough credit came."""
    c, flow = Conn(), Flow()
    flow.up_init, flow.reserve = 1 << 30, RESERVE  # stream windows are not what this is about
    up_true = up_view = down_true = down_view = 65535  # (Triton's window, the client's view; and the reverse)
    sid, answers = 1, []
    for _ in range(data.draw(st.integers(1, 40))):
        action = data.draw(st.sampled_from(["plain", "mux", "triton_wu", "client_wu", "answer"]))
        if action in ("plain", "mux") and up_view > 0:
            size = data.draw(st.integers(0, min(up_view, 3000) - 5)) if up_view > 5 else -1
            if size < 0:
                continue
            msg = b"\0" + size.to_bytes(4, "big") + bytes(size)
            up_view -= len(msg)
            if action == "plain":
                up_true -= len(msg)
            else:
                s = c.streams[sid] = f.Stream(sid, "ModelInfer", True)
                s.mux = MuxCall("ModelInfer", HOST, "m" * data.draw(st.integers(1, 128)))
                flow.forward_up(c, s, [f.frame(f.DATA, f.END_STREAM, sid, msg)])
                up_true -= _sent(c.up)
                answers.append(s)
                sid += 2
        elif action == "triton_wu":
            inc = data.draw(st.integers(1, 20000))
            up_true += inc
            raw = f.window_update(0, inc)
            if flow.short_up:  # as TritonReader does
                raw = flow.triton_wu(c, raw)
            up_view += int.from_bytes(raw[9:13], "big") if raw else 0
            up_true -= _sent(c.up)
        elif action == "client_wu":
            inc = data.draw(st.integers(1, 20000))
            down_true += inc
            raw = f.window_update(0, inc)
            if flow.short_down:  # as H2Connection does
                raw = flow.client_wu(c, raw)
            down_view += int.from_bytes(raw[9:13], "big") if raw else 0
            down_true -= _sent(c.down)
        elif action == "answer" and answers and flow.gate is None and down_view > 5:
            s = answers.pop(0)
            body = pb.ModelInferResponse(model_name=HOST).SerializeToString()[: max(0, down_view - 5)]
            msg = b"\0" + len(body).to_bytes(4, "big") + body
            down_view -= len(msg)
            flow.forward_down(c, s, f.frame(f.DATA, 0, s.sid, msg))
            down_true -= _sent(c.down)
        assert 0 <= up_view <= up_true and 0 <= down_view <= down_true, (up_view, up_true, down_view, down_true)
    _plenty(flow, c)
    assert not flow.waiting and flow.gate is None and flow.up_slack == flow.down_slack == SLACK
    assert not flow.short_up and not flow.short_down
