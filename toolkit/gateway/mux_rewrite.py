"""A request for a multiplexed model, rewritten for its host, and the host's answer rewritten back.

Why here, in the gateway: the host serves whichever model its ``tritonctl_mux_model`` request parameter names, so
that parameter must carry exactly the canonical name admission authorized. It is set here, after admission, over any
value the client put in its own ``parameters`` (the last key wins when Triton reads our re-encoded header, which has
one). The answer's ``model_name`` is set back to the model's, so clients never see the host (tritonclient and boto3
read the same JSON as from a per-process model).
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from toolkit.gateway.errors import ValidationError

MUX_PARAM = "tritonctl_mux_model"  # the host template's PARAM
IHCL = "Inference-Header-Content-Length"


def _header(body: bytes, n: int) -> dict[str, object]:
    try:
        header = orjson.loads(body[:n])
    except orjson.JSONDecodeError as exc:
        raise ValidationError(f"the request body is not KServe v2 JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ValidationError("the request body must be a KServe v2 JSON object")
    return header


def to_host(model: str, body: bytes, headers: Mapping[str, str]) -> tuple[bytes, dict[str, str]]:
    """The request body with ``parameters.tritonctl_mux_model = model`` (the client's value, if any, replaced) and
    the headers Triton needs for it (a binary body's JSON header length changes)."""
    out = {h: v for h in ("Content-Type", IHCL) if (v := headers.get(h)) is not None}
    n = int(out.get(IHCL) or len(body))
    header = _header(body, n)
    params = header.get("parameters") or {}
    if not isinstance(params, dict):
        raise ValidationError('the request\'s "parameters" must be a JSON object')
    header["parameters"] = {**params, MUX_PARAM: model}
    head = orjson.dumps(header)
    if IHCL in out:
        out[IHCL] = str(len(head))
    return head + body[n:], out


def stats_refused(model: str) -> ValidationError:
    """Statistics of a multiplexed model (KServe over HTTP and gRPC): the host's count every model it serves."""
    return ValidationError(f"model {model} is multiplexed: its statistics are in /metrics (ModelCacheHit ...)")


def from_host(model: str, body: bytes, headers: dict[str, str]) -> bytes:
    """The host's answer as the model's: ``model_name`` (and a metadata/config ``name``) set to ``model``. ``headers``
    (the forwarded response headers) get the new JSON header length of a binary answer."""
    n = int(headers.get(IHCL) or len(body))
    try:
        header = orjson.loads(body[:n])
    except orjson.JSONDecodeError:
        return body  # not JSON (an error page): nothing of the host's to hide
    if not isinstance(header, dict):
        return body
    for key in ("model_name", "name"):
        if key in header:
            header[key] = model
    head = orjson.dumps(header)
    if IHCL in headers:
        headers[IHCL] = str(len(head))
    return head + body[n:]
