"""The gRPC model-name scanner against protobuf's own parser (differential, generated inputs).

The property that matters for access control: whenever protobuf (and so Triton) accepts a message, the scanner
either refuses it or names the same model; fed in any split, it says the same as fed whole; and it never refuses a
message protobuf's own serializer wrote with one model name.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as pb

from toolkit.gateway.protowire import MAX_NAME_BYTES, NameScanner, ProtoError, model_of

EXAMPLES = int(os.environ.get("TRITONCTL_FUZZ_EXAMPLES", "1500"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REFUSED = object()


def varint(n: int, extra: int = 0) -> bytes:
    """n as a varint, with ``extra`` redundant continuation bytes (non-canonical, as an attacker may send)."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if not n:
            out.append(b | (0x80 if extra else 0))
            break
        out.append(b | 0x80)
    for k in range(extra):
        out.append(0x80 if k < extra - 1 else 0x00)
    return bytes(out)


names = st.one_of(st.text(max_size=12), st.sampled_from(["housing_Houston_TX", "digits_logreg", ""]))
field_numbers = st.one_of(st.sampled_from([1, 1, 1, 2, 3, 4, 5, 6, 7]), st.integers(0, (1 << 29) + 2))
wire_types = st.sampled_from([0, 1, 2, 2, 2, 5, 3, 4, 6, 7])


@st.composite
def raw_field(draw: st.DrawFn) -> bytes:
    field, wire = draw(field_numbers), draw(wire_types)
    key = varint(field << 3 | wire, draw(st.sampled_from([0, 0, 0, 1, 4, 5])))
    if wire == 0:
        return key + varint(draw(st.integers(0, 1 << 64)), draw(st.sampled_from([0, 0, 1, 9])))
    if wire == 1:
        return key + draw(st.binary(min_size=8, max_size=8))
    if wire == 5:
        return key + draw(st.binary(min_size=4, max_size=4))
    if wire == 2:
        value = draw(st.one_of(names.map(str.encode), st.binary(max_size=24)))
        return key + varint(len(value), draw(st.sampled_from([0, 0, 1]))) + value
    return key + draw(st.binary(max_size=6))


@st.composite
def hostile_message(draw: st.DrawFn) -> bytes:
    data = b"".join(draw(st.lists(raw_field(), max_size=6)))
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    return data if cut is None else data[:cut]


def reference(data: bytes) -> object:
    try:
        return pb.ModelInferRequest.FromString(data).model_name
    except Exception:  # DecodeError, and the UTF-8 check on strings
        return REFUSED


def ours(data: bytes) -> object:
    try:
        return model_of(data)
    except ProtoError:
        return REFUSED


def chunked(data: bytes, cuts: list[int]) -> object:
    s = NameScanner()
    prev = 0
    try:
        for c in [*sorted({min(c, len(data)) for c in cuts}), len(data)]:
            s.feed(data[prev:c])
            prev = c
        return s.finish()
    except ProtoError:
        return REFUSED


@fuzz
@given(hostile_message(), st.lists(st.integers(0, 200), max_size=5))
def test_never_names_another_model_than_protobuf(data: bytes, cuts: list[int]) -> None:
    got, ref = ours(data), reference(data)
    if got is not REFUSED and ref is not REFUSED:  # (what protobuf rejects, Triton rejects: no model runs)
        assert got == ref, f"scanner says {got!r}, protobuf {ref!r}: {data!r}"
    assert chunked(data, cuts) == got or (chunked(data, cuts) is REFUSED and got is REFUSED)


