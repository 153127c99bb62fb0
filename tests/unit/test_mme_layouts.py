"""What an MME artifact may look like, and how it becomes the model its TargetModel names (no Triton: files only).

Layouts: config.pbtxt at the top, or a single top-level folder of any name; .tar.gz or .tgz; version folders; macOS
litter ignored. The local copy's config takes the TargetModel's name; the store's artifact is never touched. Every
refusal is one line naming the artifact and what to change. The listing rule and the disk cache's revalidation are
here too; the same over S3 and through a real Triton is tests/integration/test_mme_artifacts.py.
"""

from __future__ import annotations

import io
import os
import tarfile
import time
from pathlib import Path

import pytest

from toolkit.mme.diskcache import DiskCache
from toolkit.mme.layout import adopt_name, is_junk, model_root
from toolkit.mme.safe_tar import ArtifactError, ArtifactNotFoundError, extract_model_tarball
from toolkit.mme.store_api import models_in
from toolkit.mme.stores import LocalStore
from toolkit.repository.config import parse_config

CONFIG = 'name: "%s"\nbackend: "python"\nmax_batch_size: 0\n'
MODEL_PY = b"class TritonPythonModel:\n    pass\n"


def tar(path: Path, files: dict[str, bytes | str]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            raw = data.encode() if isinstance(data, str) else data
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tf.addfile(info, io.BytesIO(raw))
    return path


def model_files(config_name: str, prefix: str = "", versions: tuple[int, ...] = (1,)) -> dict[str, bytes | str]:
    files: dict[str, bytes | str] = {f"{prefix}config.pbtxt": CONFIG % config_name}
    files.update({f"{prefix}{v}/model.py": MODEL_PY for v in versions})
    return files


def name_in(model_dir: Path) -> str:
    return parse_config((model_dir / "config.pbtxt").read_text()).name


# --- layouts ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("artifact", "files"),
    [
        ("NY_0.tar.gz", model_files("housing_NewYork_NY", "housing_NewYork_NY/")),  # a renamed copy (seed 003)
        ("resnet_pt_v0.tar.gz", model_files("resnet", "resnet/")),  # AWS's samples: folder named otherwise
        ("flat.tar.gz", model_files("something_else")),  # config.pbtxt at the top
        ("dot.tgz", model_files("dot", "./")),  # ./-prefixed members, .tgz
        ("versions.tar.gz", model_files("v", "v/", versions=(1, 2, 10))),
        ("mac.tar.gz", {**model_files("m", "m/"), "._m": b"x", "__MACOSX/m/._config.pbtxt": b"x", ".DS_Store": b""}),
    ],
)
def test_accepted_layouts_take_the_target_models_name(tmp_path: Path, artifact: str, files: dict) -> None:
    src = tar(tmp_path / artifact, files)
    before = src.read_bytes()
    name = artifact.split(".")[0]
    path = extract_model_tarball(src, tmp_path / "repo", name=name)
    assert path == tmp_path / "repo" / name and name_in(path) == name
    assert (path / "1" / "model.py").read_bytes() == MODEL_PY
    assert not any(is_junk(p.relative_to(path).parts) for p in path.rglob("*"))
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == [name]  # nothing else, no temporary leftovers
    assert src.read_bytes() == before  # the artifact itself is never modified


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"1/model.py": MODEL_PY}, r"no config\.pbtxt in the archive; .* add it"),
        ({**model_files("a", "a/"), **model_files("b", "b/")}, r"holds 2 model folders \(a/, b/\); one artifact"),
        (model_files("m", "outer/m/"), r"outer/m/config\.pbtxt, too deep; pack that folder \(outer/m/\)"),
        ({**model_files("m", "m/"), "README.md": "hi", "docs/x": "y"}, r"has company at the top level \(README\.md, "),
        ({}, r"archive is empty"),
    ],
)
def test_refusals_are_one_line_naming_the_artifact(tmp_path: Path, files: dict, message: str) -> None:
    src = tar(tmp_path / "bad.tar.gz", files)
    dest = tmp_path / "repo"
    with pytest.raises(ArtifactError, match=message) as err:
        extract_model_tarball(src, dest, name="bad")
    assert "bad.tar.gz" in str(err.value) and "\n" not in str(err.value)
    assert not dest.exists() or list(dest.iterdir()) == []


def test_model_root_rule() -> None:
    assert model_root({("config.pbtxt",): True, ("1", "model.py"): True}, "x") == ()
    assert model_root({("any name",): False, ("any name", "config.pbtxt"): True}, "x") == ("any name",)
    with pytest.raises(Exception, match="no config"):
        model_root({("config.pbtxt",): False, ("config.pbtxt", "x"): True}, "x")  # a folder called config.pbtxt


# --- the config's name -----------------------------------------------------------------------------------------------


