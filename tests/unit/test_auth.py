"""The gateway's front door without Triton: requests signed by botocore's real SigV4 signer (and captured from a real
boto3 client) checked by ``AuthConfig.authenticate`` as the gateway checks them, API keys, and the IAM-like policy
evaluation (``like``, ``Statement``, ``AuthConfig.allowed``/``authorize``) as tables.

Every guard has a case that fails without it: exact clock-skew boundaries in both directions, the body hash, the
credential scope, the headers a signature must cover, the wildcard anchoring. ``make mutation`` checks that claim.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from multidict import CIMultiDict

from toolkit.gateway.auth import ADMIN, ANONYMOUS, INVOKE, MAX_CLOCK_SKEW_S, AuthConfig, Principal, Statement, like
from toolkit.gateway.errors import AccessDeniedError, AuthError, GatewayConfigError

KEY, SECRET = "AKIDUNITTEST", "unit-secret-0123456789"
HOST = "gateway.test:8080"
PATH = "/endpoints/housing/invocations"
URL = f"http://{HOST}{PATH}"
BODY = b'{"inputs": [{"name": "X", "shape": [1], "datatype": "FP32", "data": [1.0]}]}'
SM_HEADERS = {"Content-Type": "application/json", "X-Amzn-SageMaker-Target-Model": "housing_Chicago_IL"}
RAW = {
    "region": "us-east-1",
    "account": "123456789012",
    "principals": [
        {"name": "alice", "access_keys": [{"id": KEY, "secret": SECRET}], "api_keys": ["alice-key"]},
        {"name": "bob", "api_keys": ["bob-key"], "access_keys": [{"id": "AKIDBOB", "secret": "bob-secret"}]},
    ],
}


def cfg(clock: float | None = None) -> AuthConfig:
    c = AuthConfig.from_dict(RAW)
    if clock is not None:
        c.clock = lambda: clock
    return c


def stamp(when: dt.datetime) -> str:
    return when.strftime("%Y%m%dT%H%M%SZ")


def sign(
    body: bytes = BODY,
    headers: Mapping[str, str] = SM_HEADERS,
    *,
    when: dt.datetime | None = None,
    url: str = URL,
    method: str = "POST",
    key: str = KEY,
    secret: str = SECRET,
    service: str = "sagemaker",
    region: str = "us-east-1",
) -> CIMultiDict[str]:
    """The headers a client sends: signed by botocore now (``add_auth``, as the SDK does) or at ``when``, plus Host."""
    req = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
    signer = SigV4Auth(Credentials(key, secret), service, region)
    if when is None:
        signer.add_auth(req)
    else:  # what add_auth does, at a chosen time
        req.context["timestamp"] = stamp(when)
        req.headers["X-Amz-Date"] = stamp(when)
        sig = signer.signature(signer.string_to_sign(req, signer.canonical_request(req)), req)
        req.headers["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={signer.scope(req)}, "
            f"SignedHeaders={signer.signed_headers(signer.headers_to_sign(req))}, Signature={sig}"
        )
    out = CIMultiDict(req.headers.items())
    out["Host"] = urlsplit(url).netloc  # what the HTTP client adds on the wire
    return out


def check(headers: Mapping[str, str], body: bytes = BODY, *, config: AuthConfig | None = None, path: str = PATH) -> str:
    return (config or cfg()).authenticate("POST", path, headers, body).name


def refused(
    headers: Mapping[str, str], body: bytes = BODY, *, config: AuthConfig | None = None, path: str = PATH
) -> AuthError:
    with pytest.raises(AuthError) as e:
        check(headers, body, config=config, path=path)
    return e.value


def signed_at(headers: Mapping[str, str]) -> float:
    return dt.datetime.strptime(headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc).timestamp()


def with_authz(headers: CIMultiDict[str], old: str, new: str) -> CIMultiDict[str]:
    h = CIMultiDict(headers)
    assert old in h["Authorization"]
    h["Authorization"] = h["Authorization"].replace(old, new)
    return h


# -- SigV4: a real client's request --------------------------------------------------------------------------------
def test_a_botocore_signed_request_is_alice() -> None:
    assert check(sign()) == "alice"
    assert check(sign(key="AKIDBOB", secret="bob-secret")) == "bob"


def capture_boto3(**kwargs: Any) -> tuple[str, CIMultiDict[str], bytes]:
    """The request a real boto3 sagemaker-runtime client sends for invoke_endpoint(**kwargs), stopped before the
    network (boto3's own before-send hook): URL, headers (with the Host the connection adds), body."""

    class Sent(Exception):
        pass

    got: dict[str, Any] = {}

    def stop(request: Any, **_: Any) -> None:
        got["url"], got["headers"], got["body"] = request.url, dict(request.headers.items()), request.body
        raise Sent

    client = boto3.client(
        "sagemaker-runtime", endpoint_url=f"http://{HOST}", region_name="us-east-1", aws_access_key_id=KEY,
        aws_secret_access_key=SECRET, config=Config(retries={"max_attempts": 1}),
    )  # fmt: skip
    client.meta.events.register("before-send.sagemaker-runtime.InvokeEndpoint", stop)
    with pytest.raises(Sent):
        client.invoke_endpoint(**kwargs)
    headers = CIMultiDict((k, v.decode() if isinstance(v, bytes) else v) for k, v in got["headers"].items())
    headers["Host"] = urlsplit(got["url"]).netloc
    body = got["body"] if isinstance(got["body"], bytes) else (got["body"] or b"")
    return urlsplit(got["url"]).path, headers, body


BOTO3_ARGS = {
    "EndpointName": "housing",
    "Body": BODY,
    "ContentType": "application/json",
    "Accept": "application/json",
    "CustomAttributes": "trace=1",
    "TargetModel": "/housing_Chicago_IL.tar.gz",
    "TargetVariant": "blue",
    "TargetContainerHostname": "digits_mlp",
    "InferenceId": "id-42",
}
MUST_SIGN = [
    ("ContentType", "Content-Type"),
    ("CustomAttributes", "X-Amzn-SageMaker-Custom-Attributes"),
    ("TargetModel", "X-Amzn-SageMaker-Target-Model"),
    ("TargetVariant", "X-Amzn-SageMaker-Target-Variant"),
    ("TargetContainerHostname", "X-Amzn-SageMaker-Target-Container-Hostname"),
    ("InferenceId", "X-Amzn-SageMaker-Inference-Id"),
]


def test_boto3_signs_every_header_that_routes_the_request_and_is_accepted() -> None:
    path, headers, body = capture_boto3(**BOTO3_ARGS)
    signed = headers["Authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    assert {h.lower() for _, h in MUST_SIGN} | {"host", "x-amz-date", "accept"} <= set(signed)
    assert check(headers, body, path=path) == "alice"


@pytest.mark.parametrize(("arg", "header"), MUST_SIGN)
def test_a_routing_header_added_to_a_captured_request_is_refused(arg: str, header: str) -> None:
    """A captured request re-targeted: the header is present but not signed (the client sent none, or the attacker
    replaced a request's with one of its own). Refused before the signature is even computed, naming the header."""
    path, headers, body = capture_boto3(**{k: v for k, v in BOTO3_ARGS.items() if k != arg})
    assert check(headers, body, path=path) == "alice"  # as captured: valid
    headers[header] = "housing_Houston_TX"
    e = refused(headers, body, path=path)
    assert e.code == "InvalidSignatureException" and header.lower() in e.message and "signed" in e.message


@pytest.mark.parametrize(
    "header", ["X-Amzn-SageMaker-Enable-Explanations", "Inference-Header-Content-Length", "content-type"]
)
def test_other_headers_that_change_the_request_must_be_signed_too(header: str) -> None:
    h = sign(headers={k: v for k, v in SM_HEADERS.items() if k != "Content-Type"})
    assert check(h) == "alice"
    h.add(header, "12")
    assert "must be signed" in refused(h).message


@pytest.mark.parametrize("header", ["User-Agent", "Accept-Encoding", "X-Request-Id", "Content-Length", "Connection"])
def test_headers_that_do_not_change_the_request_may_be_unsigned(header: str) -> None:
    """What HTTP clients and proxies add after signing (botocore never signs User-Agent) is no reason to refuse."""
    h = sign()
    h[header] = "x"
    assert check(h) == "alice"


def test_a_signed_header_sent_twice_must_be_signed_twice() -> None:
    h = sign()
    h.add("X-Amzn-SageMaker-Target-Model", "housing_Houston_TX")  # appended to a signed one: the signature breaks
    assert refused(h).code == "InvalidSignatureException"
    attrs = {**SM_HEADERS, "X-Amzn-SageMaker-Custom-Attributes": "a"}
    req = AWSRequest(method="POST", url=URL, data=BODY, headers=attrs)
    req.headers["X-Amzn-SageMaker-Custom-Attributes"] = "b"  # HTTPHeaders appends: the client signs both values
    SigV4Auth(Credentials(KEY, SECRET), "sagemaker", "us-east-1").add_auth(req)
    both = CIMultiDict(req.headers.items())
    assert both.getall("X-Amzn-SageMaker-Custom-Attributes") == ["a", "b"]
    both["Host"] = HOST
    assert check(both) == "alice"


def test_a_signed_header_missing_from_the_request_is_refused() -> None:
    h = sign()
    del h["X-Amzn-SageMaker-Target-Model"]
    e = refused(h)
    assert e.code == "InvalidSignatureException" and "missing from the request" in e.message


def test_host_must_be_signed() -> None:
    h = with_authz(sign(), "content-type;host;", "content-type;")
    e = refused(h)
    assert e.code == "InvalidSignatureException" and "must include host" in e.message


@pytest.mark.parametrize(
    ("method", "path", "host", "body", "target"),
    [
        ("PUT", PATH, HOST, BODY, None),
        ("POST", "/endpoints/other/invocations", HOST, BODY, None),
        ("POST", PATH + "?x=1", HOST, BODY, None),
        ("POST", PATH, "elsewhere:8080", BODY, None),
        ("POST", PATH, HOST, BODY.replace(b"1.0", b"9.0"), None),
        ("POST", PATH, HOST, BODY, "housing_Houston_TX"),
    ],
)
def test_anything_signed_that_changes_breaks_the_signature(
    method: str, path: str, host: str, body: bytes, target: str | None
) -> None:
    h = sign()
    h["Host"] = host
    if target is not None:
        h["X-Amzn-SageMaker-Target-Model"] = target
    with pytest.raises(AuthError) as e:
        cfg().authenticate(method, path, h, body)
    assert e.value.code == "InvalidSignatureException" and "does not match the signature" in e.value.message


def test_a_query_string_is_signed() -> None:
    h = sign(url=URL + "?b=2&a=1")
    assert check(h, path=PATH + "?b=2&a=1") == "alice"
    assert refused(h, path=PATH + "?b=3&a=1").code == "InvalidSignatureException"


def test_wrong_secret_unknown_key_and_no_key() -> None:
    e = refused(sign(secret="wrong"))
    assert e.code == "InvalidSignatureException" and SECRET not in e.message and "wrong" not in e.message
    e = refused(sign(key="AKIDNOBODY"))
    assert (e.code, e.status) == ("UnrecognizedClientException", 403) and "security token" in e.message
    e = refused(CIMultiDict({"Host": HOST}))
    assert e.code == "MissingAuthenticationTokenException"
    e = refused(CIMultiDict({"Host": HOST, "Authorization": "Basic YWxpY2U6eA=="}))
    assert e.code == "MissingAuthenticationTokenException"


@pytest.mark.parametrize(
    ("service", "region"), [("s3", "us-east-1"), ("sagemaker", "eu-west-1"), ("execute-api", "eu-west-1")]
)
def test_a_signature_for_another_service_or_region_is_refused(service: str, region: str) -> None:
    e = refused(sign(service=service, region=region))
    assert e.code == "InvalidSignatureException" and f"got {region}/{service}" in e.message


def test_the_gateway_region_is_configurable() -> None:
    eu = AuthConfig.from_dict({**RAW, "region": "eu-west-1"})
    assert check(sign(region="eu-west-1"), config=eu) == "alice"
    assert refused(sign(), config=eu).code == "InvalidSignatureException"


@pytest.mark.parametrize(
    ("authz", "code"),
    [
        ("AWS4-HMAC-SHA256", "IncompleteSignatureException"),
        ("AWS4-HMAC-SHA256 Credential=a/b/c, SignedHeaders=host, Signature=ab", "IncompleteSignatureException"),
        (f"AWS4-HMAC-SHA256 Credential={KEY}/20240101/us-east-1/sagemaker/aws4_requestX, SignedHeaders=host, "
         "Signature=ab", "IncompleteSignatureException"),
        (f"AWS4-HMAC-SHA256 Credential={KEY}/20240101/us-east-1/sagemaker/x/aws4_request, SignedHeaders=host, "
         "Signature=ab", "IncompleteSignatureException"),
        (f"AWS4-HMAC-SHA256 Credential={KEY}/20240101/us-east-1/sagemaker/aws4_request, SignedHeaders=host, "
         "Signature=XYZ", "IncompleteSignatureException"),
        (f"AWS4-HMAC-SHA256 Credential={KEY}/20240101/us-east-1/sagemaker/aws4_request, SignedHeaders=host",
         "IncompleteSignatureException"),
    ],
)  # fmt: skip
def test_malformed_authorization_headers(authz: str, code: str) -> None:
    e = refused(CIMultiDict({"Host": HOST, "Authorization": authz, "X-Amz-Date": "20240101T000000Z"}))
    assert e.code == code


@pytest.mark.parametrize("date", [None, "", "2024-01-01T00:00:00Z", "20240101T000000", "20241301T000000Z"])
def test_a_missing_or_malformed_x_amz_date_is_refused(date: str | None) -> None:
    h = sign()
    del h["X-Amz-Date"]
    if date is not None:
        h["X-Amz-Date"] = date
    e = refused(h)
    assert e.code == "IncompleteSignatureException" and "X-Amz-Date" in e.message


def test_the_credential_scope_date_must_be_the_x_amz_date_day() -> None:
    h = sign()
    day = h["X-Amz-Date"][:8]
    e = refused(with_authz(h, f"/{day}/", "/20200101/"))
    assert e.code == "InvalidSignatureException" and "does not match X-Amz-Date" in e.message


# -- SigV4: the clock ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("offset", "ok"),
    [
        (0, True),
        (240, True),  # the gateway's clock 4 minutes ahead of the client's (the request is 4 minutes old)
        (-240, True),  # 4 minutes behind (the request is dated 4 minutes in the future)
        (MAX_CLOCK_SKEW_S, True),  # exactly at the limit: accepted (the rule is "more than 300 s")
        (-MAX_CLOCK_SKEW_S, True),
        (MAX_CLOCK_SKEW_S + 0.001, False),
        (-MAX_CLOCK_SKEW_S - 0.001, False),
        (360, False),
        (-360, False),
        (3600, False),
        (-86400, False),
    ],
)
def test_clock_skew_boundaries_in_both_directions(offset: float, ok: bool) -> None:
    h = sign()
    c = cfg(clock=signed_at(h) + offset)
    if ok:
        assert check(h, config=c) == "alice"
    else:
        e = refused(h, config=c)
        assert e.code == "InvalidSignatureException" and "expired" in e.message


def test_the_limit_is_five_minutes() -> None:
    assert MAX_CLOCK_SKEW_S == 300


@pytest.mark.parametrize(("minutes", "ok"), [(-4, True), (4, True), (-6, False), (6, False), (60, False)])
def test_against_the_real_clock(minutes: int, ok: bool) -> None:
    """The default clock is the system's: a request signed 4 minutes ago or ahead passes, 6 minutes does not."""
    h = sign(when=dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=minutes))
    if ok:
        assert check(h) == "alice"
    else:
        assert "expired" in refused(h).message


