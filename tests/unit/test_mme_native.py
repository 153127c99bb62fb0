"""Native artifacts (built for the NGC/SageMaker Triton container) adapted, in the fetched copy, to the python-only
embedded Triton; backends that cannot run here refused in one line (no Triton: files only).

The adapted config must be the one ``generate`` writes for the same model on the embedded target (same tensors,
dims, reshapes, batching), so a deploy-built tarball serves here exactly as the manifest does; what the adapted model
computes is checked against onnxruntime on a real Triton in tests/integration/test_mme_native.py.
"""

from __future__ import annotations

import importlib.util
import io
import tarfile
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from toolkit.mme.native import adapt_native
from toolkit.mme.safe_tar import ArtifactError, extract_model_tarball
from toolkit.repository.config import build_config, parse_config, render_config
from toolkit.repository.generate import ADAPTER_TEMPLATE, model_files
from toolkit.spec import load_manifest

ROOT = Path(__file__).resolve().parents[2]
ONNX = ROOT / "examples" / "artifacts" / "digits_logreg.onnx"


def tar(path: Path, files: dict[str, bytes | str]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            raw = data.encode() if isinstance(data, str) else data
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tf.addfile(info, io.BytesIO(raw))
    return path


def native_tarball(path: Path, spec_name: str, folder: str) -> Path:
    """What ``generate --target triton`` (and so ``tritonctl deploy``) packs for a manifest model."""
    spec = next(m for m in load_manifest(ROOT / "tritonctl.yaml").models if m.name == spec_name)
    gm = model_files(spec, "triton")
    files: dict[str, bytes | str] = {f"{folder}/config.pbtxt": render_config(gm.config)}
    for rel, src in gm.files.items():
        files[f"{folder}/{rel}"] = src if isinstance(src, bytes) else src.read_bytes()
    return tar(path, files)


def test_a_deploy_built_onnx_model_becomes_what_generate_writes_for_the_embedded_triton(tmp_path: Path) -> None:
    art = native_tarball(tmp_path / "logreg.tar.gz", "digits_logreg", "digits_logreg")
    before = art.read_bytes()
    out = extract_model_tarball(art, tmp_path / "repo", name="logreg")
    got = parse_config((out / "config.pbtxt").read_text())
    spec = next(m for m in load_manifest(ROOT / "tritonctl.yaml").models if m.name == "digits_logreg")
    want = build_config(spec, "embedded", {"tritonctl.framework": "onnx", "tritonctl.artifact": "model.onnx"})
    want.name = "logreg"
    assert got == want  # tensors, dims, the empty reshape, max_batch_size 64, dynamic batching, instance groups
    assert got.backend == "python" and not got.platform and not got.default_model_filename
    assert (out / "1" / "model.py").read_bytes() == ADAPTER_TEMPLATE.read_bytes()
    assert (out / "1" / "model.onnx").read_bytes() == ONNX.read_bytes()  # the model file stays where it was
    assert art.read_bytes() == before  # the store's artifact is never touched


def test_platform_only_configs_and_gpu_instances_are_adapted_to_cpu(tmp_path: Path) -> None:
    config = """name: "m"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [{ name: "X" data_type: TYPE_FP32 dims: [64] }]
output [{ name: "label" data_type: TYPE_INT64 dims: [1] reshape { shape: [] } }]
instance_group [{ kind: KIND_GPU count: 2 gpus: [0] }]
optimization { execution_accelerators { gpu_execution_accelerator [{ name: "tensorrt" }] } }
parameters { key: "intra_op_thread_count" value { string_value: "2" } }
dynamic_batching { max_queue_delay_microseconds: 100 }
"""
    art = tar(tmp_path / "m.tar.gz", {"m/config.pbtxt": config, "m/1/model.onnx": ONNX.read_bytes()})
    cfg = parse_config((extract_model_tarball(art, tmp_path / "r") / "config.pbtxt").read_text())
    assert cfg.backend == "python" and cfg.platform == ""
    assert [(g.kind, g.count, list(g.gpus)) for g in cfg.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 2, [])]
    assert not cfg.HasField("optimization")
    assert cfg.parameters["tritonctl.threads"].string_value == "2"
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 100 and cfg.max_batch_size == 8
    assert list(cfg.output[0].reshape.shape) == [] and cfg.output[0].HasField("reshape")


