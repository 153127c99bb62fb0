"""``make demo``'s deploy part, and the manifest the deploy tests use.

``manifest_dict``: example artifacts (absolute paths), one endpoint per SageMaker mode, and a ``deploy:`` section
with a bucket of the caller's own (moto's backends are shared by a test session). ``run_deploy_demo``: against a
moto server (S3, SageMaker, application-autoscaling on one loopback port), plan, deploy, plan again (nothing to do),
then the round trip: the uploaded multi-model prefix served by ``start(ServeConfig(store="s3://..."))`` and invoked
with boto3's ``invoke_endpoint`` through the gateway; then delete. No AWS account is touched.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
ART = ROOT / "examples" / "artifacts"
DIGITS_IO = {"max_batch_size": 64, "inputs": [{"name": "X", "dtype": "FP32", "dims": [64]}]}


def manifest_dict(bucket: str, **deploy: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "models": [
            {
                "name": "digits_logreg",
                "framework": "onnx",
                "artifact": str(ART / "digits_logreg.onnx"),
                **DIGITS_IO,
                "outputs": [
                    {"name": "probabilities", "dtype": "FP32", "dims": [10]},
                    {"name": "label", "dtype": "INT64", "dims": [1], "reshape": []},
                ],
            },
            {
                "name": "digits_mlp",
                "framework": "numpy",
                "artifact": str(ART / "digits_mlp.py"),
                **DIGITS_IO,
                "outputs": [
                    {"name": "probabilities", "dtype": "FP32", "dims": [10]},
                    {"name": "label", "dtype": "INT64", "dims": [1]},
                ],
            },
            {
                "name": "housing_Chicago_IL",
                "framework": "sklearn",
                "artifact": str(ART / "housing_Chicago_IL.joblib"),
                "max_batch_size": 32,
                "inputs": [{"name": "features", "dtype": "FP32", "dims": [10]}],
                "outputs": [{"name": "price", "dtype": "FP32", "dims": [1], "method": "predict"}],
            },
            {
                "name": "housing_postprocess",
                "framework": "python",
                "artifact": str(ROOT / "examples" / "python" / "housing_postprocess.py"),
                "max_batch_size": 32,
                "inputs": [{"name": "price", "dtype": "FP32", "dims": [1]}],
                "outputs": [{"name": "price_dollars", "dtype": "INT64", "dims": [1]}],
            },
        ],
        "endpoints": [
            {"name": "mme", "mode": "multi-model", "models": ["digits_mlp", "housing_postprocess"]},
            {
                "name": "ab",
                "mode": "single",
                "variants": [
                    {"name": "logreg", "model": "digits_logreg", "weight": 0.7},
                    {"name": "mlp", "model": "digits_mlp", "weight": 0.3},
                ],
            },
            {"name": "mce", "mode": "multi-container", "models": ["digits_logreg", "digits_mlp"]},
            {"name": "pipe", "mode": "serial", "models": ["housing_Chicago_IL", "housing_postprocess"]},
        ],
        "deploy": {
            "role": "arn:aws:iam::123456789012:role/tritonctl-test",
            "bucket": bucket,
            "prefix": "tt",
            "region": "us-east-1",
            "instance_type": "ml.m5.xlarge",
            "autoscaling": {"min_instances": 1, "max_instances": 3, "target_invocations_per_instance": 150},
            "tags": {"team": "ml"},
            **deploy,
        },
    }


def write_manifest(path: Path, bucket: str, **deploy: Any) -> Path:
    path.write_text(yaml.safe_dump(manifest_dict(bucket, **deploy), sort_keys=False))
    return path


def run_deploy_demo(say: Callable[[str], None] = print) -> None:
    import json
    import os
    import tempfile

    import boto3
    import numpy as np
    from moto.server import ThreadedMotoServer

    from toolkit import ServeConfig, start
    from toolkit.deploy import api
    from toolkit.server import free_port

    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    planned = api.plan(ROOT / "tritonctl.yaml", "housing", offline=True)
    say("tritonctl deploy plan tritonctl.yaml --endpoint housing --offline   (no AWS call at all)")
    for note in planned.prepared.desired.notes:
        say(f"  note {note}")
    for i, call in enumerate(planned.calls, 1):
        say(f"  {i}. {str(call)[:150]}")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    os.environ["AWS_ENDPOINT_URL_S3"] = url  # the S3 store of `serve --store` finds moto through the usual chain
    try:
        boto3.client("s3", endpoint_url=url).create_bucket(Bucket="tritonctl-demo")
        with tempfile.TemporaryDirectory(prefix="tritonctl-deploy-demo-") as tmp:
            manifest = write_manifest(Path(tmp) / "tritonctl.yaml", "tritonctl-demo")
            say(f"tritonctl deploy sagemaker --endpoint mme --endpoint-url {url}   (moto server)")
            api.deploy(manifest, "mme", lambda s: say("  " + s[:150]), endpoint_url=url, poll_s=0.05)
            again = api.plan(manifest, "mme", endpoint_url=url)
            say(f"plan again: {len(again.calls)} calls (unchanged tarballs are not uploaded again)")
            repo = Path(tmp) / "repository"
            repo.mkdir()
            config = ServeConfig(
                repository=repo,
                manifest=manifest,
                store="s3://tritonctl-demo/tt/mme",
                http_port=0,
                grpc_port=0,
                metrics_port=0,
                gateway_port=0,
                gateway_grpc_port=0,
            )
            with start(config, echo=lambda _: None) as serving:
                sm = boto3.client("sagemaker-runtime", endpoint_url=serving.url, region_name="us-east-1")
                x = np.load(ROOT / "examples" / "digits_samples.npy")[:4]
                body = {"inputs": [{"name": "X", "shape": [4, 64], "datatype": "FP32", "data": x.ravel().tolist()}]}
                r = sm.invoke_endpoint(
                    EndpointName="mme", TargetModel="digits_mlp.tar.gz", Body=json.dumps(body),
                    ContentType="application/json",
                )  # fmt: skip
                out = {o["name"]: o["data"] for o in json.loads(r["Body"].read())["outputs"]}
                say(f"round trip: s3://tritonctl-demo/tt/mme/digits_mlp.tar.gz -> gateway -> labels {out['label']}")
            calls = api.delete("mme", lambda _: None, manifest=manifest, endpoint_url=url, purge_s3=True)
            say(f"tritonctl deploy delete --endpoint mme --purge-s3: {len(calls)} calls, nothing left")
    finally:
        os.environ.pop("AWS_ENDPOINT_URL_S3", None)
        server.stop()


if __name__ == "__main__":
    run_deploy_demo()