# -- SigV4: the body -----------------------------------------------------------------------------------------------
def test_a_tampered_body_breaks_the_signature() -> None:
    h = sign()
    assert check(h, BODY) == "alice"
    e = refused(h, BODY.replace(b"1.0", b"9.0"))
    assert e.code == "InvalidSignatureException" and "does not match the signature" in e.message
    assert refused(h, BODY + b" ").code == "InvalidSignatureException"
    assert refused(h, b"").code == "InvalidSignatureException"


def test_a_tampered_body_under_x_amz_content_sha256_is_refused() -> None:
    """With X-Amz-Content-SHA256 the signature covers that header, not the body (SigV4's rule, as S3 clients sign):
    the gateway must compare the header with the body it received, or a tampered body verifies."""
    digest = hashlib.sha256(BODY).hexdigest()
    h = sign(headers={**SM_HEADERS, "X-Amz-Content-SHA256": digest})
    assert check(h, BODY) == "alice"
    e = refused(h, BODY.replace(b"1.0", b"9.0"))
    assert e.code == "InvalidSignatureException" and "X-Amz-Content-SHA256 does not match the body" in e.message
    unsigned = sign(headers={**SM_HEADERS, "X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    assert "X-Amz-Content-SHA256" in refused(unsigned).message  # an unsigned payload is not accepted either


def test_an_empty_body_is_signed_as_empty() -> None:
    h = sign(b"")
    assert check(h, b"") == "alice"
    assert refused(h, b"{}").code == "InvalidSignatureException"


# -- API keys ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "who"),
    [
        ({"X-Api-Key": "alice-key"}, "alice"),
        ({"x-api-key": "bob-key"}, "bob"),
        ({"Authorization": "Bearer bob-key"}, "bob"),
        ({"Authorization": "bearer  alice-key "}, "alice"),
        ({"Authorization": "BEARER alice-key"}, "alice"),
        ({"X-Api-Key": "alice-key", "Authorization": "Bearer nonsense"}, "alice"),
    ],
)
def test_api_keys(headers: dict[str, str], who: str) -> None:
    assert check(CIMultiDict(headers)) == who


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Api-Key": "guess"},
        {"Authorization": "Bearer guess"},
        {"X-Api-Key": "alice-key "},
        {"x-api-key": "ALICE-KEY"},
    ],
)
def test_an_unknown_api_key_is_refused(headers: dict[str, str]) -> None:
    e = refused(CIMultiDict(headers))
    assert e.code == "UnrecognizedClientException" and "API key" in e.message and "guess" not in e.message