def test_adopt_name_rewrites_only_a_differing_name(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    cfg = d / "config.pbtxt"
    cfg.write_text('# comment kept when nothing changes\nname: "m"\nbackend: "python"\n')
    assert adopt_name(d, "m", "artifact 'm'") is None and "# comment" in cfg.read_text()
    cfg.write_text('backend: "python"\n')  # no name: Triton takes the folder's
    assert adopt_name(d, "m", "artifact 'm'") is None and cfg.read_text() == 'backend: "python"\n'
    cfg.write_text('name: "old"\nbackend: "python"\ninput [{ name: "X" data_type: TYPE_FP32 dims: [2] }]\n')
    linked = tmp_path / "elsewhere.pbtxt"
    os.link(cfg, linked)  # a hard link (as the cache's copy in Triton's repository) must not see the rewrite
    assert adopt_name(d, "m", "artifact 'm'") == "old"
    parsed = parse_config(cfg.read_text())
    assert parsed.name == "m" and parsed.input[0].name == "X"  # only the name changed
    assert "max_batch_size" not in cfg.read_text()  # left out before, left out after
    assert 'name: "old"' in linked.read_text()


def test_adopt_name_refusals(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.pbtxt").write_text('name: "old"\nbackend: "python"\nnot_a_field: 1\n')
    with pytest.raises(Exception, match=r"cannot be renamed to 'm' .* set name: \"m\" in the artifact"):
        adopt_name(d, "m", "artifact 'm.tar.gz'")
    (d / "config.pbtxt").write_text('name: "m"\nbackend: "python"\nnot_a_field: 1\n')
    assert adopt_name(d, "m", "artifact 'm.tar.gz'") is None  # already right: left for Triton to judge
    (d / "config.pbtxt").write_text("name: {{{")
    with pytest.raises(Exception, match=r"artifact 'm.tar.gz': config.pbtxt is not a Triton model configuration"):
        adopt_name(d, "m", "artifact 'm.tar.gz'")


# --- listing ---------------------------------------------------------------------------------------------------------


def test_models_in_a_store_listing() -> None:
    files = [
        "flat.tar.gz",
        "other.tgz",
        "team-a/cities/Chicago_IL.tar.gz",
        "team-a/folder_model/config.pbtxt",
        "team-a/folder_model/1/model.py",
        "team-a/folder_model/1/weights.tar.gz",  # inside a model folder: part of that model
        "a..b.tar.gz",  # a flat name with '..' stands for a/b: not this file
        "bad name.tar.gz",
        "notes/readme.txt",
    ]
    assert models_in(files) == ["flat", "other", "team-a..cities..Chicago_IL", "team-a..folder_model"]


def test_local_store_nested_paths(tmp_path: Path) -> None:
    root = tmp_path / "store"
    (root / "team-a" / "cities").mkdir(parents=True)
    tar(root / "team-a" / "cities" / "Chicago_IL.tar.gz", model_files("housing_Chicago_IL", "housing_Chicago_IL/"))
    folder = root / "team-b" / "copy"
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(CONFIG % "original")
    (folder / "1" / "model.py").write_bytes(MODEL_PY)
    store = LocalStore(root)
    assert store.list_models() == ["team-a..cities..Chicago_IL", "team-b..copy"]
    got = store.fetch("team-a..cities..Chicago_IL", tmp_path / "repo")
    assert got.path.name == "team-a..cities..Chicago_IL" and name_in(got.path) == "team-a..cities..Chicago_IL"
    got = store.fetch("team-b..copy", tmp_path / "repo")
    assert name_in(got.path) == "team-b..copy" and name_in(folder) == "original"  # the store's copy is untouched
    tar(root / "team-b" / "copy.tgz", model_files("x"))
    with pytest.raises(ArtifactError, match=r"both team-b/copy\.tgz and team-b/copy/ exist; remove one"):
        store.fetch("team-b..copy", tmp_path / "repo")
    outside = tmp_path / "outside"
    outside.mkdir()
    tar(outside / "m.tar.gz", model_files("m"))
    (root / "linked").symlink_to(outside)
    with pytest.raises(ArtifactError, match="leads out of the store through a symbolic link"):
        store.exists("linked..m")
    assert "linked..m" not in store.list_models()
    with pytest.raises(ArtifactNotFoundError, match=r"expected team-c/x\.tar\.gz, team-c/x\.tgz or team-c/x/"):
        store.fetch("team-c..x", tmp_path / "repo")


# --- disk cache: versions ----------------------------------------------------------------------------------------


def test_disk_cache_refetches_a_changed_artifact_and_remembers_versions(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    art = tar(root / "m.tar.gz", model_files("m"))
    store = LocalStore(root)
    cache = DiskCache(tmp_path / "cache", capacity_bytes=10**6)
    first = cache.get_or_fetch("m", store)
    assert cache.invalidations == 0 and cache.entries()[0].version == store.version("m")
    assert cache.get_or_fetch("m", store) == first and cache.invalidations == 0  # unchanged: a hit
    again = DiskCache(tmp_path / "cache", capacity_bytes=10**6)  # a restart keeps the version
    assert again.entries()[0].version == store.version("m")
    again.get_or_fetch("m", store)
    assert again.invalidations == 0
    time.sleep(0.01)
    tar(art, {**model_files("m"), "1/weights.bin": b"\1" * 100})  # the artifact changes in the store
    path = again.get_or_fetch("m", store)
    assert again.invalidations == 1 and (path / "1" / "weights.bin").stat().st_size == 100
    art.unlink()  # and then disappears: not served from the cache either
    with pytest.raises(ArtifactNotFoundError):
        again.get_or_fetch("m", store)
    assert "m" not in again


def test_names_no_target_model_maps_to_are_not_found(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    tar(tmp_path / "store" / "a..b.tar.gz", model_files("x"))  # a flat file named like a nested model: not one
    store = LocalStore(tmp_path / "store")
    assert store.list_models() == [] and not store.exists("a..b") and not store.exists("a...b")
    with pytest.raises(ArtifactNotFoundError, match=r"expected a/b\.tar\.gz"):
        store.fetch("a..b", tmp_path / "repo")
    with pytest.raises(ArtifactNotFoundError, match="no artifact can stand for this name"):
        store.fetch("a...b", tmp_path / "repo")
