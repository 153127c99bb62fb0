"""``tritonctl status`` and ``models`` pointed at the gateway (a real one over the session's real Triton).

The read-only commands work for any caller allowed to invoke and show only what it may invoke; load/unload need
admin, and the refusal says how to get it. Without principals (``tritonctl serve`` with no ``--auth``), anyone may
read, as anyone may invoke.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from toolkit.cli.main import app
from toolkit.gateway.auth import AuthConfig
from toolkit.gateway.core import GatewayOptions
from toolkit.gateway.server import Gateway, GatewayAddresses, GatewayThread
from toolkit.mme.manager import ModelManager
from toolkit.server import EmbeddedTriton, TritonAdmin
from toolkit.spec.models import Manifest

AUTH = {
    "principals": [
        {"name": "ops", "api_keys": ["ops-key"], "policy": [{"Effect": "Allow", "Action": ["invoke", "admin"]}]},
        {
            "name": "team",
            "api_keys": ["team-key"],
            "policy": [
                {"Effect": "Allow", "Action": "invoke", "Resource": "*"},
                {
                    "Effect": "Deny",
                    "Action": "invoke",
                    "Resource": "*",
                    "Condition": {"StringLike": {"sagemaker:TargetModel": "housing_*"}},
                },
            ],
        },
        {"name": "scraper", "api_keys": ["scraper-key"], "policy": [{"Effect": "Allow", "Action": "metrics"}]},
    ]
}
runner = CliRunner()


def _gateway(triton: EmbeddedTriton, repo: Path, manifest: Manifest, auth: AuthConfig) -> GatewayThread:
    opts = GatewayOptions(http_port=0, grpc_port=0, endpoints=list(manifest.endpoints), auth=auth, repository=repo)
    manager = ModelManager(triton.endpoint, repository=repo, load_timeout=opts.timeout_s)
    return GatewayThread(Gateway(opts, triton.endpoint, models=manager))


@pytest.fixture(scope="module")
def gateways(
    triton: EmbeddedTriton, admin: TritonAdmin, example_repo: Path, example_manifest: Manifest
) -> Iterator[tuple[GatewayAddresses, GatewayAddresses]]:
    """(open: no principals, secured: AUTH), with digits_mlp and a housing model loaded."""
    admin.load("digits_mlp")
    admin.load("housing_Chicago_IL")
    open_ = _gateway(triton, example_repo, example_manifest, AuthConfig())
    secured = _gateway(triton, example_repo, example_manifest, AuthConfig.from_dict(AUTH))
    try:
        yield open_.start(), secured.start()
    finally:
        open_.stop()
        secured.stop()


def run(*args: str) -> tuple[int, str, str]:
    r = runner.invoke(app, list(args))
    return r.exit_code, r.stdout, r.stderr


def test_status_and_models_list_through_an_open_gateway(gateways: tuple[GatewayAddresses, GatewayAddresses]) -> None:
    """The issue's reproduction: `tritonctl serve` without --auth, then status/models list at the gateway."""
    url = gateways[0].http_url
    code, out, err = run("status", "--url", url, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["live"] and doc["ready"] and {"digits_mlp", "housing_Chicago_IL"} <= set(doc["loaded"])
    code, out, err = run("models", "list", "--url", url, "--json")
    assert code == 0, err
    names = {m["name"] for m in json.loads(out)}
    assert {"digits_mlp", "digits_forest", "housing_Chicago_IL"} <= names  # every model, loaded or not
    code, out, _ = run("models", "ready", "digits_mlp", "--url", url, "--json")
    assert code == 0 and json.loads(out) == {"model": "digits_mlp", "ready": True}


def test_the_listing_shows_only_what_the_caller_may_invoke(
    gateways: tuple[GatewayAddresses, GatewayAddresses],
) -> None:
    url = gateways[1].http_url
    code, out, err = run("models", "list", "--url", url, "--api-key", "team-key", "--json")
    assert code == 0, err
    team = {m["name"] for m in json.loads(out)}
    assert "digits_mlp" in team and not [n for n in team if n.startswith("housing_")]
    code, out, err = run("models", "list", "--url", url, "--api-key", "ops-key", "--json")
    ops = {m["name"] for m in json.loads(out)}
    assert ops > team and "housing_Chicago_IL" in ops  # an admin sees everything
    code, out, err = run("status", "--url", url, "--api-key", "team-key", "--json")
    assert code == 0 and "digits_mlp" in json.loads(out)["loaded"] and "housing_Chicago_IL" not in out
    # scraper may not invoke anything: it is told nothing (an empty listing), not refused with model names
    code, out, err = run("models", "list", "--url", url, "--api-key", "scraper-key", "--json")
    assert code == 0 and json.loads(out) == []


def test_without_credentials_a_secured_gateway_says_so(
    gateways: tuple[GatewayAddresses, GatewayAddresses], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRITONCTL_API_KEY", raising=False)
    for args in (("models", "list"), ("status",), ("models", "ready", "digits_mlp")):
        code, out, err = run(*args, "--url", gateways[1].http_url)
        assert code == 1 and err.startswith("error: ") and err.count("\n") == 1, (args, err)
        assert "Missing Authentication Token" in err and "--api-key or $TRITONCTL_API_KEY" in err, (args, err)
        assert "NOT READY" not in out  # a refusal is not an answer about the model
    code, _, err = run("models", "list", "--url", gateways[1].http_url, "--api-key", "wrong")
    assert code == 1 and "API key" in err and "--api-key" in err, err
    monkeypatch.setenv("TRITONCTL_API_KEY", "team-key")  # the variable works as the flag does
    code, out, err = run("models", "list", "--url", gateways[1].http_url)
    assert code == 0 and "digits_mlp" in out, err


def test_load_through_the_gateway_needs_admin_and_says_how(
    gateways: tuple[GatewayAddresses, GatewayAddresses],
) -> None:
    code, _, err = run("models", "load", "digits_forest", "--url", gateways[0].http_url)
    assert code == 1 and err.count("\n") == 1, err
    assert "tritonctl:Admin" in err and "--admin-port" in err and "--api-key" in err, err
    code, _, err = run("models", "unload", "digits_mlp", "--url", gateways[1].http_url, "--api-key", "team-key")
    assert code == 1 and "tritonctl:Admin" in err and "--admin-port" in err, err
    code, out, err = run("models", "load", "digits_logreg", "--url", gateways[1].http_url, "--api-key", "ops-key")
    assert code == 0 and "digits_logreg: READY" in out, err


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_invoke_with_an_api_key(gateways: tuple[GatewayAddresses, GatewayAddresses], protocol: str) -> None:
    secured = gateways[1]
    args = ["invoke", "digits_mlp", "-i", "X=" + json.dumps([0.0] * 64), "--json", "--protocol", protocol]
    args += ["--url", secured.http_url, "--grpc-url", secured.grpc or ""]
    code, out, err = run(*args, "--api-key", "team-key")
    assert code == 0 and sorted(json.loads(out)) == ["label", "probabilities"], err
    code, _, err = run(*args, "--api-key", "wrong")
    assert code == 1 and err.startswith("error: ") and "API key" in err, err