def test_a_principal_without_api_keys_has_none() -> None:
    c = AuthConfig.from_dict({"principals": [{"name": "p", "access_keys": [{"id": KEY, "secret": SECRET}]}]})
    assert not c.api_keys
    for key in ("None", "none", "[]", ""):
        assert refused(CIMultiDict({"X-Api-Key": key}), config=c).code in (
            "UnrecognizedClientException",
            "MissingAuthenticationTokenException",
        )


def test_an_open_gateway_is_anonymous() -> None:
    open_cfg = AuthConfig()
    assert ANONYMOUS.name == "anonymous" and not ANONYMOUS.statements
    assert not open_cfg.enabled and not open_cfg.has_policies
    assert open_cfg.authenticate("POST", PATH, CIMultiDict({"X-Api-Key": "whatever"}), b"") is ANONYMOUS
    assert open_cfg.authenticate("POST", PATH, CIMultiDict(), b"") is ANONYMOUS
    assert open_cfg.allowed(ANONYMOUS, INVOKE, open_cfg.endpoint_arn("x"), {})


# -- policies: the matcher -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("pattern", "value", "match"),
    [
        ("a*", "a", True),  # "*" may match an empty run
        ("a*", "abc", True),
        ("a*", "ba", False),  # anchored at the start...
        ("*a", "ba", True),
        ("*a", "ab", False),  # ...and at the end
        ("a", "ab", False),
        ("ab", "a", False),
        ("*", "", True),
        ("*", "anything/at:all", True),
        ("", "", True),
        ("", "a", False),
        ("a?c", "abc", True),  # "?" is exactly one character
        ("a?c", "ac", False),
        ("a?c", "abbc", False),
        ("?", "", False),
        ("??", "ab", True),
        ("??", "a", False),
        ("a*b*c", "aXXbYYc", True),
        ("a*b*c", "aXXbYY", False),
        ("a.c", "abc", False),  # regex metacharacters are literal
        ("a.c", "a.c", True),
        ("a+", "aa", False),
        ("a+", "a+", True),
        ("(a|b)", "a", False),
        ("(a|b)", "(a|b)", True),
        ("[ab]", "a", False),
        ("^a$", "a", False),
        ("^a$", "^a$", True),
        ("a\\d", "a1", False),
        ("a\\d", "a\\d", True),
        ("a{2}", "aa", False),
        ("housing_*", "Housing_x", False),  # case-sensitive
        ("a*", "a\nb", True),  # "*" crosses newlines
        ("a", "a\n", False),  # the end is the end ("$" would allow a trailing newline)
    ],
)
def test_like_matches_iam_wildcards(pattern: str, value: str, match: bool) -> None:
    assert like(pattern, value) is match


