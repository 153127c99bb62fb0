"""generate: deterministic, idempotent, protobuf-exact; manifest errors carry YAML path and line."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.errors import GenerateError, ManifestError
from toolkit.repository.config import parse_config
from toolkit.repository.generate import generate_repository
from toolkit.spec import load_manifest, manifest_json_schema

ROOT = Path(__file__).resolve().parents[2]


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts  # bytecode a stray import left is not ours
    }


def test_generate_twice_gives_identical_trees(tmp_path: Path, example_manifest) -> None:  # type: ignore[no-untyped-def]
    a, b = tmp_path / "a", tmp_path / "b"
    generate_repository(example_manifest, a)
    generate_repository(load_manifest(ROOT / "tritonctl.yaml"), b)
    assert tree_digest(a) == tree_digest(b)
    assert len(tree_digest(a)) > 20


def test_generate_is_idempotent_and_keeps_mtimes(tmp_path: Path, example_manifest) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "repo"
    first = generate_repository(example_manifest, out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    second = generate_repository(example_manifest, out)
    assert first.written and not second.written
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == mtimes
    # A stray file inside a generated model dir is removed; a hand-made model dir is left alone.
    (out / "digits_mlp" / "1" / "stray.txt").write_text("x")
    (out / "handmade").mkdir()
    (out / "handmade" / "config.pbtxt").write_text('name: "handmade"\n')
    third = generate_repository(example_manifest, out)
    assert not (out / "digits_mlp" / "1" / "stray.txt").exists()
    assert (out / "handmade" / "config.pbtxt").exists()
    assert [p.name for p in third.removed] == ["stray.txt"]


def test_committed_repository_is_current(tmp_path: Path, example_manifest) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "repo"
    generate_repository(example_manifest, out)
    assert tree_digest(out) == tree_digest(ROOT / "model_repository"), "run `make examples` and commit"


def test_configs_parse_back_and_max_batch_size_zero_is_explicit(tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    (tmp_path / "model.py").write_text("class TritonPythonModel:\n    pass\n")
    manifest.write_text(
        "models:\n"
        "  - name: nobatch\n    framework: python\n    artifact: model.py\n    max_batch_size: 0\n"
        "    inputs: [{name: X, dtype: FP32, dims: [-1, 3]}]\n    outputs: [{name: Y, dtype: BYTES, dims: [1]}]\n"
        "    instance_group: [{kind: CPU, count: 2}]\n    version_policy: {latest: 1}\n"
        "    parameters: {foo: bar}\n"
    )
    generate_repository(load_manifest(manifest), tmp_path / "out")
    text = (tmp_path / "out" / "nobatch" / "config.pbtxt").read_text()
    assert "max_batch_size: 0" in text
    cfg = parse_config(text)
    assert cfg.max_batch_size == 0 and list(cfg.input[0].dims) == [-1, 3]
    assert cfg.output[0].data_type == 13  # TYPE_STRING
    assert cfg.instance_group[0].count == 2 and cfg.version_policy.latest.num_versions == 1
    assert cfg.parameters["foo"].string_value == "bar"
    assert (tmp_path / "out" / "nobatch" / "1" / "model.py").is_file()


def test_triton_target_uses_native_onnxruntime(tmp_path: Path, example_manifest) -> None:  # type: ignore[no-untyped-def]
    generate_repository(example_manifest, tmp_path, target="triton")
    cfg = parse_config((tmp_path / "digits_logreg" / "config.pbtxt").read_text())
    assert cfg.backend == "onnxruntime" and cfg.default_model_filename == "model.onnx"
    assert (tmp_path / "digits_logreg" / "1" / "model.onnx").is_file()
    assert not (tmp_path / "digits_logreg" / "1" / "model.py").exists()
    assert cfg.output[1].HasField("reshape") and list(cfg.output[1].reshape.shape) == []


def test_missing_artifact_is_a_clear_error(tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "models:\n  - name: a\n    framework: onnx\n    artifact: nope.onnx\n"
        "    inputs: [{name: X, dtype: FP32, dims: [1]}]\n    outputs: [{name: Y, dtype: FP32, dims: [1]}]\n"
    )
    with pytest.raises(GenerateError, match=r"model 'a' version 1: artifact .*nope.onnx not found"):
        generate_repository(load_manifest(manifest), tmp_path / "out")


def test_manifest_errors_name_path_and_line(tmp_path: Path) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(
        "models:\n"
        "  - name: ok\n    framework: python\n    artifact: m.py\n"
        "    inputs: [{name: X, dtype: FP32, dims: [1]}]\n    outputs: [{name: Y, dtype: FP32, dims: [1]}]\n"
        "  - name: bad\n    framework: onnx\n    artifact: m.onnx\n"
        "    inputs:\n      - {name: X, dtype: FP32, dims: [0]}\n"
        "    outputs: [{name: Y, dtype: FLOAT, dims: [1]}]\n    colour: red\n"
    )
    with pytest.raises(ManifestError) as info:
        load_manifest(manifest)
    issues = {path: line for path, line, _ in info.value.issues}
    assert issues == {"models[1].inputs[0].dims": 11, "models[1].outputs[0].dtype": 12, "models[1].colour": 13}
    assert "bad.yaml:11: models[1].inputs[0].dims" in str(info.value)


def test_cli_reports_manifest_errors_without_traceback(tmp_path: Path) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text("models:\n  - name: x\n    framework: nope\n")
    proc = subprocess.run(
        [sys.executable, "-m", "toolkit", "generate", str(manifest), "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "models[0].framework" in proc.stderr and "bad.yaml:3" in proc.stderr


def test_schema_is_json_with_models() -> None:
    schema = json.loads(manifest_json_schema())
    assert "models" in schema["properties"] and "ModelSpec" in schema["$defs"]
