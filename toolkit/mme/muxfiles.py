"""A multiplexed model's files: what ``muxspec.read_artifact`` judges (``ModelFiles``: a folder on disk, or a tarball
read into memory) and what the host loads it from (``write_prepared``).

Why not extract the tarball: a host needs one file of a model (the artifact, beside the gateway's descriptor), while
an extraction writes every member (a marker, the config, the adapter's ``model.py``, the version folder) into a
temporary folder and then rewrites the config to the TargetModel's name (two protobuf parses and one more file), all
for a config whose name no one reads: the host is the model Triton loads. Each new file costs ~0.5 ms of CPU on the
benchmark's disk, so a renamed 2 KB model took ~6 ms to prepare; read in memory (checked by ``safe_tar``'s same rules)
and written as one file (the descriptor, then the artifact's bytes) it takes about a quarter of that.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from toolkit.mme.safe_tar import TMP_PREFIX, ArtifactError, install_dir

DESCRIPTOR = "mux.json"  # the gateway's word on the model, in its folder; the host reads nothing else of ours
PREPARED = ".prepared"  # root/.prepared/<name>: a model in one file (``write_prepared``); no model name starts with "."
FOLDER = -1  # ``ModelFiles.entries``' size of a folder


@dataclass(frozen=True)
class ModelFiles:
    """A model folder's entries (relative posix path -> size in bytes, ``FOLDER`` for a folder; symbolic links and
    other special files are left out, so they are never read nor copied) and how to read a listed regular file."""

    entries: Mapping[str, int]
    read: Callable[[str], bytes]

    @classmethod
    def on_disk(cls, folder: Path) -> ModelFiles:
        entries: dict[str, int] = {}
        for dirpath, dirs, files in os.walk(folder):
            rel = Path(dirpath).relative_to(folder).as_posix()
            prefix = "" if rel == "." else rel + "/"
            for d in dirs:
                if not os.path.islink(os.path.join(dirpath, d)):
                    entries[prefix + d] = FOLDER
            for f in files:
                st = os.lstat(os.path.join(dirpath, f))
                if stat.S_ISREG(st.st_mode):
                    entries[prefix + f] = st.st_size

        def read(rel: str) -> bytes:
            if entries.get(rel, FOLDER) == FOLDER:
                raise FileNotFoundError(f"{rel} is not a regular file in {folder}")
            return (folder / rel).read_bytes()

        return cls(entries, read)

    @classmethod
    def in_memory(cls, files: Mapping[str, bytes | None], label: str) -> ModelFiles:
        """From ``safe_tar.read_model_tarball`` (a folder there may be implied by the files in it)."""
        entries: dict[str, int] = {}
        for rel, data in files.items():
            parts = rel.split("/")
            for i in range(1, len(parts)):
                parent = "/".join(parts[:i])
                if entries.setdefault(parent, FOLDER) != FOLDER:
                    raise ArtifactError(f"{label}: {parent!r} is both a file and a folder")
            if data is None:
                if entries.setdefault(rel, FOLDER) != FOLDER:
                    raise ArtifactError(f"{label}: {rel!r} is both a file and a folder")
            elif entries.get(rel) == FOLDER:
                raise ArtifactError(f"{label}: {rel!r} is both a file and a folder")
            else:
                entries[rel] = len(data)

        def read(rel: str) -> bytes:
            data = files.get(rel)
            if data is None:
                raise FileNotFoundError(f"{rel} is not a regular file in {label}")
            return data

        return cls(entries, read)

    def is_file(self, rel: str) -> bool:
        return self.entries.get(rel, FOLDER) != FOLDER

    def versions(self) -> list[int]:
        return sorted(int(p) for p, size in self.entries.items() if size == FOLDER and p.isdigit())

    def bytes_under(self, folder: str) -> int:
        return sum(size for p, size in self.entries.items() if size != FOLDER and p.startswith(folder + "/"))


def write_prepared(
    files: ModelFiles, artifact: str, descriptor: Callable[[str], bytes], root: Path, name: str, scratch: Path
) -> str:
    """Put in ``root`` what the host loads for ``name`` (``descriptor(path)`` gives the descriptor naming the
    artifact's path as the host finds it; returned). An artifact alone in its version folder (besides the adapter's
    ``model.py``, which the host never runs) is one file, ``root/.prepared/<name>``: the descriptor's JSON line, then
    the artifact's bytes (one new file, not three). Otherwise ``root/<name>/``: the version folder's files at the top
    (an ONNX model's external data stays beside it) and ``mux.json``; a version folder that holds a file of that
    name keeps its own folder, so nothing is overwritten. Written under ``scratch`` and renamed into place."""
    version = artifact.split("/", 1)[0]
    adapter = f"{version}/model.py"
    own = [rel for rel in files.entries if rel.startswith(version + "/") and (rel != adapter or rel == artifact)]
    if own == [artifact]:
        shutil.rmtree(root / name, ignore_errors=True)  # an earlier preparation's folder, left over: not kept
        served = artifact.rsplit("/", 1)[-1]
        head = descriptor(served)
        if b"\n" in head:
            raise ValueError("a descriptor is one line")
        _write_file(root / PREPARED / name, head + b"\n" + files.read(artifact), scratch)
        return served
    (root / PREPARED / name).unlink(missing_ok=True)
    flat = not files.is_file(f"{version}/{DESCRIPTOR}")
    strip = len(version) + 1 if flat else 0
    tmp = Path(tempfile.mkdtemp(dir=scratch, prefix=f"{TMP_PREFIX}{name}-"))
    try:
        for rel in own:
            out = tmp / rel[strip:]
            if files.entries[rel] == FOLDER:
                out.mkdir(parents=True, exist_ok=True)
                continue
            if out.parent != tmp:  # a failed mkdir costs as much as one that creates
                out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(files.read(rel))
        served = artifact[strip:]
        (tmp / DESCRIPTOR).write_bytes(descriptor(served))
        install_dir(tmp, root / name, scratch=scratch)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return served


def _write_file(target: Path, data: bytes, scratch: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=scratch, prefix=TMP_PREFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        try:
            os.replace(tmp, target)
        except FileNotFoundError:  # the first one: its folder is made once
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def drop_prepared(root: Path, name: str) -> None:
    """Remove what ``write_prepared`` (or the general path) put in ``root`` for ``name``, in either layout."""
    (root / PREPARED / name).unlink(missing_ok=True)
    shutil.rmtree(root / name, ignore_errors=True)
