"""The gateway's SageMaker runtime details on a real Triton: a request that outlasts the request timeout gets 504 at the
deadline, a cold model whose load outlasts the wait budget gets SageMaker's 429 ModelNotReadyException (boto3 raises
it) and a retry once the load has finished succeeds; Custom-Attributes and Inference-Id reach the model as request
parameters and Custom-Attributes comes back to boto3. The gateway keeps serving throughout."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.config import Config
from waiting import wait_until

from toolkit.gateway.core import GatewayOptions
from toolkit.gateway.server import Gateway, GatewayThread
from toolkit.mme.manager import ModelManager
from toolkit.repository.config import build_config
from toolkit.repository.generate import GeneratedModel, write_model
from toolkit.repository.samples import write_scale_model
from toolkit.server import EmbeddedTriton, ServerOptions, TritonAdmin
from toolkit.spec.models import EndpointSpec, ModelSpec, TensorSpec

ECHO_PARAMS = b"""import json
import numpy as np
import triton_python_backend_utils as pb_utils
class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("P", np.array([r.parameters().encode()], dtype=object))])
                for r in requests]
"""
BODY = json.dumps({"inputs": [{"name": "X", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]}]}).encode()
BIN_HEAD = json.dumps(
    {"inputs": [{"name": "X", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}
).encode()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("gw_timeouts")
    repo = base / "repo"
    write_scale_model(repo, "fast")
    write_scale_model(repo, "slow_exec", sleep_ms=2000)
    write_scale_model(repo, "slow_load", init_sleep_ms=2500)
    echo = ModelSpec(name="echo_params", framework="python", inputs=[TensorSpec(name="X", dtype="FP32", dims=[2])],
                     outputs=[TensorSpec(name="P", dtype="BYTES", dims=[1])])  # fmt: skip
    write_model(GeneratedModel("echo_params", build_config(echo), {"1/model.py": ECHO_PARAMS}), repo)
    server = EmbeddedTriton(ServerOptions(repository=repo, workdir=base, log_file=base / "triton.log"))
    server.start(timeout=90)
    manager = ModelManager(server.endpoint, repository=repo)
    opts = GatewayOptions(
        http_port=0, timeout_s=0.6, load_wait_s=0.5, repository=repo,
        endpoints=[EndpointSpec(name="mme", mode="multi-model", models=["fast", "slow_exec", "slow_load"]),
                   EndpointSpec(name="echo", mode="single", model="echo_params")],
    )  # fmt: skip
    runner = GatewayThread(Gateway(opts, server.endpoint, models=manager))
    addrs = runner.start()
    yield {"url": addrs.http_url, "repo": Path(repo), "triton": server.endpoint}
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


def _loaded(gateway: dict[str, Any], model: str) -> None:
    """Load ``model`` through the gateway: a first request starts the load (its answer depends on how long that takes
    against the 0.5 s wait budget: 429, or 504 for slow_exec), then wait until Triton reports the model READY."""
    _post(gateway["url"], f"/v2/models/{model}/infer")
    admin = TritonAdmin(gateway["triton"])
    try:
        wait_until(lambda: admin.model_ready(model), 30, f"{model} READY in Triton", interval=0.05)
    finally:
        admin.close()


def test_request_timeout_is_504_at_the_deadline(gateway: dict[str, Any]) -> None:
    url = gateway["url"]
    for model in ("fast", "slow_exec"):  # warm: the budget under test applies to the inference itself
        _loaded(gateway, model)
    assert _post(url, "/v2/models/fast/infer")[0] == 200
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
    admin = TritonAdmin(gateway["triton"])  # the load goes on in the background; SageMaker clients retry later
    try:
        assert not admin.model_ready("slow_load")  # the 429 came while it was still loading
        wait_until(lambda: admin.model_ready("slow_load"), 30, "slow_load READY in Triton", interval=0.05)
    finally:
        admin.close()
    r = sm.invoke_endpoint(
        EndpointName="mme", TargetModel="slow_load.tar.gz", ContentType="application/json", Body=BODY
    )
    assert json.loads(r["Body"].read())["outputs"][0]["data"] == [2.0, 4.0]


def test_custom_attributes_and_inference_id_reach_the_model(gateway: dict[str, Any]) -> None:
    _loaded(gateway, "echo_params")  # a cold load outlasting the 0.5 s wait budget is the 429 test's subject, not this
    sm = boto3.client(
        "sagemaker-runtime", endpoint_url=gateway["url"], region_name="us-east-1", aws_access_key_id="AKIDTEST",
        aws_secret_access_key="x",
    )  # fmt: skip
    for ctype, body in (
        ("application/json", BODY),
        (  # the binary form: the JSON header grows, the tensor bytes behind it stay as they were
            f"application/vnd.sagemaker-triton.binary+json;json-header-size={len(BIN_HEAD)}",
            BIN_HEAD + np.array([1.0, 2.0], np.float32).tobytes(),
        ),
    ):
        r = sm.invoke_endpoint(EndpointName="echo", ContentType=ctype, Body=body, CustomAttributes="trace=abc,user=7",
                               InferenceId="req-42")  # fmt: skip
        assert r["CustomAttributes"] == "trace=abc,user=7"
        out = json.loads(r["Body"].read())["outputs"][0]["data"][0]
        assert json.loads(out) == {
            "sagemaker_custom_attributes": "trace=abc,user=7",
            "sagemaker_inference_id": "req-42",
        }
    bad = json.dumps({"inputs": json.loads(BODY)["inputs"], "parameters": [1]}).encode()
    with pytest.raises(sm.exceptions.ValidationError, match="must be a JSON object"):
        sm.invoke_endpoint(EndpointName="echo", ContentType="application/json", Body=bad, CustomAttributes="a=1")
    plain = sm.invoke_endpoint(EndpointName="echo", ContentType="application/json", Body=BODY)
    assert (
        "CustomAttributes" not in plain and json.loads(json.loads(plain["Body"].read())["outputs"][0]["data"][0]) == {}
    )
