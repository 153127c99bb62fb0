"""A multiplexed model's files without extraction (``toolkit.mme.muxfiles``): a tarball read in memory is judged
exactly as the same model's folder on disk, refused where extraction refuses, and written as only what the host
loads, atomically."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from toolkit.mme.muxfiles import DESCRIPTOR, FOLDER, PREPARED, ModelFiles, drop_prepared, write_prepared
from toolkit.mme.muxspec import ADAPTER, read_artifact
from toolkit.mme.safe_tar import ArtifactError, read_model_tarball
from toolkit.repository.generate import render_model_dir
from toolkit.spec.models import ModelSpec, TensorSpec

LIMIT = 1 << 20


def _model(tmp: Path, name: str = "m") -> Path:
    src = tmp / f"{name}.py"
    src.write_text("def predict(inputs):\n    return {'y': inputs['x']}\n")
    spec = ModelSpec(
        name=name,
        framework="numpy",
        artifact=src,
        max_batch_size=8,
        inputs=[TensorSpec(name="x", dtype="FP32", dims=[4])],
        outputs=[TensorSpec(name="y", dtype="FP32", dims=[4])],
    )
    return render_model_dir(spec, tmp / "models")


def _tar(folder: Path, path: Path, top: str = "") -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for p in sorted(folder.rglob("*")):
            tf.add(p, arcname=top + p.relative_to(folder).as_posix(), recursive=False)
    return path


def _in_memory(tar: Path) -> ModelFiles:
    members = read_model_tarball(tar, max_read=LIMIT, label=tar.name)
    assert members is not None
    return ModelFiles.in_memory(members, tar.name)


@pytest.mark.parametrize("top", ["", "any-folder/"])
def test_a_tarball_in_memory_is_judged_as_its_folder_on_disk(tmp_path: Path, top: str) -> None:
    d = _model(tmp_path)
    files = _in_memory(_tar(d, tmp_path / "m.tar.gz", top))
    assert files.entries["1"] == FOLDER and files.entries["1/m.py"] == (d / "1" / "m.py").stat().st_size
    on_disk, in_memory = read_artifact(d, "m", LIMIT), read_artifact(files, "m", LIMIT)
    assert not isinstance(in_memory, str) and in_memory == on_disk and in_memory.artifact == "1/m.py"
    assert read_artifact(files, "m", 10) == read_artifact(d, "m", 10) and "over the host's limit" in str(
        read_artifact(files, "m", 10)
    )
    (d / "1" / "model.py").write_text("# hand-written\n")
    files = _in_memory(_tar(d, tmp_path / "hand.tar.gz", top))
    assert read_artifact(files, "m", LIMIT) == read_artifact(d, "m", LIMIT) == "1/model.py is not tritonctl's adapter"
    shutil.copy(ADAPTER, d / "1" / "model.py")
    os.unlink(d / "1" / "m.py")
    files = _in_memory(_tar(d, tmp_path / "gone.tar.gz", top))
    assert read_artifact(files, "m", LIMIT) == read_artifact(d, "m", LIMIT) == "artifact 1/m.py missing"


def test_a_link_on_disk_is_neither_listed_nor_read(tmp_path: Path) -> None:
    d = _model(tmp_path)
    (d / "1" / "m.py").unlink()
    (d / "1" / "m.py").symlink_to(tmp_path / "m.py")
    files = ModelFiles.on_disk(d)
    assert "1/m.py" not in files.entries and read_artifact(files, "m", LIMIT) == "artifact 1/m.py missing"
    with pytest.raises(FileNotFoundError):
        files.read("1/m.py")


def test_a_large_tarball_or_a_bundle_is_not_read_in_memory(tmp_path: Path) -> None:
    d = _model(tmp_path)
    tar = _tar(d, tmp_path / "m.tar.gz")
    assert read_model_tarball(tar, max_read=100, label="m") is None  # the caller extracts it as before
    bundle = tmp_path / "bundle"
    shutil.copytree(d, bundle / "a")
    shutil.copytree(d, bundle / "b")
    assert read_model_tarball(_tar(bundle, tmp_path / "b.tar.gz"), max_read=LIMIT, label="b") is None


def test_a_path_that_is_both_a_file_and_a_folder_is_refused() -> None:
    with pytest.raises(ArtifactError, match="both a file and a folder"):
        ModelFiles.in_memory({"1": b"x", "1/m.py": b"y"}, "evil.tar.gz")
    with pytest.raises(ArtifactError, match="both a file and a folder"):
        ModelFiles.in_memory({"1/m.py": b"y", "1": b"x"}, "evil.tar.gz")


def _describe(artifact: str) -> bytes:
    return json.dumps({"artifact": artifact}).encode()


def test_an_artifact_alone_is_prepared_as_one_file(tmp_path: Path) -> None:
    d = _model(tmp_path)
    files = _in_memory(_tar(d, tmp_path / "m.tar.gz"))
    root, scratch = tmp_path / "root", tmp_path / "scratch"
    scratch.mkdir()
    (root / "m").mkdir(parents=True)  # a folder of an earlier preparation
    assert write_prepared(files, "1/m.py", _describe, root, "m", scratch) == "m.py"
    head, _, payload = (root / PREPARED / "m").read_bytes().partition(b"\n")
    assert json.loads(head) == {"artifact": "m.py"} and payload == (d / "1" / "m.py").read_bytes()
    assert sorted(os.listdir(root)) == [PREPARED] and list(scratch.iterdir()) == []  # renamed into place
    drop_prepared(root, "m")
    assert list((root / PREPARED).iterdir()) == []


def test_an_artifact_with_files_beside_it_keeps_a_folder(tmp_path: Path) -> None:
    d = _model(tmp_path)
    (d / "1" / "data").mkdir()
    (d / "1" / "data" / "w.bin").write_bytes(b"\1\2")  # e.g. an ONNX model's external data, found by path
    files = _in_memory(_tar(d, tmp_path / "m.tar.gz"))
    root, scratch = tmp_path / "root", tmp_path / "scratch"
    scratch.mkdir()
    (root / PREPARED).mkdir(parents=True)
    (root / PREPARED / "m").write_bytes(b"an earlier one-file preparation")
    assert write_prepared(files, "1/m.py", _describe, root, "m", scratch) == "m.py"
    dest = root / "m"
    got = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*"))
    assert got == ["data", "data/w.bin", "m.py", DESCRIPTOR]  # no config, no adapter model.py
    assert json.loads((dest / DESCRIPTOR).read_bytes()) == {"artifact": "m.py"}
    assert (dest / "m.py").read_bytes() == (d / "1" / "m.py").read_bytes()
    assert not (root / PREPARED / "m").exists() and list(scratch.iterdir()) == []
    (d / "1" / DESCRIPTOR).write_text("the model's own file")  # a name the descriptor would overwrite
    files = _in_memory(_tar(d, tmp_path / "clash.tar.gz"))
    assert write_prepared(files, "1/m.py", _describe, root, "m", scratch) == "1/m.py"
    assert (dest / "1" / DESCRIPTOR).read_text() == "the model's own file"
    assert json.loads((dest / DESCRIPTOR).read_bytes()) == {"artifact": "1/m.py"}
    drop_prepared(root, "m")
    assert not dest.exists()
