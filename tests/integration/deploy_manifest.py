"""A deployable manifest for the deploy tests: example artifacts (absolute paths), one endpoint per SageMaker mode,
and a ``deploy:`` section pointing at a bucket of the test's own (moto's backends are shared by the session)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
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
