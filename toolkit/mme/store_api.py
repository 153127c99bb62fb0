"""What every artifact store provides, and the one rule that finds models among a store's files.

A store holds a model at its TargetModel path (``toolkit.names.target_path`` of the canonical name) as
``<path>.tar.gz``, ``<path>.tgz`` or a folder ``<path>/`` holding config.pbtxt, at any depth below the store's root
(SageMaker's TargetModel is a path relative to the endpoint's prefix). The local and the S3 store apply the same
rule through ``models_in``, so a listing means the same on both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from toolkit.names import ModelNameError, canonical_target, target_path

ProgressFn = Callable[[int, int], None]
"""``progress(bytes_done, bytes_total)``, called as a fetch advances (e.g. to draw a progress bar)."""

TAR_SUFFIXES = (".tar.gz", ".tgz")  # tried in this order, then the folder
CONFIG = "config.pbtxt"


@dataclass(frozen=True)
class FetchResult:
    """A model made ready on local disk."""

    path: Path  # dest_dir/<name>, holding config.pbtxt (named <name> inside)
    bytes_downloaded: int
    seconds: float
    version: str  # ETag-, version- or mtime-based; changes when the artifact changes


@runtime_checkable
class ArtifactStore(Protocol):
    """A source of model artifacts (``<path>.tar.gz``/``.tgz`` or a ``<path>/`` folder holding config.pbtxt)."""

    def list_models(self) -> list[str]: ...

    def exists(self, name: str) -> bool: ...

    def fetch(self, name: str, dest_dir: Path, progress: ProgressFn | None = None) -> FetchResult: ...


@runtime_checkable
class VersionedStore(ArtifactStore, Protocol):
    """A store that can say, cheaply (a HEAD, a stat), which version of an artifact it holds now: the disk cache
    revalidates a cached copy with it before serving it again (``FetchResult.version`` is the same string)."""

    def version(self, name: str) -> str: ...


def model_name_of(path: str) -> str | None:
    """The canonical name whose store path is ``path`` (suffix removed), or None when no model can live there: an
    invalid path, or one whose canonical name stands for another path (a flat ``a..b.tar.gz`` is the model ``a/b``)."""
    with contextlib.suppress(ModelNameError):
        name = canonical_target(path)
        if target_path(name) == path:
            return name
    return None


def models_in(files: Iterable[str]) -> list[str]:
    """Canonical names of the models among a store's files (posix paths relative to its root): every folder holding
    config.pbtxt (not inside another model's folder) and every ``.tar.gz``/``.tgz`` outside model folders."""
    files = list(files)
    folders = {f[: -len(CONFIG) - 1] for f in files if f.endswith("/" + CONFIG)}

    def inside_model(path: str) -> bool:
        parts = path.split("/")
        return any("/".join(parts[:i]) in folders for i in range(1, len(parts)))

    names: set[str] = set()
    for folder in folders:
        if not inside_model(folder):
            names.add(model_name_of(folder) or "")
    for f in files:
        for suffix in TAR_SUFFIXES:
            if f.endswith(suffix) and not inside_model(f):
                names.add(model_name_of(f[: -len(suffix)]) or "")
    names.discard("")
    return sorted(names)
