"""Access control through the gateway: SigV4 verified against configured secrets (real boto3 signing), API keys,
IAM-like Allow/Deny with StringLike conditions, explicit deny wins, default deny, admin scope."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import urllib3
from botocore import UNSIGNED
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from tritonclient.utils import InferenceServerException

from toolkit.gateway.auth import AuthConfig
from toolkit.gateway.core import GatewayOptions
from toolkit.gateway.server import Gateway, GatewayAddresses, GatewayThread
from toolkit.mme.manager import ModelManager
from toolkit.server import EmbeddedTriton
from toolkit.spec.models import Manifest

ALICE_SECRET = "alice-secret-0123456789"
AUTH_YAML = """
region: us-east-1
account: "123456789012"
principals:
  - name: alice
    access_keys: [{id: AKIDALICE, secret: "env:TEST_GW_ALICE_SECRET"}]
    policy:
      Version: "2012-10-17"
      Statement:
        - {Effect: Allow, Action: "sagemaker:InvokeEndpoint", Resource: "arn:aws:sagemaker:*:*:endpoint/housing",
           Condition: {StringLike: {"sagemaker:TargetModel": ["housing_*"]}}}
        - {Effect: Deny, Action: "sagemaker:InvokeEndpoint", Resource: "*",
           Condition: {StringLike: {"sagemaker:TargetModel": ["housing_Houston*"]}}}
        - {Effect: Allow, Action: invoke, Resource: "endpoint/digits-mce",
           Condition: {StringLike: {"sagemaker:TargetContainerHostname": ["digits_l*", "digits_m?p"]}}}
  - name: bob
    api_keys: [bob-key-42]
    policy:
      - {Effect: Allow, Action: ["invoke", "admin"], Resource: "*"}
  - name: carol
    access_keys: [{id: AKIDCAROL, secret: carol-secret}]
  - name: limited
    access_keys: [{id: AKIDLIMITED, secret: limited-secret}]
    api_keys: [limited-key]
    policy:
      - {Effect: Allow, Action: invoke, Resource: "*"}
      - {Effect: Deny, Action: invoke, Resource: "*",
         Condition: {StringLike: {"sagemaker:TargetModel": "housing_Houston*"}}}
      - {Effect: Deny, Action: invoke, Resource: "*",
         Condition: {StringEquals: {"sagemaker:TargetModel": "/housing_LosAngeles_CA.tar.gz"}}}
  - name: scraper
    api_keys: [scraper-key]
    policy:
      - {Effect: Allow, Action: metrics}
  - name: dave
    api_keys: [dave-key-7]
    policy:
      - {Effect: Allow, Action: invoke, Resource: "endpoint/housing"}
