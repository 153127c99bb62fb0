"""Where multi-model-endpoint artifacts live: a local folder or an S3 bucket, behind one small protocol.

The MME manager only needs "which models exist", "is this one there" and "put a ready model directory here";
keeping that behind ``ArtifactStore`` (``toolkit.mme.store_api``) lets the manager, the disk cache and the tests treat
both stores alike. A model is found at its TargetModel path (``team-a/cities/Chicago_IL.tar.gz`` for the canonical
name ``team-a..cities..Chicago_IL``), whatever the archive's folder or its config call it: the fetched copy is named
after the TargetModel (``toolkit.mme.layout``). Every failure (missing key, access denied, bucket unreachable)
becomes an ``ArtifactError`` with a clear message; a missing model is the subclass ``ArtifactNotFoundError``, so
callers can tell it apart by type. The S3 store lives in ``toolkit.mme.s3store`` and is re-exported here.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from toolkit.mme.s3store import S3Store
from toolkit.mme.safe_tar import (
    TMP_PREFIX,
    ArtifactError,
    ArtifactNotFoundError,
    adopt_config_name,
    artifact_path,
    extract_model_tarball,
    install_dir,
)
from toolkit.mme.store_api import CONFIG, TAR_SUFFIXES, ArtifactStore, FetchResult, ProgressFn, models_in

__all__ = ["ArtifactStore", "FetchResult", "LocalStore", "ProgressFn", "S3Store", "open_store"]


def _dir_has_links(root: Path) -> Path | None:
    for p in root.rglob("*"):
        if p.is_symlink():
            return p
    return None


class LocalStore:
    """Artifacts in a local folder: ``root/<path>.tar.gz``, ``root/<path>.tgz`` or ``root/<path>/config.pbtxt``.

    Directories are copied (never moved or linked) so the cache can delete its copy without touching the source.
    A model whose path leads through a symbolic link out of ``root`` is refused.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ArtifactError(f"artifact store {self.root} is not a directory")
        # Resolved once: every look-up compares a found path's real location with it (a multiplexed model's cold
        # request looks its tarball up first, so the look-up is plain os calls on strings: ~3 stats and a realpath)
        self._base = str(self.root)
        self._real = os.path.join(os.path.realpath(self._base), "")  # with its separator: "/a/b/" ("/" for /)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _locate(self, name: str) -> Path | None:
        path = artifact_path(name)
        base = f"{self._base}/{path}"
        found = [base + s for s in TAR_SUFFIXES if os.path.isfile(base + s)]
        if os.path.isfile(f"{base}/{CONFIG}"):
            found.append(base)
        if len(found) > 1:
            shown = " and ".join(os.path.relpath(p, self._base) + ("/" if p == base else "") for p in found)
            raise ArtifactError(f"{self!r}: both {shown} exist; remove one so the model is unambiguous")
        if found and not os.path.realpath(found[0]).startswith(self._real):
            raise ArtifactError(f"{self!r}: {path} leads out of the store through a symbolic link")
        return Path(found[0]) if found else None

    def list_models(self) -> list[str]:
        files: list[str] = []
        for dirpath, dirs, names in os.walk(self.root):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            prefix = "" if rel == "." else rel + "/"
            if prefix and CONFIG in names:
                files.append(prefix + CONFIG)
                dirs.clear()  # a model folder: what is inside belongs to the model
                continue
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            files.extend(prefix + n for n in names if n.endswith(TAR_SUFFIXES))
        return models_in(files)

    def exists(self, name: str) -> bool:
        try:
            return self._locate(name) is not None
        except ArtifactNotFoundError:  # a name no TargetModel maps to
            return False

    def version(self, name: str) -> str:
        """A string that changes whenever the artifact changes (mtime + size based)."""
        src = self._locate(name)
        if src is None:
            raise ArtifactNotFoundError(f"model {name!r} not found in {self!r}")
        files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
        h = hashlib.sha1()
        for f in files:
            st = f.stat()
            h.update(f"{f.relative_to(self.root)}:{st.st_mtime_ns}:{st.st_size};".encode())
        return h.hexdigest()[:16]

    def _found(self, name: str) -> Path:
        src = self._locate(name)
        if src is None:
            where = artifact_path(name)
            raise ArtifactNotFoundError(
                f"model {name!r} not found in {self!r} (expected {where}.tar.gz, {where}.tgz or {where}/{CONFIG})"
            )
        return src

    def tarball(self, name: str) -> Path | None:
        """The artifact's file when it is a tarball (None for a folder; ``ArtifactNotFoundError`` for none), found
        and checked as ``fetch`` finds it: for a reader that needs a few small files without extracting them
        (``safe_tar.read_model_tarball``)."""
        src = self._found(name)
        return src if src.is_file() else None

    def fetch(self, name: str, dest_dir: Path, progress: ProgressFn | None = None) -> FetchResult:
        start = time.monotonic()
        src = self._found(name)
        version = self.version(name)
        dest_dir = Path(dest_dir)
        dest_dir.mkdir(parents=True, exist_ok=True)
        label = f"artifact {str(src.relative_to(self.root)) + ('' if src.is_file() else '/')!r} in {self!r}"
        if src.is_file():
            total = src.stat().st_size
            if progress:
                progress(0, total)
            path = extract_model_tarball(src, dest_dir, name=name, label=label)
            if progress:
                progress(total, total)
            return FetchResult(path, total, time.monotonic() - start, version)
        link = _dir_has_links(src)
        if link is not None:
            raise ArtifactError(f"{self!r}: {link} is a symbolic link; links are not allowed in model artifacts")
        files = [p for p in src.rglob("*") if p.is_file()]
        total = sum(p.stat().st_size for p in files)
        tmp = Path(tempfile.mkdtemp(dir=dest_dir, prefix=f"{TMP_PREFIX}{name}-"))
        try:
            done = 0
            if progress:
                progress(0, total)
            for f in files:
                out = tmp / f.relative_to(src)
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, out)
                done += f.stat().st_size
                if progress:
                    progress(done, total)
            adopt_config_name(tmp, name, label)
            install_dir(tmp, dest_dir / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return FetchResult(dest_dir / name, total, time.monotonic() - start, version)


def open_store(uri: str, **kw: Any) -> ArtifactStore:
    """``s3://bucket/prefix`` -> ``S3Store``; ``file:///path`` or a plain path -> ``LocalStore``."""
    kw = {k: v for k, v in kw.items() if v is not None}  # lets a CLI pass endpoint_url=None unconditionally
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        if not bucket:
            raise ArtifactError(f"store URI {uri!r} has no bucket (expected s3://bucket/prefix)")
        return S3Store(bucket, prefix, **kw)
    if "://" in uri and not uri.startswith("file://"):
        raise ArtifactError(f"store URI {uri!r}: only s3:// and local paths are supported")
    if kw:
        raise ArtifactError(f"options {sorted(kw)} only apply to s3:// stores")
    return LocalStore(Path(uri.removeprefix("file://")))
