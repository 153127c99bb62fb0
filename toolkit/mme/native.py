"""Artifacts built for the NGC / SageMaker Triton container, served by the embedded Triton, which has the python
backend only.

A user's SageMaker MME prefix (and what ``tritonctl deploy`` uploads) holds native models: ``platform:
"onnxruntime_onnx"`` with ``1/model.onnx``, sometimes ``pytorch_libtorch`` with ``1/model.pt``. The embedded Triton
would refuse them ("unable to find backend library for backend 'onnxruntime'"), so the *fetched copy* (an extraction,
a download, a copy of a store folder; never the artifact in the store) is rewritten to run on the project's own
python adapter (``toolkit/repository/templates/adapter_model.py``, the file ``generate`` uses for ONNX and
TorchScript models): the config keeps its inputs, outputs, data types, dims, reshapes, ``max_batch_size``, batching,
warm-up and version policy, and gains ``backend: "python"`` with the adapter's two parameters; the adapter is copied
into each version folder next to the model file, which stays where it was. So what a native artifact computes is
exactly what onnxruntime (or torch) computes on its file.

A backend that cannot run here (TensorRT plans, TensorFlow, OpenVINO, DALI, FIL, ...) is refused in one line naming
the artifact, the backend and what to change, before Triton sees it. Pure functions over a model directory, tested
without a Triton (tests/unit/test_mme_native.py).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from google.protobuf import text_format

from toolkit.mme._preflight import _versions_loaded
from toolkit.mme.layout import CONFIG, LayoutError
from toolkit.repository.config import render_config
from toolkit.repository.generate import ADAPTER_TEMPLATE
from toolkit.repository.protos import model_config_pb2 as mc

ADAPTER_FILE = "model.py"
# Native backends the python adapter can stand in for: backend -> (adapter framework, Triton's default model file).
ADAPTABLE = {"onnxruntime": ("onnx", "model.onnx"), "pytorch": ("torchscript", "model.pt")}
PLATFORM_BACKEND = {
    "onnxruntime_onnx": "onnxruntime",
    "pytorch_libtorch": "pytorch",
    "tensorrt_plan": "tensorrt",
    "tensorflow_savedmodel": "tensorflow",
    "tensorflow_graphdef": "tensorflow",
    "ensemble": "ensemble",
}
# What Triton's auto-complete infers from the model file when a config names neither platform nor backend.
FILE_BACKEND = {
    "model.onnx": "onnxruntime",
    "model.pt": "pytorch",
    "model.plan": "tensorrt",
    "model.savedmodel": "tensorflow",
    "model.graphdef": "tensorflow",
}
AS_IS = frozenset({"python", "ensemble"})
# onnxruntime's type strings -> Triton's data types (what Triton's onnxruntime auto-complete writes).
ORT_TYPES = {
    "tensor(float)": mc.TYPE_FP32,
    "tensor(double)": mc.TYPE_FP64,
    "tensor(float16)": mc.TYPE_FP16,
    "tensor(int8)": mc.TYPE_INT8,
    "tensor(int16)": mc.TYPE_INT16,
    "tensor(int32)": mc.TYPE_INT32,
    "tensor(int64)": mc.TYPE_INT64,
    "tensor(uint8)": mc.TYPE_UINT8,
    "tensor(uint16)": mc.TYPE_UINT16,
    "tensor(uint32)": mc.TYPE_UINT32,
    "tensor(uint64)": mc.TYPE_UINT64,
    "tensor(bool)": mc.TYPE_BOOL,
    "tensor(string)": mc.TYPE_STRING,
}
DEFAULT_MAX_BATCH_SIZE = 4  # Triton's --backend-config default-max-batch-size, used by its auto-complete


def _versions(model_dir: Path) -> dict[int, Path]:
    return {int(p.name): p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()}


def backend_of(cfg: mc.ModelConfig, model_dir: Path) -> str:
    """The backend Triton would run ``cfg`` on: ``backend``, else the one ``platform`` implies, else the one the
    model file implies (Triton's auto-complete), else ``""``."""
    if cfg.backend:
        return cfg.backend
    if cfg.platform:
        return PLATFORM_BACKEND.get(cfg.platform, cfg.platform)
    for version in _versions(model_dir).values():
        for name, backend in FILE_BACKEND.items():
            if (version / name).exists():
                return backend
    return ""


def _shown(cfg: mc.ModelConfig, backend: str) -> str:
    return f"backend {backend}" + (f" (platform {cfg.platform})" if cfg.platform else "")


def _refuse_unless_runnable(cfg: mc.ModelConfig, backend: str, label: str) -> None:
    """One line for a backend the embedded Triton cannot run, nor the adapter stand in for."""
    if backend not in ADAPTABLE:
        what = _shown(cfg, backend) if backend else "no backend, platform or known model file"
        raise LayoutError(  # short: the gateway shows a failed load's first 300 characters
            f"{label}: {what} cannot run on this python-only Triton; export the model to ONNX (platform: "
            '"onnxruntime_onnx", 1/model.onnx) or serve it on the NGC/SageMaker Triton container'
        )
    if backend == "pytorch" and importlib.util.find_spec("torch") is None:
        raise LayoutError(
            f"{label}: {_shown(cfg, backend)} runs here through the python adapter, which needs torch, and torch is "
            "not installed: pip install torch, or export the model to ONNX"
        )


def _model_file(cfg: mc.ModelConfig, model_dir: Path, default: str, label: str) -> str:
    """The model file of every version Triton would load, relative to the version folder (one name for all, as the
    adapter reads one ``tritonctl.artifact``); an ONNX model with external data is a folder holding model.onnx."""
    versions = _versions(model_dir)
    if not versions:
        raise LayoutError(f"{label}: no version folder (1/, 2/ ...) next to {CONFIG}; put the model file in 1/")
    name = cfg.default_model_filename or default
    found: set[str] = set()
    for v in _versions_loaded(cfg, sorted(versions)):
        path = versions[v] / name
        if path.is_file():
            found.add(name)
        elif path.is_dir() and (path / default).is_file():
            found.add(f"{name}/{default}")
        else:
            raise LayoutError(f"{label}: version {v} has no {name}; put the model file at {v}/{name}")
    if len(found) > 1:
        raise LayoutError(f"{label}: versions hold {name} both as a file and as a folder; use one layout")
    return found.pop() if found else name


def _dims(shape: list[object], batched: bool) -> list[int]:
    dims = [d if isinstance(d, int) and d > 0 else -1 for d in shape]
    return dims[1:] if batched else dims


def complete_from_onnx(cfg: mc.ModelConfig, onnx_path: Path, has_max_batch_size: bool) -> None:
    """Fill missing inputs/outputs from the ONNX graph, as Triton's onnxruntime auto-complete does: data types and
    shapes from the graph (symbolic dims -> -1), and, when the config leaves ``max_batch_size`` out and every tensor's
    first dim is symbolic, ``max_batch_size: 4`` with dynamic batching (the first dim is then the batch)."""
    import onnxruntime as ort  # only for a config that declares no tensors: ~0.2 s of import, off every other path

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    tensors = [*sess.get_inputs(), *sess.get_outputs()]
    if not has_max_batch_size and tensors and all(t.shape and not isinstance(t.shape[0], int) for t in tensors):
        cfg.max_batch_size = DEFAULT_MAX_BATCH_SIZE
        if not cfg.HasField("dynamic_batching") and not cfg.HasField("sequence_batching"):
            cfg.dynamic_batching.SetInParent()
    batched = cfg.max_batch_size > 0
    for field, found in ((cfg.input, sess.get_inputs()), (cfg.output, sess.get_outputs())):
        if len(field):
            continue
        for t in found:
            dims = _dims(t.shape, batched)
            added = field.add(name=t.name, data_type=ORT_TYPES.get(t.type, mc.TYPE_FP32), dims=dims or [1])
            if not dims:  # a [batch] tensor: Triton shows it as [batch, 1] and reshapes, as its auto-complete does
                added.reshape.SetInParent()


def _index(name: str) -> int:
    """Triton's libtorch naming convention ``INPUT__0``: the position of the tensor; others keep their order."""
    head, sep, tail = name.rpartition("__")
    return int(tail) if sep and head and tail.isdigit() else -1


def to_python(cfg: mc.ModelConfig, framework: str, artifact: str) -> None:
    """Turn a native config into the adapter's: backend python, the adapter's parameters, CPU instances (the
    adapter runs onnxruntime/torch on the CPU), no native execution accelerators; tensors, batching and the rest
    stay as they are."""
    params = cfg.parameters
    threads = params["intra_op_thread_count"].string_value if "intra_op_thread_count" in params else ""
    cfg.backend, cfg.platform, cfg.default_model_filename = "python", "", ""
    for group in cfg.instance_group:
        if group.kind in (mc.ModelInstanceGroup.KIND_GPU, mc.ModelInstanceGroup.KIND_AUTO):
            group.kind = mc.ModelInstanceGroup.KIND_CPU
            del group.gpus[:]
    cfg.optimization.ClearField("execution_accelerators")
    if not cfg.optimization.ListFields():
        cfg.ClearField("optimization")
    if framework == "torchscript":  # libtorch passes tensors by their __N index, the adapter by config order
        for field in (cfg.input, cfg.output):
            if all(_index(t.name) >= 0 for t in field):
                ordered = sorted(field, key=lambda t: _index(t.name))
                copies = [type(t)() for t in ordered]
                for copy, t in zip(copies, ordered, strict=True):
                    copy.CopyFrom(t)
                del field[:]
                field.extend(copies)
    params["tritonctl.framework"].string_value = framework
    params["tritonctl.artifact"].string_value = artifact
    if threads.isdigit() and int(threads) > 0:
        params["tritonctl.threads"].string_value = threads


def _parse(text: str, label: str) -> tuple[mc.ModelConfig | None, mc.ModelConfig]:
    """The config's strict parse (None when this protobuf does not read all of it) and a parse to decide with (the
    strict one when there is one: a single parse on the common path, since text_format costs ~5 ms a config)."""
    strict = mc.ModelConfig()
    try:
        text_format.Parse(text, strict)
        return strict, strict
    except text_format.ParseError:
        lenient = mc.ModelConfig()
        try:
            text_format.Parse(text, lenient, allow_unknown_field=True)
        except text_format.ParseError as exc:
            raise LayoutError(f"{label}: {CONFIG} is not a Triton model configuration ({exc}); fix it") from None
        return None, lenient


def adapt_native(model_dir: Path, label: str, name: str | None = None) -> str | None:
    """Make the fresh local copy ``model_dir`` run on the embedded Triton: a native ONNX/TorchScript model is
    rewritten to the python adapter, named ``name`` when given (returns the backend it had); python models and
    ensembles are left alone (None: ``layout.adopt_name`` renames them); any other backend is refused
    (``LayoutError``, one line naming ``label`` and the backend)."""
    try:
        text = (model_dir / CONFIG).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LayoutError(f"{label}: cannot read {CONFIG} ({exc}); it must be UTF-8 text") from None
    if 'backend: "python"' in text or 'platform: "ensemble"' in text:  # the common case, without a parse
        return None
    cfg, seen = _parse(text, label)
    backend = backend_of(seen, model_dir)
    if backend in AS_IS:
        return None
    _refuse_unless_runnable(seen, backend, label)
    if cfg is None:
        raise LayoutError(
            f"{label}: {CONFIG} cannot be adapted to the python backend, because this Triton's protobuf does not read "
            "all of it; remove what it does not know"
        )
    framework, default = ADAPTABLE[backend]
    artifact = _model_file(cfg, model_dir, default, label)
    if not cfg.input or not cfg.output:
        if framework != "onnx":
            raise LayoutError(f"{label}: {CONFIG} declares no inputs or outputs; declare them (name, data_type, dims)")
        complete_from_onnx(cfg, _first_model(model_dir, cfg, artifact), "max_batch_size" in text)
    to_python(cfg, framework, artifact)
    if name is not None and cfg.name:  # a config that names nothing takes the folder's name in Triton
        cfg.name = name
    for version in _versions(model_dir).values():
        if (version / ADAPTER_FILE).exists():
            raise LayoutError(f"{label}: {version.name}/{ADAPTER_FILE} exists beside a native model; remove it")
        shutil.copyfile(ADAPTER_TEMPLATE, version / ADAPTER_FILE)
    _write(model_dir, render_config(cfg))
    return backend


def _first_model(model_dir: Path, cfg: mc.ModelConfig, artifact: str) -> Path:
    versions = _versions(model_dir)
    return versions[_versions_loaded(cfg, sorted(versions))[-1]] / artifact


def _write(model_dir: Path, text: str) -> None:
    """A new file renamed over the old one: a hard link elsewhere (the disk cache's) never sees the change."""
    fd, tmp = tempfile.mkstemp(dir=model_dir, prefix=f".{CONFIG}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, model_dir / CONFIG)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