"""
X = np.random.default_rng(2).random((1, 64), dtype=np.float32)


def _v2(name: str, arr: np.ndarray) -> bytes:
    t = {"name": name, "datatype": "FP32", "shape": list(arr.shape), "data": arr.ravel().tolist()}
    return json.dumps({"inputs": [t]}).encode()


@pytest.fixture(scope="module")
def secured(
    triton: EmbeddedTriton, example_repo: Path, example_manifest: Manifest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayAddresses]:
    f = tmp_path_factory.mktemp("auth") / "auth.yaml"
    f.write_text(AUTH_YAML)
    mp = pytest.MonkeyPatch()
    mp.setenv("TEST_GW_ALICE_SECRET", ALICE_SECRET)
    cfg = AuthConfig.load(f)
    opts = GatewayOptions(
        http_port=0, grpc_port=0, endpoints=list(example_manifest.endpoints), auth=cfg, repository=example_repo
    )
    manager = ModelManager(triton.endpoint, repository=example_repo, load_timeout=opts.timeout_s)
    runner = GatewayThread(Gateway(opts, triton.endpoint, models=manager))
    yield runner.start()
    runner.stop()
    mp.undo()


def _sm(addr: GatewayAddresses, key: str = "AKIDALICE", secret: str = ALICE_SECRET, unsigned: bool = False):  # type: ignore[no-untyped-def]
    cfg = Config(retries={"max_attempts": 1}, signature_version=UNSIGNED if unsigned else None)
    return boto3.client(
        "sagemaker-runtime", endpoint_url=addr.http_url, region_name="us-east-1",
        aws_access_key_id=key, aws_secret_access_key=secret, config=cfg,
    )  # fmt: skip


def _code(call) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(ClientError) as e:
        call()
    r = e.value.response
    return r["ResponseMetadata"]["HTTPStatusCode"], r["Error"]["Code"], r["Error"]["Message"]


def test_allow_with_wildcards_and_explicit_deny_wins(secured: GatewayAddresses) -> None:
    sm = _sm(secured)
    body = _v2("features", np.ones((1, 10), np.float32))
    r = sm.invoke_endpoint(
        EndpointName="housing", TargetModel="housing_Chicago_IL", ContentType="application/json", Body=body
    )
    assert json.loads(r["Body"].read())["model_name"] == "housing_Chicago_IL"
    args = {"EndpointName": "housing", "TargetModel": "housing_Houston_TX", "ContentType": "application/json"}
    status, code, msg = _code(lambda: sm.invoke_endpoint(Body=body, **args))
    assert (status, code) == (403, "AccessDeniedException")
    assert "alice" in msg and "endpoint/housing" in msg and "housing_Houston_TX" in msg
    for host, ok in (("digits_logreg", True), ("digits_mlp", True), ("digits_forest", False)):
        call = lambda h=host: sm.invoke_endpoint(  # noqa: E731
            EndpointName="digits-mce", TargetContainerHostname=h, ContentType="application/json", Body=_v2("X", X)
        )
        if ok:
            assert json.loads(call()["Body"].read())["model_name"] == host
        else:
            assert _code(call)[:2] == (403, "AccessDeniedException")
    # no statement allows the digits endpoint -> default deny
    assert (
        _code(lambda: sm.invoke_endpoint(EndpointName="digits", ContentType="application/json", Body=_v2("X", X)))[1]
        == "AccessDeniedException"
    )


@pytest.mark.parametrize(
    "spelling",
    ["/housing_Houston_TX", "//housing_Houston_TX.tar.gz", "/housing_Houston_TX.tgz", "housing_Houston_TX.tar.gz"],
)
def test_every_spelling_of_a_denied_target_model_is_denied(secured: GatewayAddresses, spelling: str) -> None:
    """The review's TargetModel bypass (Allow everything, Deny ``housing_Houston*``): the policy sees the canonical name
    the manager loads and Triton runs; a policy value written as an artifact path means the same name."""
    sm = _sm(secured, "AKIDLIMITED", "limited-secret")
    body = _v2("features", np.ones((1, 10), np.float32))
    status, code, msg = _code(
        lambda: sm.invoke_endpoint(
            EndpointName="housing", TargetModel=spelling, ContentType="application/json", Body=body
        )
    )
    assert (status, code) == (403, "AccessDeniedException") and "housing_Houston_TX" in msg
    r = sm.invoke_endpoint(  # the same spellings of an allowed model are served, as before
        EndpointName="housing", TargetModel=spelling.replace("Houston_TX", "Chicago_IL"),
        ContentType="application/json", Body=body,
    )  # fmt: skip
    assert json.loads(r["Body"].read())["model_name"] == "housing_Chicago_IL"
    miami = spelling.replace("Houston_TX", "LosAngeles_CA")
    status, code, msg = _code(
        lambda: sm.invoke_endpoint(EndpointName="housing", TargetModel=miami, ContentType="application/json", Body=body)
    )
    assert (status, code) == (403, "AccessDeniedException") and "housing_LosAngeles_CA" in msg


@pytest.mark.parametrize(
    "model",
    ["housing_by_city", "housing_by_city_field", "housing_ab", "housing_city_pipeline", "housing_city_param_pipeline"],
)
def test_a_denied_model_is_not_reached_through_a_router_or_ensemble(secured: GatewayAddresses, model: str) -> None:
    """The review's indirect routes: a router or an ensemble that may call Houston's model is refused to a principal
    denied Houston, over KServe HTTP and gRPC alike, before anything runs; a principal allowed everything is served."""
    c = httpclient.InferenceServerClient(secured.http, connection_timeout=30, network_timeout=30)
    with pytest.raises(InferenceServerException) as e:
        c.get_model_metadata(model, headers={"x-api-key": "limited-key"})
    assert "not authorized" in str(e.value) and "housing_Houston_TX" in str(e.value)
    assert "reached through" in str(e.value)
    g = grpcclient.InferenceServerClient(secured.grpc or "")
    with pytest.raises(InferenceServerException, match="PERMISSION_DENIED"):
        g.get_model_config(model, headers={"x-api-key": "limited-key"})
    assert g.get_model_config(model, headers={"x-api-key": "bob-key-42"}).config.name == model
    g.close()
    c.close()


@pytest.mark.parametrize("target", ["housing_Houston_TX.tar.gz.tgz", "../housing_Houston_TX", "a//b", ".hidden"])
def test_target_models_that_name_no_model_are_refused(secured: GatewayAddresses, target: str) -> None:
    sm = _sm(secured)
    args = {"EndpointName": "housing", "TargetModel": target, "ContentType": "application/json"}
    status, code, msg = _code(lambda: sm.invoke_endpoint(Body=b"{}", **args))
    assert (status, code) == (400, "ValidationError") and "TargetModel" in msg


def test_kserve_model_names_must_be_canonical(secured: GatewayAddresses) -> None:
    """``digits%5Flogreg`` decodes to an allowed name: refused all the same, so Triton never decodes another one."""
    for path in ("/v2/models/digits%5Flogreg/infer", "/v2/models/digits%5Flogreg/versions/1/infer"):
        req = urllib.request.Request(
            secured.http_url + path, data=_v2("X", X), headers={"X-Api-Key": "bob-key-42"}, method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=30)
        assert e.value.code == 400 and "model name" in json.loads(e.value.read())["error"]
    c = httpclient.InferenceServerClient(secured.http, connection_timeout=30, network_timeout=30)
    x = httpclient.InferInput("X", list(X.shape), "FP32")
    x.set_data_from_numpy(X)
    assert c.infer("digits_logreg", [x], headers={"X-Api-Key": "bob-key-42"}).as_numpy("probabilities") is not None
    c.close()


def test_default_deny_for_principal_without_policy(secured: GatewayAddresses) -> None:
    sm = _sm(secured, "AKIDCAROL", "carol-secret")  # correctly signed, but carol has no Allow
    args = {"EndpointName": "housing", "TargetModel": "housing_Chicago_IL", "ContentType": "application/json"}
    status, code, msg = _code(lambda: sm.invoke_endpoint(Body=b"{}", **args))
    assert (status, code) == (403, "AccessDeniedException") and "carol" in msg


def test_unsigned_unknown_key_wrong_signature(secured: GatewayAddresses) -> None:
    args = {
        "EndpointName": "housing",
        "TargetModel": "housing_Chicago_IL",
        "ContentType": "application/json",
        "Body": b"{}",
    }
    assert _code(lambda: _sm(secured, unsigned=True).invoke_endpoint(**args))[:2] == (
        403,
        "MissingAuthenticationTokenException",
    )
    assert _code(lambda: _sm(secured, "AKIDNOBODY", "x").invoke_endpoint(**args))[:2] == (
        403,
        "UnrecognizedClientException",
    )
    status, code, msg = _code(lambda: _sm(secured, "AKIDALICE", "wrong-secret").invoke_endpoint(**args))
    assert (status, code) == (403, "InvalidSignatureException") and ALICE_SECRET not in msg


def _signed(
    addr: GatewayAddresses,
    body: bytes,
    when: dt.datetime,
    tamper: bytes | None = None,
    scope: tuple[str, str] = ("sagemaker", "us-east-1"),
    extra: dict[str, str] | None = None,
) -> tuple[int, str]:
    url = f"{addr.http_url}/endpoints/housing/invocations"
    req = AWSRequest("POST", url, data=body, headers={
        "Content-Type": "application/json", "X-Amzn-SageMaker-Target-Model": "housing_Chicago_IL",
        "X-Amz-Date": when.strftime("%Y%m%dT%H%M%SZ"), "Host": addr.http, **(extra or {})})  # fmt: skip
    req.context["timestamp"] = when.strftime("%Y%m%dT%H%M%SZ")
    s = SigV4Auth(Credentials("AKIDALICE", ALICE_SECRET), *scope)
    sig = s.signature(s.string_to_sign(req, s.canonical_request(req)), req)
    headers = dict(req.headers.items())
    headers["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={s.scope(req)}, SignedHeaders={s.signed_headers(s.headers_to_sign(req))}, "
        f"Signature={sig}"
    )
    r = urllib3.PoolManager().request("POST", url, body=tamper if tamper is not None else body, headers=headers)
    return r.status, r.headers.get("x-amzn-ErrorType", "")


def test_stale_and_tampered_signatures(secured: GatewayAddresses) -> None:
    body = _v2("features", np.ones((1, 10), np.float32))
    now = dt.datetime.now(dt.timezone.utc)
    assert _signed(secured, body, now)[0] == 200  # the hand-made signature is right...
    assert _signed(secured, body, now - dt.timedelta(minutes=20)) == (403, "InvalidSignatureException")  # ...stale
    tampered = body.replace(b"1.0", b"9.0", 1)
    assert tampered != body and hashlib.sha256(tampered).digest() != hashlib.sha256(body).digest()
    assert _signed(secured, body, now, tamper=tampered) == (403, "InvalidSignatureException")
    # a valid signature made for another service or region (same key) is not accepted, as AWS would not
    assert _signed(secured, body, now, scope=("s3", "us-east-1")) == (403, "InvalidSignatureException")
    assert _signed(secured, body, now, scope=("sagemaker", "eu-west-1")) == (403, "InvalidSignatureException")


def test_a_compressed_body_is_verified_as_sent(secured: GatewayAddresses) -> None:
    """A client signs the bytes it sends: a gzip body's signature covers the compressed bytes, and the gateway checks
    it before inflating anything (an unauthenticated caller makes the gateway inflate nothing)."""
    body = _v2("features", np.ones((1, 10), np.float32))
    packed = gzip.compress(body)
    now = dt.datetime.now(dt.timezone.utc)
    assert _signed(secured, packed, now, extra={"Content-Encoding": "gzip"})[0] == 200
    # a signature over the inflated body does not cover what was sent
    assert _signed(secured, body, now, tamper=packed, extra={"Content-Encoding": "gzip"}) == (
        403,
        "InvalidSignatureException",
    )


def test_api_keys_for_tritonclient_and_admin_scope(secured: GatewayAddresses) -> None:
    h = {"x-api-key": "bob-key-42"}
    c = httpclient.InferenceServerClient(secured.http)
    i = httpclient.InferInput("X", list(X.shape), "FP32")
    i.set_data_from_numpy(X)
    assert c.infer("digits_mlp", [i], headers=h).as_numpy("label").shape == (1, 1)
    with pytest.raises(InferenceServerException, match="Missing Authentication Token"):
        c.infer("digits_mlp", [i])
    with pytest.raises(InferenceServerException, match="API key"):
        c.infer("digits_mlp", [i], headers={"x-api-key": "guess"})
    c.load_model("housing_LosAngeles_CA", headers=h)  # bob has admin scope on the invoke port
    assert c.is_model_ready("housing_LosAngeles_CA", headers=h)
    g = grpcclient.InferenceServerClient(secured.grpc or "")
    gi = grpcclient.InferInput("X", list(X.shape), "FP32")
    gi.set_data_from_numpy(X)
    assert g.infer("digits_logreg", [gi], headers={"authorization": "Bearer bob-key-42"}).as_numpy("label") is not None
    with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
        g.infer("digits_logreg", [gi])


def test_secrets_never_in_logs_or_repr(secured: GatewayAddresses, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    _code(lambda: _sm(secured, "AKIDALICE", "wrong-secret").invoke_endpoint(EndpointName="housing", Body=b"{}"))
    _code(lambda: _sm(secured, "AKIDALICE", ALICE_SECRET).invoke_endpoint(EndpointName="housing", Body=b"{}"))
    req = urllib.request.Request(f"{secured.http_url}/v2/models/stats", headers={"x-api-key": "guess-key-123"})
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(req, timeout=10)
    assert "guess-key-123" not in denied.value.read().decode()
    assert "authentication failed" in caplog.text  # the audit log has content: the assertions below can fail
    cfg = AuthConfig.from_dict(
        {"principals": [{"name": "z", "api_keys": ["sekrit-key"], "access_keys": [{"id": "A", "secret": "sekrit"}]}]}
    )
    assert "sekrit" not in repr(cfg) and "sekrit" not in caplog.text
    assert ALICE_SECRET not in caplog.text and "wrong-secret" not in caplog.text and "guess-key-123" not in caplog.text


def test_statistics_of_every_model_need_an_invoke_allow(secured: GatewayAddresses) -> None:
    """/v2/models/stats is authorized like gRPC's ModelStatistics: an Allow for the KServe endpoint, not any key."""
    import urllib.error
    import urllib.request

    def get(key: str) -> int:
        req = urllib.request.Request(f"{secured.http_url}/v2/models/stats", headers={"x-api-key": key})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    assert get("bob-key-42") == 200  # Allow invoke on *
    assert get("dave-key-7") == 403  # authenticated, but allowed only the housing endpoint


