"""sklearn -> ONNX for deployment, accepted only when onnxruntime reproduces sklearn on sample inputs.

Why: SageMaker's Triton image has no scikit-learn, so a sklearn model on the python backend needs a packed
environment shipped with it; compiled to ONNX it runs on Triton's native onnxruntime backend (C++ kernels, no Python
stub). A converter can silently change results (unsupported options, float64 -> float32), so the compiled graph is run
on sample inputs and compared with the estimator itself before anything is uploaded: ints must be equal, floats
within rtol 1e-4 / atol 1e-5. Anything else is a ``CompileRefused`` with the reason, and the model stays on the python
backend (where it needs scikit-learn in ``deploy.python_env``).

Output names follow the manifest: each output's ``method`` picks the graph output (``predict`` -> ``label`` for
classifiers, ``predict_proba`` -> ``probabilities``, a single-output graph -> the single output), which is renamed,
reshaped to ``[batch, *dims]`` and cast to the declared dtype inside the graph, so config.pbtxt equals the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.extras import hint
from toolkit.spec.models import ModelSpec

TARGET_OPSET = 17  # what onnxruntime >= 1.16 (and Triton 24.x's onnxruntime backend) runs
RTOL, ATOL = 1e-4, 1e-5
N_SAMPLES = 64
_NP = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32, "FP16": np.float16}


class CompileRefused(Exception):
    """The model cannot be compiled, or the compiled graph does not reproduce sklearn: the reason, one line."""


@dataclass(frozen=True)
class Compiled:
    onnx: bytes
    samples: int  # rows the equality check ran on


def sample_inputs(spec: ModelSpec, given: Path | None, seed: int = 0) -> np.ndarray:
    """The check's inputs: a user's .npy, else integer-valued rows (rounded noise, then 0/1): skl2onnx casts
    categories to integers, so fractional values in a categorical column would differ for a reason real data never
    has. Models needing other inputs take deploy.samples.<model>."""
    if len(spec.inputs) != 1:
        raise CompileRefused("only single-input sklearn models are compiled (the adapter passes one matrix)")
    t = spec.inputs[0]
    if t.dtype not in ("FP32", "FP64") or any(d < 1 for d in t.dims):
        raise CompileRefused(f"input {t.name} must be FP32/FP64 with fixed dims to compile (is {t.dtype} {t.dims})")
    if given is not None:
        x = np.load(given, allow_pickle=False).astype(_NP[t.dtype])
        return x if x.ndim == len(t.dims) + 1 else x[None, ...]
    rng = np.random.default_rng(seed)
    shape = (N_SAMPLES // 2, *t.dims)
    return np.concatenate([np.rint(rng.normal(size=shape) * 4), rng.integers(0, 2, size=shape)]).astype(_NP[t.dtype])


def _estimator_outputs(est: Any, spec: ModelSpec, x: np.ndarray) -> dict[str, np.ndarray]:
    out = {}
    for t in spec.outputs:
        method = t.method or "predict"
        if not hasattr(est, method):
            raise CompileRefused(f"output {t.name}: the estimator has no {method}()")
        y = np.asarray(getattr(est, method)(x))
        out[t.name] = y.reshape(len(x), *t.dims).astype(_NP.get(t.dtype, y.dtype))
    return out


def _graph_output(graph_outputs: list[str], method: str, n_outputs: int) -> str:
    if len(graph_outputs) == 1 and n_outputs == 1:
        return graph_outputs[0]
    wanted = {"predict": "label", "predict_proba": "probabilities"}.get(method)
    if wanted in graph_outputs:
        return wanted
    raise CompileRefused(f"cannot tell which ONNX output ({', '.join(graph_outputs)}) is {method}()")


def _rewire(onx: Any, spec: ModelSpec) -> Any:
    """Rename, reshape and cast the graph's outputs to the manifest's tensors (inside the graph)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = onx.graph
    names = [o.name for o in graph.output]
    picked = {t.name: _graph_output(names, t.method or "predict", len(spec.outputs)) for t in spec.outputs}
    if len(set(picked.values())) != len(picked):
        raise CompileRefused("two manifest outputs map to the same ONNX output")
    renamed = {n: f"tritonctl_graph_{n}" for n in names}  # free the names: a manifest output may reuse one
    for node in graph.node:
        node.input[:] = [renamed.get(i, i) for i in node.input]
        node.output[:] = [renamed.get(o, o) for o in node.output]
    picked = {k: renamed[v] for k, v in picked.items()}
    del graph.output[:]
    for t in spec.outputs:
        src = picked[t.name]
        shape_name = f"tritonctl_shape_{t.name}"
        graph.initializer.append(numpy_helper.from_array(np.array([-1, *t.dims], dtype=np.int64), shape_name))
        reshaped = f"tritonctl_reshaped_{t.name}"
        graph.node.append(helper.make_node("Reshape", [src, shape_name], [reshaped]))
        elem = getattr(TensorProto, {"FP32": "FLOAT", "FP64": "DOUBLE", "FP16": "FLOAT16"}.get(t.dtype, t.dtype))
        graph.node.append(helper.make_node("Cast", [reshaped], [t.name], to=elem))
        graph.output.append(helper.make_tensor_value_info(t.name, elem, [None, *t.dims]))
    opsets = sorted((o.domain, o.version) for o in onx.opset_import)  # set order would vary with PYTHONHASHSEED
    del onx.opset_import[:]
    for domain, version in opsets:
        onx.opset_import.append(helper.make_opsetid(domain, version))
    return onx


