"""``tritonctl invoke``: one inference over HTTP or gRPC, with inputs shaped and typed from the model's metadata.

Users pass plain JSON or .npy; the model's metadata says the dtype and rank, so a sample without the batch dimension
is wrapped into a batch of one instead of failing on shape.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from toolkit.errors import InferenceError, TritonctlError
from toolkit.server import TritonEndpoint, triton_errors


def _as_array(name: str, value: Any, datatype: str, shape: list[int], batching: bool) -> np.ndarray:
    dtype = triton_to_np_dtype(datatype)
    if dtype is None:
        raise TritonctlError(f"input {name}: unsupported datatype {datatype}")
    try:
        arr = np.asarray(value, dtype=object if datatype == "BYTES" else dtype)
    except (ValueError, TypeError) as exc:
        raise TritonctlError(f"input {name}: cannot convert to {datatype}: {exc}") from None
    if datatype == "BYTES":
        arr = np.vectorize(lambda v: v if isinstance(v, bytes) else str(v).encode(), otypes=[object])(arr)
    if batching and arr.ndim == len(shape) - 1:
        arr = arr[None, ...]
    return arr


def invoke(
    endpoint: TritonEndpoint,
    model: str,
    inputs: dict[str, Any],
    protocol: str = "http",
    version: str = "",
    headers: dict[str, str] | None = None,
) -> dict[str, np.ndarray]:
    """Run one inference; returns output name -> array. Raises InferenceError with Triton's message. ``headers`` go
    with every call (gRPC: as metadata): a gateway's credentials."""
    if protocol not in ("http", "grpc"):
        raise TritonctlError(f"unknown protocol {protocol!r}: use http or grpc")
    mod: Any = httpclient if protocol == "http" else grpcclient
    if headers and protocol == "grpc":  # gRPC metadata keys must be lowercase
        headers = {k.lower(): v for k, v in headers.items()}
    url = endpoint.http if protocol == "http" else endpoint.grpc
    client = mod.InferenceServerClient(url)
    try:
        with triton_errors(endpoint):
            meta = client.get_model_metadata(model, version, headers=headers)
            cfg = client.get_model_config(model, version, headers=headers)
        if protocol == "grpc":
            meta = {
                "inputs": [{"name": i.name, "datatype": i.datatype, "shape": list(i.shape)} for i in meta.inputs],
                "outputs": [{"name": o.name} for o in meta.outputs],
            }
            batching = cfg.config.max_batch_size > 0
        else:
            batching = int(cfg.get("max_batch_size", 0)) > 0
        declared = {i["name"]: i for i in meta["inputs"]}
        unknown = sorted(set(inputs) - set(declared))
        if unknown:
            raise InferenceError(f"model {model!r} has no input {unknown[0]!r} (inputs: {', '.join(sorted(declared))})")
        missing = sorted(set(declared) - set(inputs))
        if missing:
            raise InferenceError(f"model {model!r}: input {missing[0]!r} not given")
        infer_inputs = []
        for name, value in inputs.items():
            d = declared[name]
            arr = _as_array(name, value, d["datatype"], list(d["shape"]), batching)
            inp = mod.InferInput(name, list(arr.shape), d["datatype"])
            inp.set_data_from_numpy(arr)
            infer_inputs.append(inp)
        outputs = [mod.InferRequestedOutput(o["name"]) for o in meta["outputs"]]
        try:
            result = client.infer(model, infer_inputs, model_version=version, outputs=outputs, headers=headers)
        except InferenceServerException as exc:
            raise InferenceError(exc.message() or str(exc)) from None
        return {o["name"]: result.as_numpy(o["name"]) for o in meta["outputs"]}
    finally:
        client.close()


def to_jsonable(outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in outputs.items():
        if v.dtype == object:
            out[k] = [x.decode() if isinstance(x, bytes) else x for x in v.ravel().tolist()]
        else:
            out[k] = v.tolist()
    return out


def format_outputs(outputs: dict[str, np.ndarray], as_json: bool) -> str:
    if as_json:
        return json.dumps(to_jsonable(outputs))
    lines = []
    for name, arr in outputs.items():
        body = np.array2string(arr, precision=4, threshold=40, max_line_width=110)
        lines.append(f"{name} {arr.dtype} {list(arr.shape)}:\n{body}")
    return "\n".join(lines)
