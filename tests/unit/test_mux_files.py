"""A multiplexed model's files without extraction (``toolkit.mme.muxfiles``): a tarball read in memory is judged
exactly as the same model's folder on disk, refused where extraction refuses, and written as only what the host
loads, atomically."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolkit.mme import muxfiles
from toolkit.mme.muxfiles import (
    DESCRIPTOR,
    FOLDER,
    PREPARED,
    ModelFiles,
    drop_prepared,
    place_prepared,
    write_prepared,
)
from toolkit.mme.muxspec import ADAPTER, read_artifact
from toolkit.mme.safe_tar import IN_MEMORY_BYTES, ArtifactError, _inflate_small, read_model_tarball
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
    served, written = write_prepared(files, "1/m.py", _describe, root, "m", scratch)
    data = (root / PREPARED / "m").read_bytes()
    head, _, payload = data.partition(b"\n")
    assert served == "m.py" and written == len(data)
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
    assert write_prepared(files, "1/m.py", _describe, root, "m", scratch) == ("m.py", 0)
    dest = root / "m"
    got = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*"))
    assert got == ["data", "data/w.bin", "m.py", DESCRIPTOR]  # no config, no adapter model.py
    assert json.loads((dest / DESCRIPTOR).read_bytes()) == {"artifact": "m.py"}
    assert (dest / "m.py").read_bytes() == (d / "1" / "m.py").read_bytes()
    assert not (root / PREPARED / "m").exists() and list(scratch.iterdir()) == []
    (d / "1" / DESCRIPTOR).write_text("the model's own file")  # a name the descriptor would overwrite
    files = _in_memory(_tar(d, tmp_path / "clash.tar.gz"))
    assert write_prepared(files, "1/m.py", _describe, root, "m", scratch) == ("1/m.py", 0)
    assert (dest / "1" / DESCRIPTOR).read_text() == "the model's own file"
    assert json.loads((dest / DESCRIPTOR).read_bytes()) == {"artifact": "1/m.py"}
    drop_prepared(root, "m")
    assert not dest.exists()


def test_one_file_false_writes_the_folder_layout(tmp_path: Path) -> None:
    """The caller's tmpfs budget is spent: the same artifact as a folder on disk, and no one-file copy left."""
    d = _model(tmp_path)
    files = _in_memory(_tar(d, tmp_path / "m.tar.gz"))
    root, scratch = tmp_path / "root", tmp_path / "scratch"
    scratch.mkdir()
    assert write_prepared(files, "1/m.py", _describe, root, "m", scratch)[1] > 0
    assert write_prepared(files, "1/m.py", _describe, root, "m", scratch, one_file=False) == ("m.py", 0)
    assert not (root / PREPARED / "m").exists()
    assert sorted(os.listdir(root / "m")) == sorted([DESCRIPTOR, "m.py"])


def test_prepared_lives_in_dev_shm_and_killed_runs_are_swept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shm = tmp_path / "shm"
    shm.mkdir()
    monkeypatch.setattr(muxfiles, "SHM", shm)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = shm / f"{muxfiles.SHM_PREFIX}{dead.pid}-abc"  # a killed run's folder: its process is gone
    alive = shm / f"{muxfiles.SHM_PREFIX}{os.getppid()}-abc"  # a live process's: kept
    other = shm / "someone-else"
    for folder in (left, alive, other):
        (folder / "x").mkdir(parents=True)
    root = tmp_path / "root"
    root.mkdir()
    placed = place_prepared(root)
    assert (
        placed is not None and placed.parent == shm and placed.name.startswith(f"{muxfiles.SHM_PREFIX}{os.getpid()}-")
    )
    assert (root / PREPARED).is_symlink() and (root / PREPARED).resolve() == placed.resolve()
    assert not left.exists() and alive.exists() and other.exists()
    files = _in_memory(_tar(_model(tmp_path), tmp_path / "m.tar.gz"))
    write_prepared(files, "1/m.py", _describe, root, "m", tmp_path)
    assert sorted(os.listdir(placed)) == ["m"]  # the file, and no temporary one, is on the tmpfs side
    monkeypatch.setattr(muxfiles, "SHM", tmp_path / "absent")
    root2 = tmp_path / "root2"
    root2.mkdir()
    assert place_prepared(root2) is None and (root2 / PREPARED).is_dir() and not (root2 / PREPARED).is_symlink()


