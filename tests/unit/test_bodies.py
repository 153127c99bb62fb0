"""The gateway's body checks against reference readers: element counts against numpy and a plain flattening,
the bounded inflater against gzip/zlib, and the binary header length against int()."""

from __future__ import annotations

import gzip
import json
import os
import re
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolkit.gateway import bodies
from toolkit.gateway.bodies import MAX_DEPTH, UnsupportedEncodingError, check_infer_request, header_length, inflate
from toolkit.gateway.errors import PayloadTooLargeError, ValidationError

fuzz = settings(
    max_examples=int(os.environ.get("TRITONCTL_FUZZ_EXAMPLES", "1500")) // 3,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
values = st.floats(allow_nan=False, allow_infinity=False, width=32)
ragged = st.recursive(values, lambda inner: st.lists(inner, max_size=4), max_leaves=40)


def flat_count(x: object) -> int:
    stack, n = [x], 0
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(v)
        else:
            n += 1
    return n


def body(shape: object, data: object) -> bytes:
    return json.dumps({"inputs": [{"name": "X", "shape": shape, "datatype": "FP32", "data": data}]}).encode()


@fuzz
@given(st.lists(st.integers(1, 4), min_size=1, max_size=4), st.data())
def test_rectangular_data_matches_numpy(shape: list[int], data: st.DataObject) -> None:
    arr = np.array(data.draw(st.lists(values, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))).reshape(
        shape
    )
    check_infer_request(body(shape, arr.tolist()), None)  # nested as numpy nests it
    check_infer_request(body(shape, arr.ravel().tolist()), None)  # and flat
    with pytest.raises(ValidationError):
        check_infer_request(body([*shape[:-1], shape[-1] + 1], arr.tolist()), None)


@fuzz
@given(ragged, st.integers(0, 3))
def test_any_nesting_counts_as_a_flattening_reader_counts(data: object, delta: int) -> None:
    n = flat_count(data)
    if not isinstance(data, list):
        data = [data]
    check_infer_request(body([n], data), None)
    with pytest.raises(ValidationError):
        check_infer_request(body([n + delta + 1], data), None)


def test_depth_limits() -> None:
    ok = 1.0
    for _ in range(MAX_DEPTH - 1):  # with the list below: MAX_DEPTH levels, the most allowed
        ok = [ok]  # type: ignore[assignment]
    check_infer_request(body([1], [ok]), None)
    with pytest.raises(ValidationError, match="nested"):
        check_infer_request(body([1], [[ok]]), None)
    with pytest.raises(ValidationError):  # orjson's own limit, far below what crashes Triton
        check_infer_request(b'{"inputs": [], "p": ' + b"[" * 2000 + b"]" * 2000 + b"}", None)


@fuzz
@given(st.binary(max_size=4096), st.sampled_from(["gzip", "deflate"]), st.integers(0, 5000))
def test_inflate_agrees_with_zlib_and_stops_at_the_limit(raw: bytes, enc: str, limit: int) -> None:
    data = gzip.compress(raw) if enc == "gzip" else zlib.compress(raw)
    if len(raw) <= limit:
        assert inflate(data, enc, limit) == raw
    else:
        with pytest.raises(PayloadTooLargeError):
            inflate(data, enc, limit)
    if len(data) > 4 and len(raw) <= limit:
        with pytest.raises(ValidationError):
            inflate(data[:-4] if enc == "gzip" else data[:-1], enc, limit)


def test_inflate_never_makes_more_than_the_limit() -> None:
    bomb = gzip.compress(bytes(256 * 1024 * 1024))
    with pytest.raises(PayloadTooLargeError):
        inflate(bomb, "gzip", 6 * 1024 * 1024)


@fuzz
@given(st.text(max_size=8), st.integers(0, 50))
def test_header_length_is_an_int_that_fits(value: str, size: int) -> None:
    data = bytes(size)
    try:
        got = header_length(value, data)
    except ValidationError:
        ok = re.fullmatch(r"[ \t]*[0-9]+[ \t]*", value) is not None and 0 < int(value) <= size
        assert not ok
        return
    assert got == int(value) and 0 < got <= size


@pytest.mark.parametrize("shape", [[0, 64], [2**31 - 1], [2**31], [-1], [1.0], [True]])
def test_shape_claims_beyond_one_value_are_refused(shape: list[object]) -> None:
    with pytest.raises(ValidationError):
        check_infer_request(body(shape, [1.0]), None)


def test_load_failures_tell_clients_no_paths_nor_tracebacks() -> None:
    from toolkit.gateway.errors import ModelError, to_gateway_error
    from toolkit.mme.errors import ModelLoadError

    reason = (
        "failed to load 'm', failed to poll from model repository: /tmp/tritonctl-serve-x1/repo/m/1/model.py: "
        'No such file\nTraceback (most recent call last):\n  File "/usr/lib/python3/x.py", line 3, in f'
    )
    err = to_gateway_error(ModelLoadError("m", reason))
    assert isinstance(err, ModelError) and "/tmp" not in err.message and "Traceback" not in err.message
    assert (
        err.message
        == "Model m failed to load: failed to load 'm', failed to poll from model repository: <path>: No such file"
    )


def test_the_depth_limit_is_64() -> None:
    """The value itself (a tensor of rank 32 nested needs 33; Triton's parser takes far more): 64 levels pass."""
    assert MAX_DEPTH == 64
    data: object = 1.0
    for _ in range(64):
        data = [data]
    check_infer_request(body([1], data), None)
    with pytest.raises(ValidationError, match="nested more than 64 deep"):
        check_infer_request(body([1], [data]), None)


def test_the_largest_dimension() -> None:
    """A dimension may be 2**31 - 1, not 2**31 (Triton's int32 shapes): a zero-element tensor shows it without data."""
    check_infer_request(body([0, 2**31 - 1], []), None)
    with pytest.raises(ValidationError, match="integers from 0 to 2147483647"):
        check_infer_request(body([0, 2**31], []), None)
    with pytest.raises(ValidationError, match="integers from 0 to"):
        check_infer_request(body([0, -1], []), None)
    with pytest.raises(ValidationError, match="at most 32 dimensions"):
        check_infer_request(body([1] * 33, [1.0]), None)
    check_infer_request(body([1] * 32, [1.0]), None)


def binary(dtype: str | None, shape: list[int], size: int, tail: int | None = None) -> tuple[bytes, int]:
    t: dict[str, object] = {"name": "X", "shape": shape, "parameters": {"binary_data_size": size}}
    if dtype is not None:
        t["datatype"] = dtype
    head = json.dumps({"inputs": [t]}).encode()
    return head + bytes(size if tail is None else tail), len(head)


ITEM = {"BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8, "INT8": 1, "INT16": 2, "INT32": 4, "INT64": 8,
        "FP16": 2, "BF16": 2, "FP32": 4, "FP64": 8}  # fmt: skip


@pytest.mark.parametrize(("dtype", "item"), ITEM.items())
def test_binary_sizes_are_exact_for_fixed_size_types(dtype: str, item: int) -> None:
    for spelled in (dtype, dtype.lower()):
        check_infer_request(*binary(spelled, [3], 3 * item))
    for size in (3 * item - 1, 3 * item + 1, 2 * item, 0):
        with pytest.raises(ValidationError, match="bytes of binary data for shape"):
            check_infer_request(*binary(dtype, [3], size))


@pytest.mark.parametrize("dtype", ["BYTES", "bytes", None, "NOT_A_TYPE"])
def test_binary_sizes_of_variable_size_types_hold_a_length_per_element(dtype: str | None) -> None:
    check_infer_request(*binary(dtype, [3], 12))  # three empty strings: a 4-byte length each
    check_infer_request(*binary(dtype, [3], 40))
    with pytest.raises(ValidationError, match="bytes of binary data for shape"):
        check_infer_request(*binary(dtype, [3], 11))


def test_binary_sizes_add_up_to_the_bytes_behind_the_header() -> None:
    data, n = binary("FP32", [2], 8, tail=9)
    with pytest.raises(ValidationError, match="declare 8 bytes of binary data; the body carries 9"):
        check_infer_request(data, n)
    data, n = binary("FP32", [2], 8, tail=7)
    with pytest.raises(ValidationError, match="the body carries 7"):
        check_infer_request(data, n)
    data, _ = binary("FP32", [2], 8)
    with pytest.raises(ValidationError):  # no header length: the whole body is JSON, and no bytes follow it
        check_infer_request(data, None)
    with pytest.raises(ValidationError, match="declare 8 bytes of binary data; the body carries 0"):
        check_infer_request(json.dumps(json.loads(data[: len(data) - 8])).encode(), None)
    two = {
        "inputs": [
            {"name": "A", "shape": [1], "datatype": "FP64", "parameters": {"binary_data_size": 8}},
            {"name": "B", "shape": [2], "datatype": "INT16", "parameters": {"binary_data_size": 4}},
        ]
    }
    head = json.dumps(two).encode()
    check_infer_request(head + bytes(12), len(head))
    for size in (-1, 1.5, "8", True):
        head = json.dumps({"inputs": [{"shape": [2], "parameters": {"binary_data_size": size}}]}).encode()
        with pytest.raises(ValidationError, match="must be a non-negative integer"):
            check_infer_request(head + bytes(8), len(head))


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        (b"[]", "must be a KServe v2 JSON object"),
        (b"{}", '"inputs": a list'),
        (b'{"inputs": {}}', '"inputs": a list'),
        (b'{"inputs": [1]}', "inputs\\[0\\] must be an object"),
        (b'{"inputs": [{"shape": [1], "data": [1], "parameters": [1]}]}', "parameters must be an object"),
        (b'{"inputs": [{"shape": [2]}]}', 'carries no "data" nor binary data for 2 elements'),
        (b'{"inputs": [{"shape": [1], "data": [{"a": 1}]}]}', "not objects"),
        (b'{"inputs": [{"shape": [1], "data": {"a": 1}}]}', "not objects"),
        (b'{"inputs": [{"shape": "1", "data": [1]}]}', "shape must be a list"),
        (b"{", "not valid KServe v2 JSON"),
    ],
)
def test_refusals_say_why(doc: bytes, why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        check_infer_request(doc, None)


def test_what_is_accepted() -> None:
    check_infer_request(b'{"inputs": []}', None)
    check_infer_request(b'{"inputs": [{"shape": [0]}]}', None)  # no elements: nothing to carry
    check_infer_request(b'{"inputs": [{"shape": [2], "data": [1, 2], "parameters": null}]}', None)
    check_infer_request(b'{"inputs": [{"shape": [1], "data": 7}]}', None)  # a scalar is one element


@pytest.mark.parametrize("encoding", ["", "identity", " Identity ", "IDENTITY"])
def test_identity_is_the_body_as_sent(encoding: str) -> None:
    data = b"\x1f\x8b not compressed at all"
    assert inflate(data, encoding, 1) is data  # the connection layer bounded it already


@pytest.mark.parametrize("encoding", ["br", "compress", "zstd", "gzip, deflate"])
def test_other_encodings_are_415(encoding: str) -> None:
    with pytest.raises(UnsupportedEncodingError) as e:
        inflate(gzip.compress(b"x"), encoding, 100)
    assert (e.value.status, e.value.code, e.value.grpc_code) == (415, "ValidationError", "UNIMPLEMENTED")


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip", "GZIP", "deflate", " Deflate "])
def test_each_spelling_of_gzip_and_deflate(encoding: str) -> None:
    raw = b"hello " * 100
    data = zlib.compress(raw) if "deflate" in encoding.lower() else gzip.compress(raw)
    assert inflate(data, encoding, len(raw)) == raw
    with pytest.raises(PayloadTooLargeError, match=f"inflates past the limit of {len(raw) - 1} bytes"):
        inflate(data, encoding, len(raw) - 1)
    with pytest.raises(ValidationError, match="malformed"):
        inflate(b"not compressed" + data, encoding, len(raw))


def test_header_length_values() -> None:
    assert header_length(None, b"abc") is None
    assert header_length(b" 3\t", b"abc") == 3
    assert header_length("1", b"abc") == 1
    for bad in ("0", "4", "-1", "+1", "1.0", "", "²", b"\xb2"):
        with pytest.raises(ValidationError, match="does not fit a body of 3 bytes"):
            header_length(bad, b"abc")


def test_gzip_is_gzip_and_deflate_is_zlib() -> None:
    raw = b"x" * 1000
    with pytest.raises(ValidationError, match="malformed gzip"):
        inflate(zlib.compress(raw), "gzip", 2000)  # a zlib stream is not a gzip one
    with pytest.raises(ValidationError, match="malformed deflate"):
        inflate(gzip.compress(raw), "deflate", 2000)


def test_gzip_with_the_full_window() -> None:
    """gzip's 32 KiB window: back-references 20,000 bytes back (a smaller window refuses them)."""
    block = np.random.default_rng(0).bytes(20_000)
    raw = block + block
    assert inflate(gzip.compress(raw), "gzip", len(raw)) == raw
    assert inflate(zlib.compress(raw), "deflate", len(raw)) == raw


@pytest.mark.parametrize(("compress", "trailer"), [(gzip.compress, 8), (zlib.compress, 4)])
def test_past_the_limit_is_413_even_when_the_stream_is_also_cut_short(compress: object, trailer: int) -> None:
    """The limit is judged on what the body would inflate to, one byte past it, before its end is looked for."""
    raw = b"a" * 100_000
    data = compress(raw)[:-trailer]  # type: ignore[operator]
    enc = "gzip" if trailer == 8 else "deflate"
    with pytest.raises(PayloadTooLargeError):
        inflate(data, enc, len(raw) - 1)
    with pytest.raises(ValidationError, match="truncated"):
        inflate(data, enc, len(raw))


def _verdict(b: bytes, hl: int | None) -> str:
    try:
        check_infer_request(b, hl)
    except ValidationError as exc:
        return str(exc)
    return "ok"


heads = st.builds(
    lambda shape, size, dtype: json.dumps(
        {"inputs": [{"name": "X", "shape": shape, "datatype": dtype, "parameters": {"binary_data_size": size}}]}
    ).encode(),
    st.lists(st.integers(0, 5), max_size=3),
    st.integers(0, 64),
    st.sampled_from(["FP32", "INT8", "BYTES"]),
)


@fuzz
@given(st.lists(st.tuples(heads, st.integers(0, 64)), min_size=1, max_size=6))
def test_the_memo_of_heads_never_changes_a_verdict(requests: list[tuple[bytes, int]]) -> None:
    """Each request (a head, a tail length) judged twice in a row, with the memo warm from earlier requests, gets
    the verdict of the unmemoized check: a remembered head still has its tail checked, a refused head is not kept."""
    for head, tail in requests:
        b = head + b"\0" * tail
        bodies._MEMO.clear()
        cold = _verdict(b, len(head))
        for h2, t2 in requests:  # warm the memo with the others
            _verdict(h2 + b"\0" * t2, len(h2))
        assert _verdict(b, len(head)) == cold
        assert _verdict(b, len(head)) == cold


def test_the_memo_is_bounded() -> None:
    bodies._MEMO.clear()
    for n in range(bodies.MEMO_ENTRIES + 10):
        h = json.dumps({"inputs": [], "id": str(n)}).encode()
        check_infer_request(h, None)
        assert len(bodies._MEMO) <= bodies.MEMO_ENTRIES
    big = json.dumps({"inputs": [], "id": "x" * bodies.MEMO_HEAD_BYTES}).encode()
    check_infer_request(big, None)
    assert big not in bodies._MEMO