def _config(*statements: dict[str, Any], others: tuple[dict[str, Any], ...] = ()) -> AuthConfig:
    return AuthConfig.from_dict(
        {"account": "123456789012", "principals": [{"name": "p", "api_keys": ["k"], "policy": list(statements)},
                                                   *others]}
    )  # fmt: skip


def _allowed(
    c: AuthConfig, model: str | None = "m", endpoint: str = "e", action: str = INVOKE, **extra: str | None
) -> bool:
    ctx = {"sagemaker:TargetModel": model, **{k.replace("_", ":"): v for k, v in extra.items()}}
    return c.allowed(c.principal("p"), action, c.endpoint_arn(endpoint), {k: v for k, v in ctx.items() if v})


ALLOW = {"Effect": "Allow", "Action": "invoke"}


def cond(op: str, values: str | list[str], key: str = "sagemaker:TargetModel") -> dict[str, Any]:
    return {"Effect": "Allow", "Action": "invoke", "Condition": {op: {key: values}}}


@pytest.mark.parametrize(
    ("statement", "model", "ok"),
    [
        (cond("StringLike", "housing_*"), "housing_x", True),
        (cond("StringLike", "housing_*"), "xhousing_x", False),
        (cond("StringLike", "housing_*"), None, False),  # a positive operator needs the key
        (cond("StringEquals", "housing_*"), "housing_x", False),  # Equals: no wildcards
        (cond("StringEquals", "housing_*"), "housing_*", True),
        (cond("StringEquals", "housing_x"), "housing_x", True),
        (cond("StringEquals", "housing_x"), "housing_xy", False),
        (cond("StringEquals", "housing_x"), None, False),
        (cond("StringLike", ["a*", "b?"]), "bb", True),  # values: any of
        (cond("StringLike", ["a*", "b?"]), "c", False),
        (cond("StringNotLike", "housing_*"), "housing_x", False),
        (cond("StringNotLike", "housing_*"), "digits", True),
        (cond("StringNotLike", "housing_*"), None, True),  # a negated operator holds when the key is missing
        (cond("StringNotLike", ["a*", "b*"]), "bz", False),  # none of
        (cond("StringNotEquals", "housing_x"), "housing_x", False),
        (cond("StringNotEquals", "housing_x"), "housing_y", True),
        (cond("StringNotEquals", "housing_*"), "housing_y", True),  # NotEquals: no wildcards either
        (cond("StringNotEquals", "housing_x"), None, True),
        (cond("StringLike", "M"), "m", False),  # values are case-sensitive
    ],
)
def test_condition_operators(statement: dict[str, Any], model: str | None, ok: bool) -> None:
    assert _allowed(_config(statement), model) is ok