def compile_sklearn(spec: ModelSpec, artifact: Path, samples: Path | None = None) -> Compiled:
    """Compile one sklearn model (joblib) to ONNX and check it; ``CompileRefused`` says why not."""
    if spec.max_batch_size == 0:
        raise CompileRefused("max_batch_size 0: the sklearn adapter's batch-of-rows contract needs batching")
    try:
        import joblib
        import onnxruntime as ort
        from skl2onnx import to_onnx
        from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType
    except ImportError as exc:
        raise CompileRefused(f"{exc.name} is not installed: {hint('deploy')}") from None
    est = joblib.load(artifact)
    x = sample_inputs(spec, samples)
    t = spec.inputs[0]
    kind = FloatTensorType if t.dtype == "FP32" else DoubleTensorType
    options = {id(est): {"zipmap": False}} if hasattr(est, "predict_proba") else None
    try:
        onx = to_onnx(est, initial_types=[(t.name, kind([None, *t.dims]))], options=options, target_opset=TARGET_OPSET)
    except Exception as exc:  # skl2onnx raises many types (RuntimeError, NotImplementedError, MissingShapeCalculator)
        raise CompileRefused(f"skl2onnx: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from None
    onx = _rewire(onx, spec)
    data = onx.SerializeToString()
    try:
        expected = _estimator_outputs(est, spec, x)
    except CompileRefused:
        raise
    except Exception as exc:
        raise CompileRefused(
            f"sklearn itself fails on the sample inputs ({type(exc).__name__}); give deploy.samples.{spec.name}"
        ) from None
    try:
        sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {t.name: x}), strict=True))
    except Exception as exc:
        raise CompileRefused(f"onnxruntime cannot run the compiled graph: {' '.join(str(exc).split())[:200]}") from None
    for name, want in expected.items():
        have = got[name]
        if have.shape != want.shape:
            raise CompileRefused(f"output {name}: ONNX shape {have.shape} != sklearn {want.shape}")
        if np.issubdtype(want.dtype, np.floating):
            ok = np.allclose(have, want, rtol=RTOL, atol=ATOL)
        else:
            ok = bool(np.array_equal(have, want))
        if not ok:
            worst = float(np.max(np.abs(have.astype(np.float64) - want.astype(np.float64))))
            raise CompileRefused(f"output {name}: ONNX differs from sklearn (max |diff| {worst:.3g})")
    return Compiled(data, len(x))
