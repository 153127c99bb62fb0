"""Request payloads: KServe v2 JSON and binary-tensor bodies, SageMaker invocation bodies, gRPC inputs.

Bodies are built once per user with tritonclient's own encoder (``generate_request_body``), so what we send is
byte-for-byte what a real Triton client sends; the hot loop only replays them.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import triton_to_np_dtype

from toolkit.loadtest.scenario import LoadTestError, Target, TensorSpec

SAGEMAKER_BINARY = "application/vnd.sagemaker-triton.binary+json;json-header-size={n}"


def resolve_target(
    target: Target, metadata: dict[str, Any] | None, config: dict[str, Any] | None, source: str | None = None
) -> Target:
    """Fill inputs/batched from the model's metadata when the scenario leaves them out."""
    t = target.model_copy(deep=True)
    if t.batched is None:
        t.batched = True if config is None else int(config.get("max_batch_size", 0) or 0) > 0
    if t.inputs is None:
        if metadata is None:
            raise LoadTestError(
                f"target {t.label}: inputs are not given and the model's metadata cannot be read"
                + (f" from {source} (is Triton up there, and the model loaded?)" if source else " (no --triton-url)")
                + "; "
                "list them in the scenario (inputs: {NAME: {dtype: FP32, shape: [..]}})"
            )
        t.inputs = {}
        for inp in metadata.get("inputs", []):
            dims = [int(d) for d in inp["shape"]]
            if t.batched and dims and dims[0] == -1:
                dims = dims[1:]
            if any(d < 0 for d in dims):
                raise LoadTestError(f"target {t.label}: input {inp['name']} has a variable dim {dims}; give a shape")
            t.inputs[inp["name"]] = TensorSpec(dtype=inp["datatype"], shape=dims)
    return t


def make_array(spec: TensorSpec, batch: int | None, rng: np.random.Generator) -> np.ndarray:
    shape = ([batch] if batch is not None else []) + list(spec.shape)
    n = int(np.prod(shape))
    if spec.dtype == "BYTES":
        words = [c.encode() for c in (spec.choices or ["x"])]
        return np.array([words[int(i)] for i in rng.integers(0, len(words), n)], dtype=np.object_).reshape(shape)
    np_dtype = triton_to_np_dtype(spec.dtype)
    if spec.data is not None:
        row = np.asarray(spec.data, dtype=np_dtype)
        if row.size != int(np.prod(spec.shape)):
            raise LoadTestError(f"data for a {spec.shape} tensor has {row.size} values")
        return np.resize(row, n).reshape(shape)
    if spec.value is not None:
        return np.full(shape, spec.value, dtype=np_dtype)
    if spec.dtype == "BOOL":
        return rng.random(shape) < 0.5
    if np.issubdtype(np_dtype, np.integer):
        return rng.integers(int(spec.low), max(int(spec.high), int(spec.low) + 1), size=shape).astype(np_dtype)
    return rng.uniform(spec.low, spec.high, size=shape).astype(np_dtype)


def make_arrays(target: Target, rng: np.random.Generator) -> dict[str, np.ndarray]:
    assert target.inputs is not None, "resolve_target first"
    batch = target.batch if target.batched else None
    return {name: make_array(spec, batch, rng) for name, spec in target.inputs.items()}


def kserve_body(target: Target, arrays: dict[str, np.ndarray], binary: bool) -> tuple[bytes, int | None]:
    """(body, json_header_size): the header size is None for a pure-JSON body (JSON in, JSON out)."""
    specs = target.inputs or {}
    if not binary:
        req: dict[str, Any] = {
            "inputs": [
                {
                    "name": name,
                    "shape": list(arr.shape),
                    "datatype": specs[name].dtype if name in specs else "FP32",
                    "data": [x.decode() if isinstance(x, bytes) else x for x in arr.flatten().tolist()],
                }
                for name, arr in arrays.items()
            ]
        }
        if target.outputs:
            req["outputs"] = [{"name": o} for o in target.outputs]
        if target.parameters:
            req["parameters"] = dict(target.parameters)
        return json.dumps(req, separators=(",", ":")).encode(), None
    inputs = []
    for name, arr in arrays.items():
        inp = httpclient.InferInput(name, list(arr.shape), specs[name].dtype if name in specs else "FP32")
        inp.set_data_from_numpy(arr, binary_data=True)
        inputs.append(inp)
    outputs = [httpclient.InferRequestedOutput(o, binary_data=True) for o in target.outputs or []] or None
    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        inputs, outputs=outputs, parameters=dict(target.parameters) if target.parameters else None
    )
    if isinstance(body, str):
        body = body.encode()
    return body, json_size


def http_request(target: Target, arrays: dict[str, np.ndarray], binary: bool) -> tuple[str, bytes, dict[str, str]]:
    """(path, body, headers) for Triton's KServe v2 HTTP endpoint."""
    body, json_size = kserve_body(target, arrays, binary)
    headers = {"Content-Type": "application/octet-stream" if json_size is not None else "application/json"}
    if json_size is not None:
        headers["Inference-Header-Content-Length"] = str(json_size)
    return f"/v2/models/{target.model}/infer", body, headers


def sagemaker_request(
    target: Target, arrays: dict[str, np.ndarray], binary: bool, default_endpoint: str
) -> tuple[str, bytes, dict[str, str]]:
    """(path, body, headers) for ``POST /endpoints/{name}/invocations`` (SageMaker Triton conventions)."""
    body, json_size = kserve_body(target, arrays, binary)
    headers = {
        "Content-Type": SAGEMAKER_BINARY.format(n=json_size) if json_size is not None else "application/json",
        "Accept": "application/json",
    }
    if target.target_model:
        headers["X-Amzn-SageMaker-Target-Model"] = target.target_model
    endpoint = target.endpoint or default_endpoint or target.model
    return f"/endpoints/{endpoint}/invocations", body, headers


def grpc_request(target: Target, arrays: dict[str, np.ndarray]) -> Any:
    """A ``ModelInferRequest`` with ``raw_input_contents``, as tritonclient.grpc sends it; built once, replayed.

    Shared by the grpcio user and the raw HTTP/2 driver, so both send the same bytes.
    """
    from tritonclient.grpc import service_pb2
    from tritonclient.utils import serialize_byte_tensor

    req = service_pb2.ModelInferRequest(model_name=target.model)
    for name, arr in arrays.items():
        dtype = target.inputs[name].dtype if target.inputs else "FP32"
        inp = req.inputs.add()
        inp.name, inp.datatype = name, dtype
        inp.shape.extend(arr.shape)
        data = serialize_byte_tensor(arr) if dtype == "BYTES" else arr
        req.raw_input_contents.append(np.ascontiguousarray(data).tobytes())
    for o in target.outputs or []:
        req.outputs.add().name = o
    for k, v in (target.parameters or {}).items():
        if isinstance(v, bool):
            req.parameters[k].bool_param = v
        elif isinstance(v, int):
            req.parameters[k].int64_param = v
        else:
            req.parameters[k].string_param = str(v)
    return req
