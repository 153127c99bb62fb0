"""A corpus of broken model repositories for ``tritonctl validate``, built in code into temporary directories.

Every case starts from one small valid python model (or, for the ensemble cases, one valid ensemble over a valid step
model) and breaks exactly one thing. ``BrokenCase.triton`` says what a real Triton 2.51 (embedded, python backend only,
CPU-only) does with the broken model: tests/integration/test_validate_triton.py loads every case Triton ``rejects``
and asserts the load fails, and every case it ``loads`` and asserts it loads, so no rule here claims a rejection
Triton does not actually make. ``offline`` cases are checked offline only (e.g. native backends the embedded Triton
lacks, where a load fails for an unrelated reason and would prove nothing). tests/unit/test_validate.py checks what
validate reports for every case.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from toolkit.repository.config import parse_config, render_config
from toolkit.repository.generate import ADAPTER_TEMPLATE

CONTROL = "healthy_control"  # a valid model next to the broken ones: a rejection is due to what each case breaks
ENSEMBLE_CONTROL = "healthy_ensemble"  # the same for the ensemble cases (with its step, healthy_ensemble_step)

VALID_MODEL_PY = '''"""Echo model used by the validate corpus."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            y = pb_utils.Tensor("Y", x.astype(np.float32))
            out.append(pb_utils.InferenceResponse(output_tensors=[y]))
        return out
