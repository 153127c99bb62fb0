"""The round trip: what ``deploy`` uploaded for a multi-model endpoint is served, from moto's S3, by
``tritonctl serve --store s3://...`` (the library's ``start``), and boto3's ``invoke_endpoint`` through our gateway
answers with the predictions of the manifest's own models.

moto answers ``invoke_endpoint`` with canned data, so the invocation goes through our gateway; what is real here is
the uploaded bytes: the tarballs deploy made are fetched from S3, extracted and loaded by a real Triton. The first test
deploys python-backend models (numpy, python); the second deploys native onnxruntime tarballs, which the embedded
(python-only) Triton serves through the python adapter the fetched copy is rewritten to (``toolkit.mme.native``),
from a directory (``deploy build``) and from S3, with the predictions the manifest gives when served locally.
"""

from __future__ import annotations

import importlib.util
import json
import tarfile
import uuid
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml
from typer.testing import CliRunner

from examples.deploy_demo import ROOT, manifest_dict, write_manifest
from toolkit import ServeConfig, start
from toolkit.cli.main import app
from toolkit.deploy import api
from toolkit.repository.config import parse_config
from toolkit.spec import load_manifest

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


# --- the native prefix: what deploy uploads for ONNX models, served unchanged by `serve --store` --------------------


PIPELINE = "housing_pipeline_onnx_Chicago_IL"


def _predict(serving: Any, endpoint: str, x: np.ndarray, rows: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """Both models through boto3's ``invoke_endpoint`` (by TargetModel) and the digits model through tritonclient's
    KServe HTTP and gRPC (by Triton name): what a client of the endpoint sees."""
    sm = boto3.client(
        "sagemaker-runtime", endpoint_url=serving.url, region_name="us-east-1", aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="x",
    )  # fmt: skip
    out: dict[str, dict[str, np.ndarray]] = {}
    raw = np.array([[3, 2, 1500, 1, 0, 12, 4, 1], [4, 3, 2400, 0, 1, 3, 9, 2]], dtype=np.float32)
    for model, name, arr in (
        ("digits_logreg", "X", x),
        ("housing_Chicago_IL", "features", rows),
        (PIPELINE, "raw", raw),
    ):
        body = {"inputs": [{"name": name, "shape": list(arr.shape), "datatype": "FP32", "data": arr.ravel().tolist()}]}
        r = sm.invoke_endpoint(EndpointName=endpoint, TargetModel=f"{model}.tar.gz", Body=json.dumps(body),
                               ContentType="application/json")  # fmt: skip
        out[model] = {
            o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in json.loads(r["Body"].read())["outputs"]
        }
    for proto, module in (("http", httpclient), ("grpc", grpcclient)):
        client = module.InferenceServerClient(serving.http if proto == "http" else serving.grpc)
        try:
            inp = module.InferInput("X", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            res = client.infer("digits_logreg", [inp])
            out[f"digits_logreg/{proto}"] = {k: res.as_numpy(k) for k in ("label", "probabilities")}
        finally:
            client.close()
    return out


def test_the_deployed_native_onnx_prefix_serves_unchanged_as_the_manifest_does(
    tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``deploy`` builds native onnxruntime tarballs (digits_logreg as given, housing_Chicago_IL compiled from sklearn,
    and an ensemble's tarball carrying its ONNX and python steps); ``tritonctl serve --store DIR|s3://... --endpoint
    NAME`` serves them unchanged (no manifest), and boto3 and tritonclient get the predictions the manifest itself
    gives when served locally."""
    bucket = f"tt-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    raw = manifest_dict(bucket)
    for name in ("housing_preprocess_onnx", "housing_Chicago_IL_onnx"):  # an ensemble of ONNX steps (+ python)
        spec = next(m for m in load_manifest(ROOT / "tritonctl.yaml").models if m.name == name)
        raw["models"].append(spec.model_dump(mode="json", exclude_defaults=True))
    steps = ["housing_preprocess_onnx", "housing_Chicago_IL_onnx", "housing_postprocess"]
    raw["ensembles"] = [{"name": PIPELINE, "pattern": "pipeline", "models": steps}]
    models = ["digits_logreg", "housing_Chicago_IL", PIPELINE]  # the pipeline's tarball carries its steps
    raw["endpoints"].append({"name": "onnx", "mode": "multi-model", "models": models})
    manifest = tmp_path / "tritonctl.yaml"
    manifest.write_text(yaml.safe_dump(raw, sort_keys=False))
    built = CliRunner().invoke(
        app, ["deploy", "build", str(manifest), "--endpoint", "onnx", "-o", str(tmp_path / "dir")]
    )
    assert built.exit_code == 0, built.output
    native = [("digits_logreg", "digits_logreg"), ("housing_Chicago_IL", "housing_Chicago_IL")]
    native += [(PIPELINE, "housing_preprocess_onnx"), (PIPELINE, "housing_Chicago_IL_onnx")]  # steps in its tarball
    for tarball, folder in native:  # native onnxruntime: nothing here runs them but the adapter
        with tarfile.open(tmp_path / "dir" / f"{tarball}.tar.gz") as tf:
            member = tf.extractfile(f"{folder}/config.pbtxt")
            assert member is not None and parse_config(member.read().decode()).backend == "onnxruntime"
    api.deploy(manifest, "onnx", lambda _: None, endpoint_url=s3_endpoint, poll_s=0.01)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    x = np.load(ROOT / "examples/digits_samples.npy")[:6].astype(np.float32)
    rows = np.random.default_rng(3).integers(0, 5, (5, 10)).astype(np.float32)
    results = {}
    try:
        with start(ServeConfig(manifest=manifest, **FREE), echo=lambda _: None) as serving:  # the manifest, locally
            results["manifest"] = _predict(serving, "onnx", x, rows)
        for store in (str(tmp_path / "dir"), f"s3://{bucket}/tt/onnx"):
            repo = tmp_path / f"repo-{len(results)}"
            repo.mkdir()
            config = ServeConfig(repository=repo, store=store, endpoint="onnx", **FREE)
            with start(config, echo=lambda _: None) as serving:
                results[store] = _predict(serving, "onnx", x, rows)
                assert 'backend: "python"' in (repo / "digits_logreg" / "config.pbtxt").read_text()  # adapted copy
    finally:
        api.delete("onnx", lambda _: None, manifest=manifest, endpoint_url=s3_endpoint, purge_s3=True)
    want = results.pop("manifest")
    for store, got in results.items():
        for key in ("digits_logreg", "digits_logreg/http", "digits_logreg/grpc"):
            assert got[key]["label"].tolist() == want[key]["label"].tolist(), (store, key)
            np.testing.assert_array_equal(got[key]["probabilities"], want[key]["probabilities"], err_msg=store)
        assert got[PIPELINE]["price_dollars"].tolist() == want[PIPELINE]["price_dollars"].tolist(), store
        # sklearn locally, its checked ONNX twin deployed: deploy's equality bound (rtol 1e-4)
        np.testing.assert_allclose(got["housing_Chicago_IL"]["price"], want["housing_Chicago_IL"]["price"], rtol=1e-4)
