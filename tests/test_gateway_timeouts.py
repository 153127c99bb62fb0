"""The gateway's time budgets, on a real Triton: a request that outlasts the request timeout gets 504 at the deadline,
a cold model whose load outlasts the wait budget gets SageMaker's 429 ModelNotReadyException (boto3 raises it), and a
retry once the load has finished succeeds. The gateway keeps serving throughout."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from toolkit.gateway.core import GatewayOptions
from toolkit.gateway.server import Gateway, GatewayThread
from toolkit.mme.manager import ModelManager
from toolkit.repository.samples import write_scale_model
from toolkit.server import EmbeddedTriton, ServerOptions
from toolkit.spec.models import EndpointSpec

BODY = json.dumps({"inputs": [{"name": "X", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]}]}).encode()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("gw_timeouts")
    repo = base / "repo"
    write_scale_model(repo, "fast")
    write_scale_model(repo, "slow_exec", sleep_ms=2000)
    write_scale_model(repo, "slow_load", init_sleep_ms=2500)
    server = EmbeddedTriton(ServerOptions(repository=repo, workdir=base, log_file=base / "triton.log"))
    server.start(timeout=90)
    manager = ModelManager(server.endpoint, repository=repo)
    opts = GatewayOptions(
        http_port=0, timeout_s=0.6, load_wait_s=0.5, repository=repo,
        endpoints=[EndpointSpec(name="mme", mode="multi-model", models=["fast", "slow_exec", "slow_load"])],
    )  # fmt: skip
    runner = GatewayThread(Gateway(opts, server.endpoint, models=manager))
    addrs = runner.start()
    yield {"url": addrs.http_url, "repo": Path(repo)}
    runner.stop()
    server.stop()


def _post(url: str, path: str) -> tuple[int, dict[str, Any], float]:
    req = urllib.request.Request(url + path, data=BODY, method="POST", headers={"Content-Type": "application/json"})
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read()), time.monotonic() - t0
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}"), time.monotonic() - t0


def test_request_timeout_is_504_at_the_deadline(gateway: dict[str, Any]) -> None:
    url = gateway["url"]
    assert _post(url, "/v2/models/fast/infer")[0] == 200
    _post(url, "/v2/models/slow_exec/infer")  # may include the load; the budget applies to the inference itself
    code, body, took = _post(url, "/v2/models/slow_exec/infer")
    assert code == 504, body
    assert "did not answer within 0.6 s" in body["error"]
    assert took < 1.8  # answered at the deadline, not when the 2 s execution ends
    status, out, _ = _post(url, "/v2/models/fast/infer")  # still serving
    assert status == 200 and out["outputs"][0]["data"] == [2.0, 4.0]


def test_load_outlasting_the_wait_budget_is_429_then_retry_succeeds(gateway: dict[str, Any]) -> None:
    sm = boto3.client(
        "sagemaker-runtime", endpoint_url=gateway["url"], region_name="us-east-1", aws_access_key_id="AKIDTEST",
        aws_secret_access_key="x", config=Config(retries={"max_attempts": 1}),
    )  # fmt: skip
    t0 = time.monotonic()
    with pytest.raises(sm.exceptions.ModelNotReadyException) as info:
        sm.invoke_endpoint(
            EndpointName="mme", TargetModel="slow_load.tar.gz", ContentType="application/json", Body=BODY
        )
    assert time.monotonic() - t0 < 2.0  # the wait budget (0.5 s), not the 2.5 s load
    assert "slow_load" in info.value.response["Error"]["Message"]
    time.sleep(3.0)  # the load goes on in the background; SageMaker clients retry later
    r = sm.invoke_endpoint(
        EndpointName="mme", TargetModel="slow_load.tar.gz", ContentType="application/json", Body=BODY
    )
    assert json.loads(r["Body"].read())["outputs"][0]["data"] == [2.0, 4.0]