def test_conditions_are_all_of_and_keys_ignore_case() -> None:
    both = {
        "Effect": "Allow",
        "Action": "invoke",
        "Condition": {
            "StringLike": {"SageMaker:TargetModel": "housing_*"},
            "StringEquals": {"sagemaker:targetvariant": "blue"},
        },
    }
    c = _config(both)
    assert _allowed(c, "housing_x", sagemaker_TargetVariant="blue")
    assert not _allowed(c, "housing_x", sagemaker_TargetVariant="green")
    assert not _allowed(c, "digits", sagemaker_TargetVariant="blue")
    assert not _allowed(c, "housing_x")


@pytest.mark.parametrize("deny_first", [True, False])
def test_an_explicit_deny_wins_in_any_order(deny_first: bool) -> None:
    deny = {"Effect": "Deny", "Action": "invoke", "Condition": {"StringLike": {"sagemaker:TargetModel": "h*"}}}
    c = _config(*((deny, ALLOW) if deny_first else (ALLOW, deny)))
    assert not _allowed(c, "housing")
    assert _allowed(c, "digits")


def test_default_deny() -> None:
    c = _config(cond("StringLike", "digits*"), others=({"name": "q", "api_keys": ["kq"]},))
    assert not _allowed(c, "housing")  # no statement allows it
    assert not c.allowed(c.principal("q"), INVOKE, c.endpoint_arn("e"), {"sagemaker:TargetModel": "digits"})
    deny_only = _config({"Effect": "Deny", "Action": "invoke", "Condition": {"StringLike": {"x:y": "z"}}})
    assert not _allowed(deny_only, "m")  # a Deny that does not apply allows nothing


