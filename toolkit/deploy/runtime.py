"""``invoke_endpoint`` with KServe v2 JSON: one request shape for the local gateway and a SageMaker endpoint.

SageMaker's Triton container and tritonctl's gateway both take a KServe v2 inference request as
``application/json`` on ``invoke_endpoint``, so the same call works against both; only ``endpoint_url`` differs
(the gateway's URL, or none for AWS with the usual credential chain). moto answers ``invoke_endpoint`` with canned
data, so with moto this goes through the gateway.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from toolkit.deploy.errors import DeployError, aws_errors

_DTYPES = {"float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32", "uint8": "UINT8", "bool": "BOOL"}
_NUMPY = {v: k for k, v in _DTYPES.items()} | {"BYTES": "object"}


def kserve_body(inputs: dict[str, Any]) -> dict[str, Any]:
    tensors = []
    for name, value in inputs.items():
        arr = np.asarray(value)
        datatype: str | None
        if arr.dtype.kind in "USO":
            datatype, data = "BYTES", [str(v) for v in arr.ravel().tolist()]
        else:
            if arr.dtype == np.float64 and not isinstance(value, np.ndarray):
                arr = arr.astype(np.float32)  # JSON numbers: FP32, as the models in this project take
            datatype = _DTYPES.get(str(arr.dtype))
            if datatype is None:
                raise DeployError(f"input {name}: unsupported dtype {arr.dtype}")
            data = arr.ravel().tolist()
        tensors.append({"name": name, "shape": list(arr.shape), "datatype": datatype, "data": data})
    return {"inputs": tensors}


def invoke_endpoint(
    endpoint: str,
    inputs: dict[str, Any],
    *,
    target_model: str | None = None,
    target_container: str | None = None,
    target_variant: str | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
    client: Any | None = None,
) -> dict[str, np.ndarray]:
    """One ``invoke_endpoint`` call; returns output name -> array (shaped as the answer says)."""
    if client is None:
        import boto3

        from toolkit.deploy.aws import resolve_region

        session = boto3.session.Session(region_name=resolve_region(region))
        client = session.client("sagemaker-runtime", endpoint_url=endpoint_url)
    kw: dict[str, str] = {}
    if target_model:
        kw["TargetModel"] = target_model if target_model.endswith(".tar.gz") else f"{target_model}.tar.gz"
    if target_container:
        kw["TargetContainerHostname"] = target_container
    if target_variant:
        kw["TargetVariant"] = target_variant
    with aws_errors(f"sagemaker-runtime InvokeEndpoint {endpoint}"):
        r = client.invoke_endpoint(
            EndpointName=endpoint, Body=json.dumps(kserve_body(inputs)), ContentType="application/json", **kw
        )
        raw = r["Body"].read()
    try:
        outputs = json.loads(raw)["outputs"]
    except (ValueError, KeyError, TypeError):
        raise DeployError(f"endpoint {endpoint}: the answer is not a KServe v2 response: {raw[:120]!r}") from None
    return {
        o["name"]: np.asarray(o["data"], dtype=_NUMPY.get(o.get("datatype", ""), None)).reshape(o["shape"])
        for o in outputs
    }
