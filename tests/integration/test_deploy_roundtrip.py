"""The round trip: what ``deploy`` uploaded for a multi-model endpoint is served, from moto's S3, by
``tritonctl serve --store s3://...`` (the library's ``start``), and boto3's ``invoke_endpoint`` through our gateway
answers with the predictions of the manifest's own models.

moto answers ``invoke_endpoint`` with canned data, so the invocation goes through our gateway; what is real here is
the uploaded bytes: the tarballs deploy made are fetched from S3, extracted and loaded by a real Triton. The models are
python-backend ones (numpy, python), because the embedded Triton has no onnxruntime backend; the onnxruntime
tarballs are checked by the ONNX equality check and the config tests, not by a Triton here.
"""

from __future__ import annotations

import importlib.util
import json
import uuid
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from typer.testing import CliRunner

from examples.deploy_demo import ROOT, write_manifest
from toolkit import ServeConfig, start
from toolkit.cli.main import app
from toolkit.deploy import api

FREE = {"http_port": 0, "grpc_port": 0, "metrics_port": 0, "gateway_port": 0, "gateway_grpc_port": 0}


def _local_predict(x: np.ndarray) -> dict[str, np.ndarray]:
    spec = importlib.util.spec_from_file_location("digits_mlp_local", ROOT / "examples/artifacts/digits_mlp.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.predict({"X": x}))


def _invoke(sm: Any, model: str, name: str, arr: np.ndarray, dtype: str) -> dict[str, Any]:
    body = {"inputs": [{"name": name, "shape": list(arr.shape), "datatype": dtype, "data": arr.ravel().tolist()}]}
    r = sm.invoke_endpoint(
        EndpointName="mme", TargetModel=f"{model}.tar.gz", Body=json.dumps(body), ContentType="application/json"
    )
    return {o["name"]: o for o in json.loads(r["Body"].read())["outputs"]}


def test_deployed_prefix_serves_through_the_gateway(
    tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = f"tt-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    manifest = write_manifest(tmp_path / "tritonctl.yaml", bucket)
    api.deploy(manifest, "mme", lambda _: None, endpoint_url=s3_endpoint, poll_s=0.01)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)  # the store's boto3 client finds moto (the usual chain)
    repo = tmp_path / "repository"
    repo.mkdir()
    config = ServeConfig(repository=repo, manifest=manifest, store=f"s3://{bucket}/tt/mme", max_models=2, **FREE)
    try:
        with start(config, echo=lambda _: None) as serving:
            sm = boto3.client(
                "sagemaker-runtime",
                endpoint_url=serving.url,
                region_name="us-east-1",
                aws_access_key_id="AKIDEXAMPLE",
                aws_secret_access_key="x",
            )
            x = np.load(ROOT / "examples/digits_samples.npy")[:8].astype(np.float32)
            out = _invoke(sm, "digits_mlp", "X", x, "FP32")
            want = _local_predict(x)
            assert np.asarray(out["label"]["data"]).tolist() == want["label"].tolist()
            np.testing.assert_allclose(np.asarray(out["probabilities"]["data"]).reshape(8, 10), want["probabilities"])
            price = np.array([[101.4], [99.6]], dtype=np.float32)
            dollars = _invoke(sm, "housing_postprocess", "price", price, "FP32")["price_dollars"]["data"]
            assert dollars == [101, 100]
            assert (repo / "digits_mlp" / "config.pbtxt").is_file()  # fetched from S3 into the repository

            # The CLI's `invoke --sagemaker`: the command line that also works against AWS (no --endpoint-url there).
            np.save(tmp_path / "x.npy", x[:2])
            args = ["invoke", "digits_mlp", "--sagemaker", "mme", "--target", "model", "--json"]
            args += ["--endpoint-url", serving.url, "--region", "us-east-1", "-i", f"X=@{tmp_path / 'x.npy'}"]
            result = CliRunner().invoke(app, args)
            assert result.exit_code == 0, result.output
            assert json.loads(result.output)["label"] == want["label"][:2, None].tolist()  # [N, 1]: the config dims
            result = CliRunner().invoke(app, [*args[:4], "--endpoint-url", serving.url, "-i", "X=[1]"])
            assert result.exit_code == 1 and "TargetModel is required" in result.output
    finally:
        api.delete("mme", lambda _: None, manifest=manifest, endpoint_url=s3_endpoint, purge_s3=True)
