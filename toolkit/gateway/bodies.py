"""Request bodies Triton must never see: the checks the gateway makes on a KServe v2 infer body, and the one bounded
inflater for compressed requests (HTTP ``Content-Encoding`` and gRPC ``grpc-encoding`` alike).

Why here: Triton 2.51 aborts on some hostile KServe JSON (a shape that claims 2**31 x 64 elements with 64 values
given: SIGABRT; ``data`` nested 100,000 deep: SIGSEGV) and inflates a compressed body without limit (2 MB of gzip ->
2 GiB -> crash). One such request takes down every model and every request in flight, so the gateway is the only
guard. The JSON is read with orjson (the standard library's parser costs ~6x more per request) and walked once:

- the body's JSON (or the JSON header of the binary extension) is an object nested at most 1024 deep (orjson's
  limit; Triton's parser handles that depth, tested) and ``data`` at most ``MAX_DEPTH`` deep;
- each input has a shape of non-negative integers below 2**31 whose element count matches what the request
  carries: the ``data`` values (flattened), or ``binary_data_size`` bytes for fixed-size types; the binary sizes
  add up to the bytes behind the header exactly.

Anything else about the request (names, types, values) is Triton's to judge: it answers 400 without crashing.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from typing import Any

import orjson

from toolkit.gateway.errors import GatewayError, PayloadTooLargeError, ValidationError

MAX_DEPTH = 64  # nesting of an input's data; a tensor of rank 32 in nested form needs 33
MAX_DIM = 2**31 - 1
ITEM_BYTES = {
    "BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8, "INT8": 1, "INT16": 2, "INT32": 4, "INT64": 8,
    "FP16": 2, "BF16": 2, "FP32": 4, "FP64": 8,
}  # fmt: skip


class UnsupportedEncodingError(GatewayError):
    status = 415
    code = "ValidationError"
    grpc_code = "UNIMPLEMENTED"


def inflate(data: bytes, encoding: str, limit: int) -> bytes:
    """A gzip or deflate body, refused once it would inflate past ``limit`` bytes (never inflated further)."""
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return data
    if enc in ("gzip", "x-gzip"):
        z = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif enc == "deflate":
        z = zlib.decompressobj()
    else:
        raise UnsupportedEncodingError(f"unsupported content encoding {encoding!r}: use gzip, deflate or none")
    try:
        out = z.decompress(data, limit + 1)
    except zlib.error as exc:
        raise ValidationError(f"malformed {enc} body: {exc}") from None
    if len(out) > limit or z.unconsumed_tail:
        raise PayloadTooLargeError(f"the {enc} body inflates past the limit of {limit} bytes")
    if not z.eof:
        raise ValidationError(f"the {enc} body is truncated")
    return out


def _count(data: Any, depth: int) -> int:
    """Elements in a (possibly nested) JSON array of values, exactly as a flattening reader counts them."""
    if not isinstance(data, list):
        if isinstance(data, dict):
            raise ValidationError("input data must be values or arrays of values, not objects")
        return 1
    if depth > MAX_DEPTH:
        raise ValidationError(f"input data is nested more than {MAX_DEPTH} deep")
    kinds = set(map(type, data))  # C speed: a flat list of numbers is counted by len()
    if list not in kinds and dict not in kinds:
        return len(data)
    return sum(_count(v, depth + 1) for v in data)


def _shape(t: Mapping[str, Any], i: int) -> int:
    shape = t.get("shape")
    if not isinstance(shape, list) or len(shape) > 32:
        raise ValidationError(f"inputs[{i}].shape must be a list of at most 32 dimensions")
    for d in shape:
        if type(d) is not int or not 0 <= d <= MAX_DIM:
            raise ValidationError(f"inputs[{i}].shape has {d!r}: dimensions are integers from 0 to {MAX_DIM}")
    return math.prod(shape)


def header_length(value: str | bytes | None, body: bytes) -> int | None:
    """The binary tensor extension's ``Inference-Header-Content-Length``: a number that fits the body, or None."""
    if value is None:
        return None
    if type(value) is bytes and value.isdigit():  # the usual spelling, fast: bytes.isdigit() is ASCII digits only
        n = int(value)
        if 0 < n <= len(body):
            return n
    text = (value.decode("latin-1") if isinstance(value, bytes) else value).strip(" \t")  # HTTP whitespace only
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) <= len(body):  # "²".isdigit(), int("²") fails
        raise ValidationError(f"Inference-Header-Content-Length {text!r} does not fit a body of {len(body)} bytes")
    return int(text)


def _check_input(t: Any, i: int) -> int:
    """One input's shape against what it carries; the bytes of binary data it declares (0 for JSON data)."""
    if not isinstance(t, dict):
        raise ValidationError(f"inputs[{i}] must be an object")
    n = _shape(t, i)
    params = t.get("parameters") or {}
    if not isinstance(params, dict):
        raise ValidationError(f"inputs[{i}].parameters must be an object")
    size = params.get("binary_data_size")
    if "data" in t:
        got = _count(t["data"], 1)
        if got != n:
            raise ValidationError(f"inputs[{i}] has {got} values for shape {t['shape']} ({n} elements)")
        return 0
    if size is None:
        if n:
            raise ValidationError(f'inputs[{i}] carries no "data" nor binary data for {n} elements')
        return 0
    if type(size) is not int or size < 0:
        raise ValidationError(f"inputs[{i}].parameters.binary_data_size must be a non-negative integer")
    item = ITEM_BYTES.get(str(t.get("datatype", "")).upper())
    if (item is not None and size != n * item) or (item is None and size < 4 * n):
        raise ValidationError(f"inputs[{i}] has {size} bytes of binary data for shape {t['shape']}")
    return size


_MEMO: dict[bytes, int] = {}  # JSON head -> binary bytes it declares, for heads that passed (bounded, see below)
MEMO_HEAD_BYTES = 4096
MEMO_ENTRIES = 256


def check_infer_request(body: bytes, header_length: int | None) -> None:
    """ValidationError unless ``body`` is a KServe v2 infer request Triton can be trusted with (see the module doc).

    The verdict on the JSON head is a pure function of its bytes, and a client sends the same head over and over
    (the binary extension's header, with fixed shapes, is identical per request: tritonclient, perf_analyzer), so
    small heads that passed are remembered: a repeat costs a dictionary lookup instead of a parse and a walk
    (~22k instructions per request measured under callgrind). Only the tail's length is checked again. At most
    ``MEMO_ENTRIES`` heads of at most ``MEMO_HEAD_BYTES`` are kept (~1 MiB); the memo is emptied when full."""
    head = body if header_length is None else body[:header_length]
    binary_total = _MEMO.get(head)
    if binary_total is None:
        binary_total = _check_head(head)
        if len(head) <= MEMO_HEAD_BYTES:
            if len(_MEMO) >= MEMO_ENTRIES:
                _MEMO.clear()
            _MEMO[head] = binary_total
    tail = 0 if header_length is None else len(body) - header_length
    if binary_total != tail:
        raise ValidationError(f"the inputs declare {binary_total} bytes of binary data; the body carries {tail}")


def _check_head(head: bytes) -> int:
    """The bytes of binary data the head's inputs declare, once its JSON and every input passed the checks."""
    try:
        doc = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise ValidationError(f"the request body is not valid KServe v2 JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValidationError("the request body must be a KServe v2 JSON object")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list):
        raise ValidationError('the request needs "inputs": a list of tensors')
    return sum(_check_input(t, i) for i, t in enumerate(inputs))