def _get(url: str, key: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"x-api-key": key} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_operator_endpoints_need_credentials_and_stats_hide_denied_models(secured: GatewayAddresses) -> None:
    """With principals: /metrics needs an Allow on metrics (or admin), /v2 any credentials, readiness none; the
    statistics of every model leave out the models the caller may not invoke, over HTTP and gRPC."""
    base = secured.http_url
    assert _get(f"{base}/metrics")[0] == 403
    assert _get(f"{base}/metrics", "dave-key-7")[0] == 403  # invoke only
    assert _get(f"{base}/metrics", "scraper-key")[0] == 200
    status, text = _get(f"{base}/metrics", "bob-key-42")  # admin implies metrics
    assert status == 200 and b"tritonctl_gateway_requests_total" in text
    assert _get(f"{base}/v2")[0] == 403 and _get(f"{base}/v2", "dave-key-7")[0] == 200
    assert _get(f"{base}/v2/health/ready")[0] == 200 and _get(f"{base}/v2/health/live")[0] == 200
    c = httpclient.InferenceServerClient(secured.http, connection_timeout=30, network_timeout=30)
    for m in ("housing_Houston_TX", "housing_Chicago_IL"):  # loaded, so Triton has their statistics
        c.load_model(m, headers={"x-api-key": "bob-key-42"})
    c.close()
    names = lambda key: {m["name"] for m in json.loads(_get(f"{base}/v2/models/stats", key)[1])["model_stats"]}  # noqa: E731
    assert "housing_Houston_TX" in names("bob-key-42")
    seen = names("limited-key")
    assert "housing_Houston_TX" not in seen and seen  # the rest stays visible
    g = grpcclient.InferenceServerClient(secured.grpc or "")
    with pytest.raises(InferenceServerException, match="PERMISSION_DENIED"):
        g.get_inference_statistics(headers={"x-api-key": "limited-key"})  # every model's: operators only
    assert g.get_inference_statistics(headers={"x-api-key": "bob-key-42"}).model_stats
    assert g.get_inference_statistics("housing_Chicago_IL", headers={"x-api-key": "limited-key"}) is not None
    with pytest.raises(InferenceServerException, match="PERMISSION_DENIED"):
        g.get_inference_statistics("housing_Houston_TX", headers={"x-api-key": "limited-key"})
    g.close()