@st.composite
def real_request(draw: st.DrawFn) -> pb.ModelInferRequest:
    r = pb.ModelInferRequest(model_name=draw(names), model_version=draw(st.sampled_from(["", "1", "7"])))
    r.id = draw(st.text(max_size=8))
    for i in range(draw(st.integers(0, 3))):
        t = r.inputs.add(name=f"IN{i}", datatype="FP32", shape=draw(st.lists(st.integers(0, 1 << 40), max_size=3)))
        t.parameters["binary_data_size"].int64_param = draw(st.integers(-(1 << 40), 1 << 40))
        r.raw_input_contents.append(draw(st.binary(max_size=64)))
    for i in range(draw(st.integers(0, 2))):
        r.outputs.add(name=f"OUT{i}")
    if draw(st.booleans()):
        r.parameters["sagemaker_custom_attributes"].string_param = draw(st.text(max_size=10))
    return r


@fuzz
@given(real_request(), st.lists(st.integers(0, 300), max_size=5))
def test_reads_every_serialized_request(r: pb.ModelInferRequest, cuts: list[int]) -> None:
    data = r.SerializeToString()
    assert model_of(data) == r.model_name
    assert chunked(data, cuts) == r.model_name


@fuzz
@given(real_request(), names, st.booleans())
def test_a_second_model_name_anywhere_is_refused(r: pb.ModelInferRequest, other: str, first: bool) -> None:
    """The review's bypass: one name first, another last. Protobuf runs the last; the scanner refuses both orders."""
    r.model_name = r.model_name or "m"
    raw = other.encode()
    extra = b"\x0a" + varint(len(raw)) + raw
    data = extra + r.SerializeToString() if first else r.SerializeToString() + extra
    assert reference(data) == (r.model_name if first else other)
    assert ours(data) is REFUSED


def test_the_reported_bypass_is_refused() -> None:
    allowed = pb.ModelInferRequest(model_name="digits_logreg").SerializeToString()
    denied = pb.ModelInferRequest(model_name="housing_Houston_TX").SerializeToString()
    assert pb.ModelInferRequest.FromString(allowed + denied).model_name == "housing_Houston_TX"
    with pytest.raises(ProtoError, match="more than once"):
        model_of(allowed + denied)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x08\x01", "must be a string"),  # field 1 as a varint
        (b"\x0a\x05abc", "ends inside"),  # cut short
        (b"\x0a\x02\xff\xfe", "not UTF-8"),
        (b"\x00\x01", "field number 0"),
        (b"\x0b\x0c", "must be a string"),  # field 1 as a group
        (b"\x13\x14", "wire type 3"),  # a group elsewhere
        (b"\x0a" + varint(MAX_NAME_BYTES + 1) + b"a" * (MAX_NAME_BYTES + 1), "longer than"),
        (b"\x10" + b"\xff" * 10 + b"\x01", "too long"),
    ],
)
def test_refusals_say_why(data: bytes, why: str) -> None:
    with pytest.raises(ProtoError, match=why):
        model_of(data)


NAME = b"\x0a\x01m"  # model_name "m"
MAX_FIELD = (1 << 29) - 1  # protobuf's largest field number


def key(field: int, wire: int) -> bytes:
    return varint(field << 3 | wire)