def test_a_config_without_tensors_is_completed_from_the_onnx_graph(tmp_path: Path) -> None:
    """Triton's onnxruntime auto-complete: names, types and shapes from the graph; a symbolic first dim everywhere and
    no max_batch_size make it a batching model of max_batch_size 4."""
    import onnxruntime as ort

    files = {"config.pbtxt": 'platform: "onnxruntime_onnx"\n', "1/model.onnx": ONNX.read_bytes()}
    art = tar(tmp_path / "bare.tar.gz", files)
    cfg = parse_config((extract_model_tarball(art, tmp_path / "r") / "config.pbtxt").read_text())
    sess = ort.InferenceSession(str(ONNX), providers=["CPUExecutionProvider"])
    assert [t.name for t in cfg.input] == [t.name for t in sess.get_inputs()]
    assert [t.name for t in cfg.output] == [t.name for t in sess.get_outputs()]
    assert cfg.max_batch_size == 4 and cfg.HasField("dynamic_batching")
    assert list(cfg.input[0].dims) == [64] and cfg.input[0].data_type == mc.TYPE_FP32
    assert cfg.output[0].data_type == mc.TYPE_INT64  # skl2onnx's label output: [batch] in the graph ...
    assert list(cfg.output[0].dims) == [1] and cfg.output[0].HasField("reshape")  # ... [batch, 1] with a reshape


def test_the_backend_is_inferred_from_the_model_file_when_the_config_names_none(tmp_path: Path) -> None:
    config = 'max_batch_size: 0\ninput [{ name: "X" data_type: TYPE_FP32 dims: [1, 64] }]\n'
    config += 'output [{ name: "label" data_type: TYPE_INT64 dims: [1] }]\n'
    art = tar(tmp_path / "n.tar.gz", {"config.pbtxt": config, "1/model.onnx": ONNX.read_bytes()})
    cfg = parse_config((extract_model_tarball(art, tmp_path / "r") / "config.pbtxt").read_text())
    assert cfg.backend == "python" and cfg.parameters["tritonctl.framework"].string_value == "onnx"


def test_onnx_with_external_data_in_a_model_folder(tmp_path: Path) -> None:
    config = 'platform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
    config += 'input [{ name: "X" data_type: TYPE_FP32 dims: [1, 64] }]\n'
    config += 'output [{ name: "label" data_type: TYPE_INT64 dims: [1] }]\n'
    art = tar(tmp_path / "x.tar.gz", {"config.pbtxt": config, "1/model.onnx/model.onnx": ONNX.read_bytes()})
    cfg = parse_config((extract_model_tarball(art, tmp_path / "r") / "config.pbtxt").read_text())
    assert cfg.parameters["tritonctl.artifact"].string_value == "model.onnx/model.onnx"


