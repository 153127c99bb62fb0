"""A multiplexed model's files: what ``muxspec.read_artifact`` judges (``ModelFiles``: a folder on disk, or a tarball
read into memory) and what the host loads it from (``write_prepared``).

Why not extract the tarball: a host needs one file of a model (the artifact, beside the gateway's descriptor), while
an extraction writes every member (a marker, the config, the adapter's ``model.py``, the version folder) into a
temporary folder and then rewrites the config to the TargetModel's name (two protobuf parses and one more file), all
for a config whose name no one reads: the host is the model Triton loads. Each new file costs ~0.5 ms of CPU on the
benchmark's disk, so a renamed 2 KB model took ~6 ms to prepare; read in memory (checked by ``safe_tar``'s same rules)
and written as one file (the descriptor, then the artifact's bytes) it takes about a quarter of that.

Where: ``root/.prepared`` is, on Linux, a link to a folder of its own in ``/dev/shm`` (``place_prepared``): creating a
file on the benchmark's ext4 disk while Triton serves took 200-290 µs, on tmpfs ~6 µs (a cold preparation 1.3 ->
0.8 ms). That is memory, not disk, so the caller bounds it (``MuxModels``: ``SHM_BUDGET``) and writes the folder
layout on disk beyond; the folder is removed when the serving process closes, or by the next one if it was killed.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from toolkit.mme.footprint import pid_alive
from toolkit.mme.safe_tar import TMP_PREFIX, ArtifactError, install_dir

SHM = Path("/dev/shm")
SHM_PREFIX = "tritonctl-mux-"  # + pid + "-" + random: a killed run's folder is found by its pid (``_sweep``)
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
    files: ModelFiles,
    artifact: str,
    descriptor: Callable[[str], bytes],
    root: Path,
    name: str,
    scratch: Path,
    one_file: bool = True,
) -> tuple[str, int]:
    """Put in ``root`` what the host loads for ``name`` (``descriptor(path)`` gives the descriptor naming the
    artifact's path as the host finds it; returned, with the bytes written to ``root/.prepared``, 0 for none). An
    artifact alone in its version folder (besides the adapter's ``model.py``, which the host never runs) is one
    file, ``root/.prepared/<name>``: the descriptor's JSON line, then the artifact's bytes (one new file, not three),
    unless ``one_file`` is False. Otherwise ``root/<name>/``: the version folder's files at the top (an ONNX model's
    external data stays beside it) and ``mux.json``; a version folder that holds a file of that name keeps its own
    folder, so nothing is overwritten. Written under a temporary name (in ``.prepared``, or under ``scratch``) and
    renamed into place."""
    version = artifact.split("/", 1)[0]
    adapter = f"{version}/model.py"
    own = [rel for rel in files.entries if rel.startswith(version + "/") and (rel != adapter or rel == artifact)]
    if one_file and own == [artifact]:
        shutil.rmtree(root / name, ignore_errors=True)  # an earlier preparation's folder, left over: not kept
        served = artifact.rsplit("/", 1)[-1]
        head = descriptor(served)
        if b"\n" in head:
            raise ValueError("a descriptor is one line")
        data = head + b"\n" + files.read(artifact)
        _write_file(root / PREPARED / name, data)
        return served, len(data)
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
    return served, 0


def _write_file(target: Path, data: bytes) -> None:
    """``data`` at ``target``, whole or not at all: written beside it under a name no model has (``TMP_PREFIX``
    starts with "."), then renamed (the same filesystem, whether ``.prepared`` is on tmpfs or disk)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=TMP_PREFIX)
    except FileNotFoundError:  # no ``place_prepared`` (a caller of its own): a plain folder
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=TMP_PREFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def drop_prepared(root: Path, name: str) -> None:
    """Remove what ``write_prepared`` (or the general path) put in ``root`` for ``name``, in either layout."""
    (root / PREPARED / name).unlink(missing_ok=True)
    shutil.rmtree(root / name, ignore_errors=True)


def place_prepared(root: Path) -> Path | None:
    """Make ``root/.prepared`` (``root`` exists, without it): a link to a fresh folder in ``/dev/shm`` where that is a
    writable tmpfs folder (returned: the caller removes it when done), else a plain folder (None). Folders left in
    ``/dev/shm`` by runs that were killed (ours, their process gone) are removed first."""
    target = root / PREPARED
    shm = _shm_folder()
    if shm is not None:
        try:
            os.symlink(shm, target, target_is_directory=True)
            return shm
        except OSError:
            shutil.rmtree(shm, ignore_errors=True)
    target.mkdir()
    return None


def _shm_folder() -> Path | None:
    if not SHM.is_dir() or not os.access(SHM, os.W_OK | os.X_OK):
        return None
    _sweep()
    try:
        return Path(tempfile.mkdtemp(dir=SHM, prefix=f"{SHM_PREFIX}{os.getpid()}-"))
    except OSError:
        return None


def _sweep() -> None:
    try:
        entries = list(os.scandir(SHM))
    except OSError:
        return
    for entry in entries:
        pid = entry.name[len(SHM_PREFIX) :].split("-", 1)[0] if entry.name.startswith(SHM_PREFIX) else ""
        if not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        try:
            mine = entry.is_dir(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_uid == os.getuid()
        except OSError:
            continue
        if mine:
            shutil.rmtree(entry.path, ignore_errors=True)