@pytest.mark.parametrize(
    "data",
    [
        NAME,
        key(15, 0) + varint(150) + NAME,  # an unknown varint field: skipped by value, not by length
        key(15, 0) + b"\xff" * 9 + b"\x01" + NAME,  # the largest varint: 10 bytes, 2**64 - 1
        key(15, 0) + b"\x80" * 9 + b"\x00" + NAME,  # 10 bytes, non-canonical zero
        NAME + key(15, 0) + b"\xff" * 9 + b"\x01",
        key(15, 1) + b"\x0a\x01x\x0a\x01x\x0a\x01" + NAME,  # fixed64: 8 bytes skipped (whatever they look like)
        key(15, 5) + b"\x0a\x01x\x0a" + NAME,  # fixed32: 4 bytes
        NAME + key(15, 1) + bytes(8),
        NAME + key(15, 5) + bytes(4),
        key(15, 2) + b"\x00" + NAME,  # an empty length-delimited field
        NAME + key(15, 2) + b"\x00",  # ... as the message's last field
        key(15, 2) + varint(300) + b"\x0a" * 300 + NAME,  # a 2-byte length
        key(15, 2) + varint(1) + b"\x0a" + NAME,
        key(MAX_FIELD, 0) + b"\x01" + NAME,  # the largest field number (a 5-byte key)
        key(MAX_FIELD, 2) + b"\x01\x0a" + NAME,
        key(MAX_FIELD, 1) + bytes(8) + NAME,
        b"\x0a\x00",  # an empty name
        b"\x0a\x00" + key(15, 0) + b"\x05",
        b"",  # no name at all
        key(2, 2) + b"\x01" + b"7" + NAME,  # model_version then model_name
        b"\x0a" + varint(MAX_NAME_BYTES) + b"n" * MAX_NAME_BYTES,  # the longest name
        b"\x0a" + varint(1024) + b"n" * 1024,
    ],
)
def test_messages_protobuf_reads_are_read_the_same(data: bytes) -> None:
    """Exact cases beside the fuzzing: each kind of field before and after the name, at its size limits. Protobuf
    reads every one, so the scanner must too (not just never disagree): same name, whole or a byte at a time."""
    ref = reference(data)
    assert ref is not REFUSED
    assert model_of(data) == ref
    assert chunked(data, list(range(len(data)))) == ref


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (key(MAX_FIELD + 1, 0) + b"\x01" + NAME, "field key out of range"),  # key 2**32: past any field number
        (b"\xff\xff\xff\xff\x0f\x01", "unsupported wire type 7"),  # key 2**32 - 1: the largest that fits
        (b"\xff\xff\xff\xff\x1f", "field key out of range"),
        (b"\xf8\x80\x80\x80\x80\x00\x01" + NAME, "varint too long"),  # a 6-byte key
        (key(15, 0) + b"\xff" * 9 + b"\x02" + NAME, "varint too long"),  # past 2**64 - 1
        (key(15, 0) + b"\x80" * 10 + b"\x00" + NAME, "varint too long"),  # 11 bytes
        (b"\x0a" + varint(MAX_NAME_BYTES + 1) + b"n" * (MAX_NAME_BYTES + 1), "longer than 1024 bytes"),
        (b"\x0a" + varint(1025) + b"n" * 1025, "longer than"),
        (NAME + NAME, "more than once"),
        (b"\x0a\x00" + NAME, "more than once"),  # an empty name is a name
        (NAME + b"\x0a\x00", "more than once"),
        (key(15, 3) + NAME, "unsupported wire type 3"),
        (key(15, 4) + NAME, "unsupported wire type 4"),
        (key(15, 6) + NAME, "unsupported wire type 6"),
        (key(1, 1) + bytes(8), "must be a string"),
        (key(1, 5) + bytes(4), "must be a string"),
        (NAME + key(15, 0), "ends inside"),
        (NAME + key(15, 0) + b"\x80", "ends inside"),
        (NAME + key(15, 1) + bytes(7), "ends inside"),
        (NAME + key(15, 5) + bytes(3), "ends inside"),
        (NAME + key(15, 2) + b"\x02x", "ends inside"),
        (b"\x0a\x02m", "ends inside"),
        (b"\x0a", "ends inside"),
        (b"\x8a", "ends inside"),  # a key cut short
    ],
)
def test_exact_refusals(data: bytes, why: str) -> None:
    with pytest.raises(ProtoError, match=why):
        model_of(data)
    assert chunked(data, list(range(len(data)))) is REFUSED


def test_the_name_limit_is_1024_bytes() -> None:
    assert MAX_NAME_BYTES == 1024


def test_a_scanner_reports_the_name_as_soon_as_it_is_whole() -> None:
    s = NameScanner()
    s.feed(key(15, 0) + b"\x01" + b"\x0a\x03ab")
    assert s.model is None
    s.feed(b"c" + key(15, 2))
    assert s.model == "abc"
    with pytest.raises(ProtoError, match="ends inside"):
        s.finish()
