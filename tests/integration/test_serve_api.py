"""The library entry point as a user calls it: ``start(ServeConfig(...))`` serves a manifest (a real embedded Triton
behind the gateway), tritonclient and boto3 invoke through it, and leaving the ``with`` block stops everything.
A start-up that fails once Triton is launched stops what it started and keeps the work directory for its log."""

from __future__ import annotations

import json
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

import boto3
import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from toolkit import ModelManager, ServeConfig, ServerError, start
from toolkit.loadtest.serverstats import parse_prometheus

ROOT = Path(__file__).resolve().parents[2]
FREE = {"http_port": 0, "grpc_port": 0, "metrics_port": 0, "gateway_port": 0, "gateway_grpc_port": 0}


def _all_tritonservers() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True) if "tritonserver" in " ".join(p.cmdline())}


@pytest.fixture
def _tritonservers() -> Callable[[], set[int]]:
    """The tritonservers this test started: in the whole suite, other modules' session fixtures run some too."""
    before = _all_tritonservers()
    return lambda: _all_tritonservers() - before


def _digit0(mod) -> object:  # type: ignore[no-untyped-def]
    x = mod.InferInput("X", [1, 64], "FP32")
    x.set_data_from_numpy(np.load(ROOT / "examples" / "digit0.npy")[None, :].astype(np.float32))
    return x


def test_start_serves_a_manifest_through_the_gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _tritonservers: Callable[[], set[int]]
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # its temporary work directory lands here
    lines: list[str] = []
    config = ServeConfig(manifest=ROOT / "tritonctl.yaml", admin_port=0, max_models=2, **FREE)
    with start(config, echo=lines.append) as serving:
        work = serving.work
        assert (work / "model_repository" / "digits_mlp" / "config.pbtxt").is_file()  # generated from the manifest
        assert serving.gateway is not None and serving.triton is not None and serving.grpc
        assert serving.http == serving.gateway.http and serving.triton.http.startswith("127.0.0.1:")
        assert isinstance(serving.models, ModelManager)  # a repository Triton reads: the MME manager
        assert _tritonservers()

        http = httpclient.InferenceServerClient(serving.http)
        assert int(http.infer("digits_mlp", [_digit0(httpclient)]).as_numpy("label")[0, 0]) == 0  # loads lazily
        http.close()
        grpc = grpcclient.InferenceServerClient(serving.grpc)
        assert int(grpc.infer("digits_mlp", [_digit0(grpcclient)]).as_numpy("label")[0, 0]) == 0
        grpc.close()

        sm = boto3.client("sagemaker-runtime", endpoint_url=serving.url, region_name="us-east-1",
                          aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="x")  # fmt: skip
        x = np.load(ROOT / "examples" / "digit0.npy").astype(np.float32)
        body = {"inputs": [{"name": "X", "shape": [1, 64], "datatype": "FP32", "data": x.tolist()}]}
        r = sm.invoke_endpoint(EndpointName="digits-mce", TargetContainerHostname="digits_mlp", Body=json.dumps(body),
                               ContentType="application/json")  # fmt: skip
        out = json.loads(r["Body"].read())["outputs"]
        assert next(o["data"] for o in out if o["name"] == "label") == [0]

        assert serving.gateway.admin_url
        with urllib.request.urlopen(serving.gateway.admin_url + "/metrics", timeout=5) as resp:
            assert parse_prometheus(resp.read().decode())[("tritonctl_mme_loaded_models", "")] == 1
    assert not _tritonservers()
    assert not work.exists()  # removed after a clean stop
    assert any(line.startswith("gateway  http ") for line in lines)
    serving.stop()  # idempotent


def test_a_failed_start_stops_triton_and_keeps_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _tritonservers: Callable[[], set[int]]
) -> None:
    """Triton is launched and exits (a model it is told to load does not exist): nothing keeps running, and the work
    directory with Triton's log stays for inspection, named through echo."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    lines: list[str] = []
    config = ServeConfig(repository=ROOT / "model_repository", load=["no_such_model"], **FREE)
    with pytest.raises(ServerError, match="tritonserver exited"):
        start(config, echo=lines.append)
    assert not _tritonservers()
    (work,) = tmp_path.iterdir()
    assert (work / "tritonserver.log").is_file()
    assert lines == [f"work directory kept for inspection: {work}"]