@pytest.mark.parametrize(
    ("config", "model_file", "named"),
    [
        ('platform: "tensorrt_plan"\n', "model.plan", "backend tensorrt (platform tensorrt_plan)"),
        ('platform: "tensorflow_savedmodel"\n', "model.savedmodel/saved_model.pb", "backend tensorflow"),
        ('backend: "openvino"\n', "model.xml", "backend openvino"),
        ('backend: "dali"\n', "model.dali", "backend dali"),
        ('backend: "fil"\n', "xgboost.json", "backend fil"),
        ("max_batch_size: 0\n", "model.plan", "backend tensorrt"),  # inferred from the file, as Triton would
        ("max_batch_size: 0\n", "weights.bin", "no backend, platform or known model file"),
    ],
)
def test_backends_that_cannot_run_here_are_refused_in_one_line(
    tmp_path: Path, config: str, model_file: str, named: str
) -> None:
    art = tar(tmp_path / "engine.tar.gz", {"resnet/config.pbtxt": config, f"resnet/1/{model_file}": b"\0"})
    with pytest.raises(ArtifactError) as err:
        extract_model_tarball(art, tmp_path / "r", label="artifact 'engine.tar.gz'")
    message = str(err.value)
    assert message.startswith("artifact 'engine.tar.gz': ") and named in message and "\n" not in message
    assert "export the model to ONNX" in message
    assert not (tmp_path / "r" / "engine").exists()  # nothing half-extracted for Triton to try


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch is installed: the model is adapted")
def test_torchscript_without_torch_is_refused_naming_torch(tmp_path: Path) -> None:
    config = 'platform: "pytorch_libtorch"\nmax_batch_size: 0\n'
    config += 'input [{ name: "INPUT__0" data_type: TYPE_FP32 dims: [2] }]\n'
    config += 'output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [2] }]\n'
    art = tar(tmp_path / "pt.tar.gz", {"config.pbtxt": config, "1/model.pt": b"\0"})
    with pytest.raises(ArtifactError) as err:
        extract_model_tarball(art, tmp_path / "r")
    message = str(err.value)
    assert "artifact 'pt.tar.gz'" in message and "needs torch" in message and "pip install torch" in message
    assert "\n" not in message


def test_torchscript_tensors_are_ordered_by_their_libtorch_index(tmp_path: Path) -> None:
    """Triton's libtorch backend passes tensors by their ``__N`` index; the adapter passes them in config order, so
    the adapted config lists them by index (checked on the config alone: no torch needed for the rewrite)."""
    from toolkit.mme.native import to_python

    cfg = mc.ModelConfig(platform="pytorch_libtorch")
    for name in ("INPUT__1", "INPUT__0"):
        cfg.input.add(name=name, data_type=mc.TYPE_FP32, dims=[2])
    cfg.output.add(name="OUTPUT__0", data_type=mc.TYPE_FP32, dims=[2])
    to_python(cfg, "torchscript", "model.pt")
    assert [t.name for t in cfg.input] == ["INPUT__0", "INPUT__1"]
    assert cfg.parameters["tritonctl.framework"].string_value == "torchscript"


@pytest.mark.parametrize(
    ("files", "why"),
    [
        ({"1/other.onnx": b"\0"}, "version 1 has no model.onnx; put the model file at 1/model.onnx"),
        ({}, "no version folder (1/, 2/ ...)"),
        ({"1/model.onnx": b"\0", "1/model.py": b"x = 1\n"}, "1/model.py exists beside a native model; remove it"),
    ],
)
def test_native_layout_refusals_name_what_to_change(tmp_path: Path, files: dict[str, bytes], why: str) -> None:
    config = 'platform: "onnxruntime_onnx"\nmax_batch_size: 0\ninput [{ name: "X" data_type: TYPE_FP32 dims: [2] }]\n'
    config += 'output [{ name: "Y" data_type: TYPE_FP32 dims: [2] }]\n'
    art = tar(tmp_path / "bad.tar.gz", {"config.pbtxt": config, **files})
    with pytest.raises(ArtifactError, match=r"^artifact 'bad\.tar\.gz': ") as err:
        extract_model_tarball(art, tmp_path / "r")
    assert why in str(err.value) and "\n" not in str(err.value)


def test_python_models_and_ensembles_are_left_alone(tmp_path: Path) -> None:
    for text in ('name: "p"\nbackend: "python"\n', 'name: "e"\nplatform: "ensemble"\n'):
        d = tmp_path / text.split('"')[1]
        (d / "1").mkdir(parents=True)
        (d / "config.pbtxt").write_text(text)
        assert adapt_native(d, "x") is None
        assert (d / "config.pbtxt").read_text() == text and not (d / "1" / "model.py").exists()