# -- the in-memory inflate (safe_tar._inflate_small) against tarfile's stream: same members, same refusals ------------
_MEMBER_NAMES = st.sampled_from(
    [
        "config.pbtxt",
        "1/model.py",
        "1/m.py",
        "1",
        "top/config.pbtxt",
        "top/1/m.py",
        "./1/x.bin",
        "/etc/passwd",
        "../evil",
        "1/../../evil",
        "C:/evil",
        "._config.pbtxt",
        "__MACOSX/1/m.py",
        "1/model.py",  # a duplicate
    ]
)
_KINDS = st.sampled_from([tarfile.REGTYPE, tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, b"3"])
_MEMBERS = st.lists(st.tuples(_MEMBER_NAMES, _KINDS, st.binary(max_size=300)), max_size=8)
_DAMAGE = st.sampled_from(
    ["none", "truncate", "no_trailer", "flip", "trailing", "two_members", "plain_tar", "garbage_tar"]
)


def _archive(members: list[tuple[str, bytes, bytes]], damage: str, cut: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.REGTYPE:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                info.linkname = "config.pbtxt" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
                tf.addfile(info)
    tar = buf.getvalue()
    if damage == "plain_tar":
        return tar
    if damage == "garbage_tar":
        return gzip.compress(tar[:cut] + b"\x07" * 512 + tar[cut:])
    gz = gzip.compress(tar)
    if damage == "truncate":
        return gz[: cut % max(len(gz), 1)]
    if damage == "no_trailer":  # every byte of the tar is there, its CRC and length are not
        return gz[: -1 - cut % 8]
    if damage == "flip":
        i = cut % len(gz)
        return gz[:i] + bytes([gz[i] ^ 0x5A]) + gz[i + 1 :]
    if damage == "trailing":
        return gz + b"junk"
    if damage == "two_members":
        return gz + gzip.compress(tar)
    return gz


def _outcome(path: Path, in_memory: int, max_read: int, max_bytes: int, max_files: int) -> object:
    try:
        return read_model_tarball(
            path, max_read=max_read, label="a", max_bytes=max_bytes, max_files=max_files, in_memory=in_memory
        )
    except ArtifactError as exc:
        text = str(exc)  # a refusal of a member, word for word; an unreadable archive: tarfile's words may differ
        return ArtifactError, text if text.startswith("a: ") else text.split(":", 1)[0]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    members=_MEMBERS,
    damage=_DAMAGE,
    cut=st.integers(min_value=0, max_value=4096),
    max_read=st.sampled_from([0, 200, LIMIT]),
    max_bytes=st.sampled_from([250, 10_000]),
    max_files=st.sampled_from([3, 100]),
    in_memory=st.sampled_from([600, IN_MEMORY_BYTES]),
)
def test_an_archive_inflated_in_memory_reads_as_the_stream_reads_it(
    tmp_path: Path,
    members: list[tuple[str, bytes, bytes]],
    damage: str,
    cut: int,
    max_read: int,
    max_bytes: int,
    max_files: int,
    in_memory: int,
) -> None:
    """Only the bytes' source differs (one C inflate, or tarfile's gzip stream): the members, the limits and every
    refusal are ``_scan``'s either way; what the in-memory inflate cannot take whole goes to the stream."""
    path = tmp_path / "a.tar.gz"
    path.write_bytes(_archive(members, damage, cut))
    fast = _outcome(path, in_memory, max_read, max_bytes, max_files)
    slow = _outcome(path, 0, max_read, max_bytes, max_files)
    assert fast == slow


def test_only_a_small_whole_gzip_is_inflated_in_memory(tmp_path: Path) -> None:
    """The in-memory path is taken (the check above would pass trivially if it never were), and only where it may."""
    tar = _tar(_model(tmp_path), tmp_path / "m.tar.gz")
    raw = tar.read_bytes()
    inflated = _inflate_small(tar, IN_MEMORY_BYTES)
    assert inflated is not None and inflated.getvalue() == gzip.decompress(raw)
    assert _inflate_small(tar, len(gzip.decompress(raw)) - 1) is None  # inflates past the limit
    assert _inflate_small(tar, 0) is None
    for name, data in [("cut", raw[:-9]), ("two", raw + raw), ("tail", raw + b"x"), ("tar", gzip.decompress(raw))]:
        other = tmp_path / f"{name}.tar.gz"
        other.write_bytes(data)
        assert _inflate_small(other, IN_MEMORY_BYTES) is None, name