'''


def valid_config(name: str) -> mc.ModelConfig:
    """The healthy baseline: batching python model, one input, one output, one CPU instance."""
    cfg = mc.ModelConfig()
    cfg.name = name
    cfg.backend = "python"
    cfg.max_batch_size = 8
    inp = cfg.input.add()
    inp.name = "X"
    inp.data_type = mc.TYPE_FP32
    inp.dims.extend([4])
    out = cfg.output.add()
    out.name = "Y"
    out.data_type = mc.TYPE_FP32
    out.dims.extend([4])
    group = cfg.instance_group.add()
    group.kind = mc.ModelInstanceGroup.KIND_CPU
    group.count = 1
    return cfg


def write_valid_model(root: Path, name: str) -> Path:
    mdir = root / name
    (mdir / "1").mkdir(parents=True, exist_ok=True)
    (mdir / "config.pbtxt").write_text(render_config(valid_config(name)))
    (mdir / "1" / "model.py").write_text(VALID_MODEL_PY)
    return mdir


def write_valid_ensemble(root: Path, name: str) -> Path:
    """The healthy ensemble baseline: one step, a valid model of its own (``<name>_step``), X -> step -> Y."""
    step = write_valid_model(root, f"{name}_step").name
    cfg = mc.ModelConfig(name=name, platform="ensemble", max_batch_size=8)
    cfg.input.add(name="X", data_type=mc.TYPE_FP32, dims=[4])
    cfg.output.add(name="Y", data_type=mc.TYPE_FP32, dims=[4])
    s = cfg.ensemble_scheduling.step.add(model_name=step, model_version=-1)
    s.input_map["X"], s.output_map["Y"] = "X", "Y"
    mdir = root / name
    (mdir / "1").mkdir(parents=True, exist_ok=True)  # Triton needs the version directory, empty for an ensemble
    (mdir / "config.pbtxt").write_text(render_config(cfg))
    return mdir


def edit_config(mdir: Path, change: Callable[[mc.ModelConfig], None]) -> None:
    path = mdir / "config.pbtxt"
    cfg = parse_config(path.read_text())
    change(cfg)
    path.write_text(render_config(cfg))


@dataclass(frozen=True)
class BrokenCase:
    """One broken model: ``breaks`` mutates a valid model directory; validate must report ``file`` + ``field``
    (``file`` relative to the model directory, ``""`` for the directory itself) with the case's severity.

    ``triton`` is what a real embedded Triton 2.51 does with the model, and the tests check it: ``rejects`` (the
    load fails: validate reports an error), ``loads`` (Triton accepts it: validate only warns), or ``offline`` (not
    loaded in tests: a native backend the embedded Triton lacks, or a case on which Triton hangs instead of failing).
    """

    name: str
    breaks: Callable[[Path], None]
    file: str
    field: str
    triton: str = "rejects"

    @property
    def severity(self) -> str:
        return "warning" if self.triton == "loads" else "error"


# -- the breakages --------------------------------------------------------------------------------------------------
def _name_mismatch(m: Path) -> None:
    edit_config(m, lambda c: setattr(c, "name", "someone_else"))


def _parse_error(m: Path) -> None:
    text = (m / "config.pbtxt").read_text()
    (m / "config.pbtxt").write_text(text.replace('name: "X"', 'name: "X"\n  dimz: [4]', 1))


def _missing_config(m: Path) -> None:
    (m / "config.pbtxt").unlink()


def _no_version_dir(m: Path) -> None:
    shutil.rmtree(m / "1")


def _non_numeric_version(m: Path) -> None:
    (m / "1").rename(m / "v1")


def _missing_model_py(m: Path) -> None:
    (m / "1" / "model.py").unlink()
    (m / "1" / "model_py.txt").write_text("not the model\n")


def _model_py_syntax(m: Path) -> None:
    (m / "1" / "model.py").write_text(
        VALID_MODEL_PY.replace("def execute(self, requests):", "def execute(self, requests)")
    )


def _no_python_class(m: Path) -> None:
    (m / "1" / "model.py").write_text(VALID_MODEL_PY.replace("class TritonPythonModel", "class EchoModel"))


def _negative_max_batch(m: Path) -> None:
    edit_config(m, lambda c: setattr(c, "max_batch_size", -1))


def _zero_dim(m: Path) -> None:
    edit_config(m, lambda c: c.input[0].dims.__setitem__(0, 0))


def _dim_below_minus_one(m: Path) -> None:
    edit_config(m, lambda c: c.output[0].dims.__setitem__(0, -2))


def _invalid_dtype(m: Path) -> None:
    edit_config(m, lambda c: setattr(c.input[0], "data_type", mc.TYPE_INVALID))


def _dynamic_batching_without_batching(m: Path) -> None:
    def change(c: mc.ModelConfig) -> None:
        c.max_batch_size = 0
        c.dynamic_batching.max_queue_delay_microseconds = 100

    edit_config(m, change)


def _preferred_over_max(m: Path) -> None:
    edit_config(m, lambda c: c.dynamic_batching.preferred_batch_size.extend([4, 16]))


def _reshape_count_mismatch(m: Path) -> None:
    edit_config(m, lambda c: c.input[0].reshape.shape.extend([3, 2]))


def _duplicate_input(m: Path) -> None:
    def change(c: mc.ModelConfig) -> None:
        dup = c.input.add()
        dup.CopyFrom(c.input[0])

    edit_config(m, change)


def _duplicate_output(m: Path) -> None:
    def change(c: mc.ModelConfig) -> None:
        dup = c.output.add()
        dup.CopyFrom(c.output[0])

    edit_config(m, change)


def _gpu_instance(m: Path) -> None:
    edit_config(m, lambda c: setattr(c.instance_group[0], "kind", mc.ModelInstanceGroup.KIND_GPU))


def _negative_instances(m: Path) -> None:
    edit_config(m, lambda c: setattr(c.instance_group[0], "count", -1))


def _specific_version_missing(m: Path) -> None:
    edit_config(m, lambda c: c.version_policy.specific.versions.extend([3]))


def _unknown_backend(m: Path) -> None:
    edit_config(m, lambda c: setattr(c, "backend", "no_such_backend"))


def _no_backend(m: Path) -> None:
    edit_config(m, lambda c: c.ClearField("backend"))


def _empty_dims(m: Path) -> None:
    edit_config(m, lambda c: c.input[0].ClearField("dims"))


def _empty_tensor_name(m: Path) -> None:
    edit_config(m, lambda c: setattr(c.input[0], "name", ""))


def _preferred_zero(m: Path) -> None:
    edit_config(m, lambda c: c.dynamic_batching.preferred_batch_size.extend([0]))


def _reshape_variable_trunks(m: Path) -> None:
    def change(c: mc.ModelConfig) -> None:
        c.input[0].dims[0] = -1
        c.input[0].reshape.shape.extend([2, -1])

    edit_config(m, change)


def _cpu_instance_with_gpus(m: Path) -> None:
    edit_config(m, lambda c: c.instance_group[0].gpus.extend([0]))


def _latest_zero(m: Path) -> None:
    edit_config(m, lambda c: setattr(c.version_policy.latest, "num_versions", 0))


def _add_warmup(c: mc.ModelConfig, batch_size: int, dims: list[int]) -> None:
    w = c.model_warmup.add()
    w.name = "zeros"
    w.batch_size = batch_size
    w.inputs["X"].data_type = mc.TYPE_FP32
    w.inputs["X"].dims.extend(dims)
    w.inputs["X"].zero_data = True


def _warmup_dims(m: Path) -> None:
    edit_config(m, lambda c: _add_warmup(c, 1, [5]))


def _warmup_batch_over_max(m: Path) -> None:
    edit_config(m, lambda c: _add_warmup(c, 16, [4]))


def _input_output_same_name(m: Path) -> None:
    edit_config(m, lambda c: setattr(c.output[0], "name", "X"))


def _stray_version_dir(m: Path) -> None:
    (m / "v2").mkdir()


def _adapter_artifact_missing(m: Path) -> None:
    shutil.copyfile(ADAPTER_TEMPLATE, m / "1" / "model.py")

    def change(c: mc.ModelConfig) -> None:
        c.parameters["tritonctl.framework"].string_value = "sklearn"
        c.parameters["tritonctl.artifact"].string_value = "model.joblib"

    edit_config(m, change)


def _onnx_missing_file(m: Path) -> None:
    (m / "1" / "model.py").unlink()
    edit_config(m, lambda c: setattr(c, "backend", "onnxruntime"))


def _native_no_inputs(m: Path) -> None:
    (m / "1" / "model.py").unlink()
    (m / "1" / "model.onnx").write_bytes(b"onnx")

    def change(c: mc.ModelConfig) -> None:
        c.backend = "onnxruntime"
        c.ClearField("input")

    edit_config(m, change)


def _as_ensemble(m: Path, change: Callable[[mc.ModelConfig], None]) -> None:
    """Replace the model by the healthy ensemble (and its step model, beside it), then break the ensemble."""
    shutil.rmtree(m)
    write_valid_ensemble(m.parent, m.name)
    edit_config(m, change)


def _ensemble_unknown_tensor(m: Path) -> None:  # the step reads a tensor nothing produces (a typo)
    _as_ensemble(m, lambda c: c.ensemble_scheduling.step[0].input_map.__setitem__("X", "X_typo"))


def _ensemble_unknown_input(m: Path) -> None:  # the step maps a name its model has no input for; X stays unmapped
    def change(c: mc.ModelConfig) -> None:
        step = c.ensemble_scheduling.step[0]
        del step.input_map["X"]
        step.input_map["Z"] = "X"

    _as_ensemble(m, change)


CASES: list[BrokenCase] = [
    # Triton 2.51 refuses these loads.
    BrokenCase("name_mismatch", _name_mismatch, "config.pbtxt", "name"),
    BrokenCase("parse_error", _parse_error, "config.pbtxt", "syntax"),
    BrokenCase("missing_config", _missing_config, "config.pbtxt", "file"),
    BrokenCase("no_version_dir", _no_version_dir, "", "versions"),
    BrokenCase("non_numeric_version", _non_numeric_version, "", "versions"),
    BrokenCase("model_py_syntax", _model_py_syntax, "1/model.py", "syntax"),
    BrokenCase("no_python_class", _no_python_class, "1/model.py", "TritonPythonModel"),
    BrokenCase(
        "adapter_artifact_missing", _adapter_artifact_missing, "config.pbtxt", 'parameters["tritonctl.artifact"]'
    ),
    BrokenCase("negative_max_batch", _negative_max_batch, "config.pbtxt", "max_batch_size"),
    BrokenCase("zero_dim", _zero_dim, "config.pbtxt", "input[0].dims"),
    BrokenCase("dim_below_minus_one", _dim_below_minus_one, "config.pbtxt", "output[0].dims"),
    BrokenCase("empty_dims", _empty_dims, "config.pbtxt", "input[0].dims"),
    BrokenCase("empty_tensor_name", _empty_tensor_name, "config.pbtxt", "input[0].name"),
    BrokenCase("invalid_dtype", _invalid_dtype, "config.pbtxt", "input[0].data_type"),
    BrokenCase("preferred_over_max", _preferred_over_max, "config.pbtxt", "dynamic_batching.preferred_batch_size[1]"),
    BrokenCase("preferred_zero", _preferred_zero, "config.pbtxt", "dynamic_batching.preferred_batch_size[0]"),
    BrokenCase("reshape_mismatch", _reshape_count_mismatch, "config.pbtxt", "input[0].reshape"),
    BrokenCase("reshape_variable_trunks", _reshape_variable_trunks, "config.pbtxt", "input[0].reshape"),
    BrokenCase("gpu_instance", _gpu_instance, "config.pbtxt", "instance_group[0].kind"),
    BrokenCase("cpu_instance_with_gpus", _cpu_instance_with_gpus, "config.pbtxt", "instance_group[0].gpus"),
    BrokenCase("specific_version_missing", _specific_version_missing, "config.pbtxt", "version_policy.specific"),
    BrokenCase("latest_zero", _latest_zero, "config.pbtxt", "version_policy.latest.num_versions"),
    BrokenCase("unknown_backend", _unknown_backend, "config.pbtxt", "backend"),
    BrokenCase("warmup_dims", _warmup_dims, "config.pbtxt", 'model_warmup[0].inputs["X"].dims'),
    BrokenCase(
        "ensemble_unknown_tensor", _ensemble_unknown_tensor, "config.pbtxt", "ensemble_scheduling.step[0].input_map[X]"
    ),
    BrokenCase(
        "ensemble_unknown_input", _ensemble_unknown_input, "config.pbtxt", "ensemble_scheduling.step[0].input_map[Z]"
    ),
    # Triton 2.51 loads these: validate only warns.
    BrokenCase("duplicate_input", _duplicate_input, "config.pbtxt", "input[1].name", "loads"),
    BrokenCase("duplicate_output", _duplicate_output, "config.pbtxt", "output[1].name", "loads"),
    BrokenCase("input_output_same_name", _input_output_same_name, "config.pbtxt", "output[0].name", "loads"),
    BrokenCase("dynbatch_no_batching", _dynamic_batching_without_batching, "config.pbtxt", "dynamic_batching", "loads"),
    BrokenCase("negative_instances", _negative_instances, "config.pbtxt", "instance_group[0].count", "loads"),
    BrokenCase("no_backend", _no_backend, "config.pbtxt", "backend", "loads"),
    BrokenCase("stray_version_dir", _stray_version_dir, "", "versions", "loads"),
    # Not loaded: Triton 2.51 hangs on these (no READY, no error), or needs a backend the embedded Triton lacks.
    BrokenCase("missing_model_py", _missing_model_py, "1/model.py", "file", "offline"),
    BrokenCase(
        "warmup_batch_over_max", _warmup_batch_over_max, "config.pbtxt", "model_warmup[0].batch_size", "offline"
    ),
    BrokenCase("onnx_missing_file", _onnx_missing_file, "1/model.onnx", "file", "offline"),
    BrokenCase("native_no_inputs", _native_no_inputs, "config.pbtxt", "input", "offline"),
]


def build_corpus(root: Path, cases: list[BrokenCase] | None = None) -> dict[str, BrokenCase]:
    """Write every case as its own model directory (named after the case) under ``root``."""
    built: dict[str, BrokenCase] = {}
    for case in cases if cases is not None else CASES:
        mdir = write_valid_model(root, case.name)
        case.breaks(mdir)
        built[case.name] = case
    return built