def test_principals_without_policies_are_authentication_only() -> None:
    c = AuthConfig.from_dict({"principals": [{"name": "p", "api_keys": ["k"]}]})
    assert c.enabled and not c.has_policies
    assert c.allowed(c.principal("p"), ADMIN, c.admin_arn(), {})


@pytest.mark.parametrize(
    ("resource", "endpoint", "ok"),
    [
        ("*", "anything", True),
        ("endpoint/housing", "housing", True),
        ("endpoint/housing", "Housing", True),  # endpoint ARNs are lower-case, as SageMaker's
        ("endpoint/housing", "housing2", False),  # anchored
        ("endpoint/housing", "my-housing", False),
        ("endpoint/housing*", "housing2", True),
        ("endpoint/h?using", "housing", True),
        ("arn:aws:sagemaker:us-east-1:123456789012:endpoint/housing", "housing", True),
        ("arn:aws:sagemaker:eu-west-1:123456789012:endpoint/housing", "housing", False),  # another region
        ("arn:aws:sagemaker:us-east-1:999999999999:endpoint/housing", "housing", False),  # another account
        ("arn:aws:sagemaker:*:*:endpoint/*", "digits", True),
        ("arn:aws:s3:::endpoint/housing", "housing", False),
        (["endpoint/a", "endpoint/b"], "b", True),
        (["endpoint/a", "endpoint/b"], "c", False),
    ],
)
def test_resource_arns(resource: str | list[str], endpoint: str, ok: bool) -> None:
    c = _config({"Effect": "Allow", "Action": "invoke", "Resource": resource})
    assert _allowed(c, "m", endpoint) is ok


def test_arns() -> None:
    c = _config(ALLOW)
    assert c.endpoint_arn("My-Endpoint") == "arn:aws:sagemaker:us-east-1:123456789012:endpoint/my-endpoint"
    assert c.admin_arn() == "arn:aws:tritonctl:us-east-1:123456789012:admin"
    default = AuthConfig()
    assert default.endpoint_arn("e") == "arn:aws:sagemaker:us-east-1:000000000000:endpoint/e"


@pytest.mark.parametrize(
    ("action", "asked", "ok"),
    [
        ("invoke", INVOKE, True),
        ("invoke", ADMIN, False),
        ("admin", ADMIN, True),
        ("admin", INVOKE, False),
        ("sagemaker:InvokeEndpoint", INVOKE, True),
        ("sagemaker:*", INVOKE, True),
        ("sagemaker:*", ADMIN, False),
        ("*", ADMIN, True),
        ("tritonctl:Admin", ADMIN, True),  # what the aliases stand for, written out
        ("tritonctl:*", ADMIN, True),
        ("tritonctl:*", INVOKE, False),
        ("sagemaker:invokeendpoint", INVOKE, True),  # IAM action names ignore case...
        ("SageMaker:InvokeEndpoint*", INVOKE, True),
        ("sagemaker:InvokeEndpointAsync", INVOKE, False),  # ...but are matched whole
        (["admin", "invoke"], INVOKE, True),
    ],
)
def test_actions_and_aliases(action: str | list[str], asked: str, ok: bool) -> None:
    c = _config({"Effect": "Allow", "Action": action})
    assert c.allowed(c.principal("p"), asked, c.endpoint_arn("e"), {}) is ok


