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

from toolkit.gateway.bodies import MAX_DEPTH, check_infer_request, header_length, inflate
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