def test_torchscript_with_torch_is_adapted(tmp_path: Path) -> None:
    """Where torch is importable, a ``pytorch_libtorch`` artifact becomes the adapter's torchscript model. Skipped
    where torch is not (CI); run with torch 2.13.0+cpu installed outside the venv (``PYTHONPATH=$PWD:/work/torchlib``),
    and served for real in tests/integration/test_mme_torch.py."""
    torch = pytest.importorskip("torch")
    net = torch.jit.script(torch.nn.Linear(2, 2))
    net.save(str(tmp_path / "model.pt"))
    config = 'platform: "pytorch_libtorch"\nmax_batch_size: 8\n'
    config += 'input [{ name: "INPUT__0" data_type: TYPE_FP32 dims: [2] }]\n'
    config += 'output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [2] }]\n'
    art = tar(tmp_path / "pt.tar.gz", {"config.pbtxt": config, "1/model.pt": (tmp_path / "model.pt").read_bytes()})
    cfg = parse_config((extract_model_tarball(art, tmp_path / "r") / "config.pbtxt").read_text())
    assert cfg.backend == "python" and cfg.parameters["tritonctl.framework"].string_value == "torchscript"
    assert cfg.parameters["tritonctl.artifact"].string_value == "model.pt" and cfg.max_batch_size == 8


def test_a_deployed_ensemble_bundle_is_the_ensemble_with_its_steps_beside_it(tmp_path: Path) -> None:
    """``deploy`` packs an ensemble with the models it calls in one archive, as SageMaker's Triton front end loads it
    (the folder saying ``platform: "ensemble"`` is the TargetModel). The copy is the ensemble, renamed, with its
    steps under ``STEPS_DIR`` (named after their folders, native ONNX steps adapted) for the manager to install."""
    from toolkit.deploy.artifacts import build_repository
    from toolkit.mme.layout import STEPS_DIR

    full = load_manifest(ROOT / "tritonctl.yaml")
    steps = ["housing_preprocess_onnx", "housing_Chicago_IL_onnx", "housing_postprocess"]
    manifest = full.model_copy(
        update={
            "models": [m for m in full.models if m.name in steps],
            "ensembles": [e for e in full.ensembles if e.name == "housing_pipeline_onnx_Chicago_IL"],
            "endpoints": [],
        }
    )
    built = build_repository(manifest, tmp_path / "work")
    art = tmp_path / "pipe.tar.gz"
    art.write_bytes(built.tarball("housing_pipeline_onnx_Chicago_IL").data)
    out = extract_model_tarball(art, tmp_path / "repo", name="pipelines..chicago")
    cfg = parse_config((out / "config.pbtxt").read_text())
    assert cfg.name == "pipelines..chicago" and cfg.platform == "ensemble"
    assert [s.model_name for s in cfg.ensemble_scheduling.step] == steps  # steps keep their folder names
    assert sorted(p.name for p in (out / STEPS_DIR).iterdir()) == sorted(steps)
    for step in steps:
        step_cfg = parse_config((out / STEPS_DIR / step / "config.pbtxt").read_text())
        assert step_cfg.name == step and step_cfg.backend == "python"
    assert (
        out / STEPS_DIR / "housing_Chicago_IL_onnx" / "1" / "model.py"
    ).read_bytes() == ADAPTER_TEMPLATE.read_bytes()


def test_archives_of_several_models_without_exactly_one_ensemble_are_refused(tmp_path: Path) -> None:
    ens = 'platform: "ensemble"\nmax_batch_size: 0\n'
    model = 'backend: "python"\nmax_batch_size: 0\n'
    for files, why in (
        ({"a/config.pbtxt": model, "b/config.pbtxt": model}, "holds 2 model folders (a/, b/); "),
        ({"a/config.pbtxt": ens, "b/config.pbtxt": ens, "c/config.pbtxt": model}, "; 2 are: a, b)"),
    ):
        art = tar(tmp_path / "several.tar.gz", files)
        with pytest.raises(ArtifactError) as err:
            extract_model_tarball(art, tmp_path / "r")
        assert str(err.value).startswith("artifact 'several.tar.gz' holds ") and why in str(err.value)
        assert "one artifact is one model (or one ensemble with the models it calls; " in str(err.value)
        assert not (tmp_path / "r" / "several").exists()