def test_a_deny_written_in_another_case_still_denies() -> None:
    c = _config(ALLOW, {"Effect": "Deny", "Action": "SAGEMAKER:invokeEndpoint"})
    assert not _allowed(c)


def test_authorize_says_who_what_where_and_through_what() -> None:
    c = _config(cond("StringLike", "digits*"))
    p = c.principal("p")
    c.authorize(p, INVOKE, c.endpoint_arn("e"), {"sagemaker:TargetModel": "digits", "sagemaker:TargetVariant": None})
    with pytest.raises(AccessDeniedError) as e:
        c.authorize(p, INVOKE, c.endpoint_arn("e"), {"sagemaker:TargetModel": "housing", "x": None}, via="router")
    msg = e.value.message
    assert msg.startswith("User: p is not authorized to perform: sagemaker:InvokeEndpoint on resource: arn:aws")
    assert "with sagemaker:TargetModel=housing" in msg and "(reached through router)" in msg and "x=" not in msg
    with pytest.raises(AccessDeniedError) as e:
        c.authorize(p, INVOKE, c.endpoint_arn("e"), {"sagemaker:TargetModel": "housing"})
    assert "reached through" not in e.value.message
    assert e.value.status == 403 and e.value.code == "AccessDeniedException"


def test_none_in_a_context_is_a_missing_key() -> None:
    c = _config(cond("StringNotEquals", "x", "sagemaker:TargetVariant"))
    assert c.allowed(c.principal("p"), INVOKE, c.endpoint_arn("e"), {"sagemaker:TargetVariant": None})
    assert not c.allowed(c.principal("p"), INVOKE, c.endpoint_arn("e"), {"sagemaker:TargetVariant": "x"})


# -- configuration -------------------------------------------------------------------------------------------------
def test_statement_parse_normalises() -> None:
    s = Statement.parse(
        {"effect": "Deny", "ACTION": ["invoke", "Admin"], "resource": "endpoint/x", "Sid": "s1",
         "condition": {"StringLike": {"SageMaker:TargetModel": "/h.tar.gz"}}}, "w",
    )  # fmt: skip
    assert s.effect == "Deny"
    assert s.actions == (INVOKE.lower(), ADMIN.lower())  # aliases ignore case, as action names do
    assert s.resources == ("arn:*:*:*:*:endpoint/x",)
    assert s.conditions == (("StringLike", "sagemaker:targetmodel", ("h",)),)
    assert Statement.parse({"Effect": "Allow", "Action": "invoke"}, "w").resources == ("*",)
    other = Statement.parse(
        {"Effect": "Allow", "Action": "invoke", "Condition": {"StringEquals": {"sagemaker:TargetVariant": "/v.tgz"}}},
        "w",
    )
    assert other.conditions == (("StringEquals", "sagemaker:targetvariant", ("/v.tgz",)),)  # only models canonical


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ({"Effect": "Allow", "Action": "invoke", "Principal": "*"}, "unknown statement keys"),
        ({"Effect": "Allow", "Action": "invoke", "Condition": {"StringLike": "x"}}, "needs a mapping"),
        ({"Effect": "Allow", "Action": "invoke", "Condition": {"ArnLike": {"a": "b"}}}, "unsupported"),
        ({"Effect": "allow", "Action": "invoke"}, "Allow or Deny"),
        ({"Action": "invoke"}, "Allow or Deny"),
        ({"Effect": "Allow", "Action": []}, "Action is required"),
        ({"Effect": "Allow"}, "Action is required"),
    ],
)
def test_bad_statements(raw: dict[str, Any], why: str) -> None:
    with pytest.raises(GatewayConfigError, match=why):
        Statement.parse(raw, "here")


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ([], "expected a mapping"),
        ({"principals": [{"name": "a"}, {"name": "a"}]}, "defined twice"),
        ({"principals": ["a"]}, "needs a name"),
        ({"principals": [{"name": ""}]}, "needs a name"),
        ({"principals": [{"name": "a", "access_keys": [{"id": "A"}]}]}, "needs id and secret"),
        ({"principals": [{"name": "a", "access_keys": [{"secret": "s"}]}]}, "needs id and secret"),
        ({"principals": [{"name": "a", "access_keys": ["A"]}]}, "needs id and secret"),
        ({"principals": [{"name": "a", "access_keys": [{"id": "A", "secret": ""}]}]}, "non-empty string"),
        ({"principals": [{"name": "a", "access_keys": [{"id": "A", "secret": 5}]}]}, "non-empty string"),
        ({"principals": [{"name": "a", "api_keys": ["env:TEST_UNIT_AUTH_UNSET"]}]}, "TEST_UNIT_AUTH_UNSET is not set"),
        ({"principals": [{"name": "a", "api_keys": ["k", "k"]}]}, "two principals"),
    ],
)
def test_bad_configs(raw: Any, why: str) -> None:
    with pytest.raises(GatewayConfigError, match=why):
        AuthConfig.from_dict(raw)


