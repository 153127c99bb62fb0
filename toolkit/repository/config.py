"""Build Triton ``ModelConfig`` protobufs from manifest models and render them as config.pbtxt text.

Configs are built with Triton's own protobuf (``tritonclient.grpc.model_config_pb2``) and printed with
``google.protobuf.text_format``, never with string templates: the proto guarantees field names and enum values Triton
accepts, and parsing the text back (``parse_config``) is how ``validate`` reads a repository.
"""

from __future__ import annotations

from google.protobuf import text_format

from toolkit.repository.protos import model_config_pb2 as mc
from toolkit.spec.models import DynamicBatching, InstanceGroup, ModelSpec, TensorSpec, VersionPolicy, Warmup

# Which Triton backend serves a framework, per target. The embedded Triton has only the python backend, so every
# framework there runs through a generated adapter model.py; the NGC container has the native backends.
EMBEDDED_BACKEND = {
    "python": "python",
    "onnx": "python",
    "sklearn": "python",
    "torchscript": "python",
    "numpy": "python",
    "onnxruntime": "python",
    "pytorch_libtorch": "python",
}
TRITON_BACKEND = {
    "python": "python",
    "onnx": "onnxruntime",
    "sklearn": "python",
    "torchscript": "pytorch",
    "numpy": "python",
    "onnxruntime": "onnxruntime",
    "pytorch_libtorch": "pytorch",
    "tensorflow_savedmodel": "tensorflow",
    "tensorrt_plan": "tensorrt",
    "fil": "fil",
}
# Native backends whose model file name Triton expects in the version directory.
DEFAULT_MODEL_FILENAME = {
    "onnxruntime": "model.onnx",
    "pytorch": "model.pt",
    "tensorflow": "model.savedmodel",
    "tensorrt": "model.plan",
    "fil": "xgboost.json",
}
PLATFORM = {
    "tensorflow": "tensorflow_savedmodel",
    "tensorrt": "tensorrt_plan",
    "pytorch": "pytorch_libtorch",
    "onnxruntime": "onnxruntime_onnx",
}


def dtype_enum(dtype: str) -> int:
    """``FP32`` -> ``TYPE_FP32`` (BYTES is TYPE_STRING in model configs)."""
    name = "TYPE_STRING" if dtype in ("BYTES", "STRING") else f"TYPE_{dtype}"
    return int(mc.DataType.Value(name))


def backend_for(spec: ModelSpec, target: str) -> str:
    table = EMBEDDED_BACKEND if target == "embedded" else TRITON_BACKEND
    if spec.framework not in table:
        from toolkit.errors import GenerateError

        raise GenerateError(
            f"model {spec.name!r}: framework {spec.framework!r} needs its native Triton backend, which the embedded "
            "Triton lacks; generate with --target triton for the NGC container"
        )
    return table[spec.framework]


def _tensor(t: TensorSpec, is_input: bool) -> mc.ModelInput | mc.ModelOutput:
    msg = mc.ModelInput() if is_input else mc.ModelOutput()
    msg.name = t.name
    msg.data_type = dtype_enum(t.dtype)
    msg.dims.extend(t.dims)
    if t.reshape is not None:  # an empty reshape is meaningful ([N] from the model, [N, 1] to clients): keep it
        msg.reshape.SetInParent()
        msg.reshape.shape.extend(t.reshape)
    if is_input and t.optional:
        msg.optional = True
    return msg


def _dynamic_batching(db: DynamicBatching) -> mc.ModelDynamicBatching:
    out = mc.ModelDynamicBatching()
    out.preferred_batch_size.extend(db.preferred_batch_sizes)
    out.max_queue_delay_microseconds = db.max_queue_delay_microseconds
    out.preserve_ordering = db.preserve_ordering
    if db.queue_policy is not None:
        qp = db.queue_policy
        out.default_queue_policy.timeout_action = mc.ModelQueuePolicy.TimeoutAction.Value(qp.timeout_action)
        out.default_queue_policy.default_timeout_microseconds = qp.default_timeout_microseconds
        out.default_queue_policy.allow_timeout_override = qp.allow_timeout_override
        out.default_queue_policy.max_queue_size = qp.max_queue_size
    return out


def _instance_group(g: InstanceGroup, name: str, index: int) -> mc.ModelInstanceGroup:
    out = mc.ModelInstanceGroup()
    out.name = f"{name}_{index}"
    out.kind = mc.ModelInstanceGroup.Kind.Value(f"KIND_{g.kind}")
    out.count = g.count
    if g.gpus:
        out.gpus.extend(g.gpus)
    return out


def _version_policy(vp: VersionPolicy, out: mc.ModelVersionPolicy) -> None:
    if vp.latest is not None:
        out.latest.num_versions = vp.latest
    elif vp.all:
        out.all.SetInParent()
    elif vp.specific is not None:
        out.specific.versions.extend(vp.specific)


def _warmup(w: Warmup) -> mc.ModelWarmup:
    out = mc.ModelWarmup()
    out.name = w.name
    out.batch_size = w.batch_size
    out.count = w.count
    for name in sorted(w.inputs):
        wi = w.inputs[name]
        inp = out.inputs[name]
        inp.data_type = dtype_enum(wi.dtype)
        inp.dims.extend(wi.dims)
        if wi.data == "zero":
            inp.zero_data = True
        else:
            inp.random_data = True
    return out


def build_config(
    spec: ModelSpec, target: str = "embedded", extra_parameters: dict[str, str] | None = None
) -> mc.ModelConfig:
    """The ModelConfig for one model on a target (``embedded`` or ``triton``)."""
    cfg = mc.ModelConfig()
    cfg.name = spec.name
    backend = backend_for(spec, target)
    cfg.backend = backend
    if backend in DEFAULT_MODEL_FILENAME and target == "triton":
        cfg.default_model_filename = DEFAULT_MODEL_FILENAME[backend]
    cfg.max_batch_size = spec.max_batch_size
    cfg.input.extend(_tensor(t, True) for t in spec.inputs)
    cfg.output.extend(_tensor(t, False) for t in spec.outputs)
    if spec.dynamic_batching is not None:
        cfg.dynamic_batching.CopyFrom(_dynamic_batching(spec.dynamic_batching))
    cfg.instance_group.extend(_instance_group(g, spec.name, i) for i, g in enumerate(spec.instance_group))
    if spec.version_policy is not None:
        _version_policy(spec.version_policy, cfg.version_policy)
    cfg.model_warmup.extend(_warmup(w) for w in spec.warmup)
    if spec.response_cache:
        cfg.response_cache.enable = True
    params = dict(spec.parameters)
    params.update(extra_parameters or {})
    for key in sorted(params):
        cfg.parameters[key].string_value = params[key]
    return cfg


def render_config(cfg: mc.ModelConfig) -> str:
    """Text-format a config. ``max_batch_size: 0`` is proto3's default and would be dropped: write it explicitly,
    because Triton treats a missing max_batch_size differently during auto-complete and readers expect to see it."""
    text = text_format.MessageToString(cfg, as_utf8=True)
    if cfg.max_batch_size == 0:
        lines = text.splitlines(keepends=True)
        at = next((i + 1 for i, ln in enumerate(lines) if ln.startswith(("backend:", "platform:"))), 1)
        lines.insert(at, "max_batch_size: 0\n")
        text = "".join(lines)
    return text


def parse_config(text: str) -> mc.ModelConfig:
    """Parse config.pbtxt text; raises ``text_format.ParseError`` with line:column on malformed input."""
    cfg = mc.ModelConfig()
    text_format.Parse(text, cfg)
    return cfg