def test_secrets_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_UNIT_AUTH_SECRET", SECRET)
    monkeypatch.setenv("TEST_UNIT_AUTH_KEY", "env-key")
    monkeypatch.setenv("TEST_UNIT_AUTH_EMPTY", "")
    c = AuthConfig.from_dict(
        {"principals": [{"name": "alice", "api_keys": ["env:TEST_UNIT_AUTH_KEY"],
                         "access_keys": [{"id": KEY, "secret": "env:TEST_UNIT_AUTH_SECRET"}]}]}
    )  # fmt: skip
    assert check(sign(), config=c) == "alice"
    assert check(CIMultiDict({"X-Api-Key": "env-key"}), config=c) == "alice"
    assert refused(CIMultiDict({"X-Api-Key": "env:TEST_UNIT_AUTH_KEY"}), config=c).code == "UnrecognizedClientException"
    with pytest.raises(GatewayConfigError, match="TEST_UNIT_AUTH_EMPTY is not set"):
        AuthConfig.from_dict({"principals": [{"name": "a", "api_keys": ["env:TEST_UNIT_AUTH_EMPTY"]}]})


def test_policy_documents_and_files(tmp_path: Path) -> None:
    doc = {"Version": "2012-10-17", "Statement": [ALLOW]}
    for policy in (doc, {"statement": [ALLOW]}, [ALLOW]):
        c = AuthConfig.from_dict({"principals": [{"name": "p", "api_keys": ["k"], "policy": policy}]})
        assert c.has_policies and _allowed(c)
    empty = AuthConfig.from_dict({"principals": [{"name": "p", "api_keys": ["k"], "policy": {"Version": "x"}}]})
    assert not empty.has_policies
    raw = {"region": "eu-west-1", "account": "42", "principals": [{"name": "p", "api_keys": ["k"], "policy": doc}]}
    (tmp_path / "a.json").write_text(json.dumps(raw))
    (tmp_path / "a.json").write_text(json.dumps(raw, indent="\t"))  # valid JSON, not YAML (tab indentation)
    (tmp_path / "a.yaml").write_text(json.dumps(raw))  # JSON on one line is YAML too
    for name in ("a.json", "a.yaml"):
        c = AuthConfig.load(tmp_path / name)
        assert (c.region, c.account, [p.name for p in c.principals]) == ("eu-west-1", "42", ["p"])
        assert check(CIMultiDict({"X-Api-Key": "k"}), config=c) == "p"
    (tmp_path / "bad.json").write_text("{")
    (tmp_path / "bad.yaml").write_text("a: [")
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(GatewayConfigError, match="not valid JSON"):
        AuthConfig.load(tmp_path / "bad.json")
    with pytest.raises(GatewayConfigError, match="not valid YAML"):
        AuthConfig.load(tmp_path / "bad.yaml")
    with pytest.raises(GatewayConfigError, match="cannot read"):
        AuthConfig.load(tmp_path / "missing.yaml")
    assert not AuthConfig.load(tmp_path / "empty.yaml").enabled
    defaults = AuthConfig.from_dict({})
    assert (defaults.region, defaults.account) == ("us-east-1", "000000000000")


def test_secrets_stay_out_of_repr() -> None:
    c = cfg()
    assert SECRET not in repr(c) and "alice-key" not in repr(c)
    assert hashlib.sha256(b"alice-key").hexdigest() not in repr(c)  # nor what a guess could be checked against offline
    assert c.principal("bob") == Principal("bob")
    assert c.enabled and not c.has_policies


def test_the_metrics_action_and_its_alias() -> None:
    """Reading /metrics is its own IAM action (admin implies it in the gateway): written as `metrics` or in full."""
    from toolkit.gateway.auth import METRICS

    assert METRICS == "tritonctl:GetMetrics"
    for action in ("metrics", "tritonctl:GetMetrics"):
        cfg = AuthConfig.from_dict(
            {"principals": [{"name": "s", "api_keys": ["k"], "policy": [{"Effect": "Allow", "Action": action}]}]}
        )
        s = cfg.principal("s")
        assert cfg.allowed(s, METRICS, cfg.admin_arn(), {})
        assert not cfg.allowed(s, "tritonctl:Admin", cfg.admin_arn(), {})


def test_an_auth_file_that_is_not_text_says_so(tmp_path: Path) -> None:
    f = tmp_path / "auth.yaml"
    f.write_bytes(b"principals:\n  - name: caf\xe9\n")
    with pytest.raises(GatewayConfigError, match=r"auth\.yaml cannot be read as text: .*not UTF-8"):
        AuthConfig.load(f)
