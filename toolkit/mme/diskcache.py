"""A bounded local cache of fetched model directories, with LRU deletion of whole entries.

This is the disk half of a multi-model endpoint (SageMaker: "if the instance's storage volume is full, unused
models are deleted"): models are fetched from an ``ArtifactStore`` into ``root/<name>/`` and, when the cache grows
past its capacity, the least recently used *unpinned* entries are deleted. The manager pins a model while Triton
has it loaded so its files are never removed under it.

The last-use time is the entry directory's mtime (touched on every use), so the LRU order survives a restart
without any index file; a restart re-scans ``root`` and removes temporary leftovers of an interrupted fetch.

**Versions.** Each entry remembers the version its store reported (an S3 ETag and VersionId, a local file's mtime
and size) in ``root/.tritonctl-versions/<name>``, so it survives a restart too. Before a cached entry is served
again, a store that can say its current version cheaply (``VersionedStore``: one HEAD on S3) is asked: a changed
artifact is fetched anew (``invalidations`` counts these), a deleted one is dropped and reported missing, and an
unreachable store serves the cached copy (logged) rather than failing a model it holds. An entry whose version is
unknown (a cache written by an older tritonctl) counts as changed. An entry pinned at that moment (being linked
into Triton's repository for another load) is served as it is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from toolkit.mme.safe_tar import TMP_PREFIX, ArtifactError, ArtifactNotFoundError, validate_model_name
from toolkit.mme.store_api import ArtifactStore, VersionedStore

log = logging.getLogger(__name__)
VERSIONS_DIR = ".tritonctl-versions"  # a name no model can have (models never start with '.')


class CacheFullError(ArtifactError):
    """A model cannot fit: it is bigger than the cache, or everything else is pinned."""


@dataclass(frozen=True)
class CacheEntry:
    name: str
    path: Path
    size_bytes: int
    last_used: float  # wall-clock seconds
    pinned: bool
    version: str | None  # None for entries found on disk at start-up


def _dir_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


class _Flight:
    """One fetch in progress: waiters block on ``done`` and share its ``error`` when it fails."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None


class DiskCache:
    """Thread-safe LRU cache of model directories under ``root`` with a byte capacity."""

    def __init__(self, root: Path | str, capacity_bytes: int) -> None:
        if capacity_bytes <= 0:
            raise ArtifactError(f"cache capacity must be positive, got {capacity_bytes}")
        self.root = Path(root)
        self.capacity_bytes = capacity_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._sizes: dict[str, int] = {}
        self._last_used: dict[str, float] = {}
        self._versions: dict[str, str | None] = {}
        self._pins: dict[str, int] = {}
        self._inflight: dict[str, _Flight] = {}
        self.evictions = 0
        self.invalidations = 0  # cached entries fetched anew because the store's artifact changed
        (self.root / VERSIONS_DIR).mkdir(exist_ok=True)
        self._scan()

    def _scan(self) -> None:
        for p in self.root.iterdir():
            if p.name.startswith(TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                continue
            if p.is_dir() and (p / "config.pbtxt").is_file():
                try:
                    validate_model_name(p.name)
                except ArtifactError:
                    continue
                self._sizes[p.name] = _dir_size(p)
                self._last_used[p.name] = p.stat().st_mtime
                self._versions[p.name] = self._read_version(p.name)

    def _read_version(self, name: str) -> str | None:
        try:
            return (self.root / VERSIONS_DIR / name).read_text().strip() or None
        except OSError:
            return None

    def _write_version(self, name: str, version: str | None) -> None:
        path = self.root / VERSIONS_DIR / name
        if version is None:
            path.unlink(missing_ok=True)
            return
        tmp = path.with_name(f"{TMP_PREFIX}{name}")
        tmp.write_text(version)
        os.replace(tmp, path)

    # --- queries -----------------------------------------------------------------------------------------------
    @property
    def bytes_used(self) -> int:
        with self._lock:
            return sum(self._sizes.values())

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._sizes

    def path(self, name: str) -> Path:
        return self.root / validate_model_name(name)

    def entries(self) -> list[CacheEntry]:
        """All entries, least recently used first."""
        with self._lock:
            return [
                CacheEntry(
                    n, self.root / n, self._sizes[n], self._last_used[n], self._pins.get(n, 0) > 0, self._versions[n]
                )
                for n in sorted(self._sizes, key=lambda n: self._last_used[n])
            ]

    # --- pinning -----------------------------------------------------------------------------------------------
    def pin(self, name: str) -> None:
        """Protect an entry from deletion (reference-counted: pin twice, unpin twice)."""
        with self._lock:
            if name not in self._sizes:
                raise ArtifactError(f"cannot pin {name!r}: it is not in the cache")
            self._pins[name] = self._pins.get(name, 0) + 1

    def unpin(self, name: str) -> None:
        with self._lock:
            count = self._pins.get(name, 0)
            if count <= 1:
                self._pins.pop(name, None)
            else:
                self._pins[name] = count - 1

    def is_pinned(self, name: str) -> bool:
        with self._lock:
            return self._pins.get(name, 0) > 0

    # --- use, fetch, delete ------------------------------------------------------------------------------------
    def _touch(self, name: str) -> None:
        now = time.time()
        # Strictly increasing, so two uses within the clock's resolution still keep their order.
        now = max(now, max(self._last_used.values(), default=0.0) + 1e-6)
        self._last_used[name] = now
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.root / name, (now, now))

    def get_or_fetch(self, name: str, store: ArtifactStore, *, pin: bool = False) -> Path:
        """Return ``root/<name>``, fetching it from ``store`` if absent and deleting LRU entries to make room.

        ``pin=True`` pins the entry before the lock is released, so it cannot be evicted between fetch and load.
        Concurrent calls for the same name share one fetch. A cached entry is revalidated first (module docstring).
        """
        validate_model_name(name)
        self._revalidate(name, store)
        while True:
            with self._lock:
                if name in self._sizes:
                    self._touch(name)
                    if pin:
                        self._pins[name] = self._pins.get(name, 0) + 1
                    return self.root / name
                flight = self._inflight.get(name)
                if flight is None:
                    flight = self._inflight[name] = _Flight()
                    break
            flight.done.wait()  # another thread is fetching it
            if flight.error is not None:
                raise flight.error  # its failure is ours too: one fetch per burst, failed or not
        try:
            result = store.fetch(name, self.root)
            size = _dir_size(result.path)
            with self._lock:
                self._sizes[name] = size
                self._versions[name] = result.version
                self._write_version(name, result.version)
                self._touch(name)
                if pin:
                    self._pins[name] = self._pins.get(name, 0) + 1
                try:
                    self._make_room(keep=name)
                except CacheFullError:
                    if pin:
                        self.unpin(name)
                    self._delete(name)
                    raise
            return self.root / name
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                self._inflight.pop(name).done.set()

    def _revalidate(self, name: str, store: ArtifactStore) -> None:
        """Drop a cached entry whose artifact changed (or vanished) in the store, so the fetch below gets the new one.
        A store that cannot say its version, or cannot be reached, leaves the entry as it is."""
        with self._lock:
            if name not in self._sizes or self._pins.get(name, 0) > 0 or name in self._inflight:
                return
            cached = self._versions.get(name)
        if not isinstance(store, VersionedStore):
            return
        try:
            current: str | None = store.version(name)
        except ArtifactNotFoundError:
            current = None  # gone from the store: not served from the cache either
        except ArtifactError as exc:
            log.warning("serving cached %s without revalidating it: %s", name, exc)
            return
        if current is not None and current == cached:
            return
        with self._lock:
            if name in self._sizes and self._pins.get(name, 0) == 0 and self._versions.get(name) == cached:
                log.info("artifact %s changed in %r (%s -> %s): fetching it anew", name, store, cached, current)
                self._delete(name)
                self.invalidations += 1

    def _make_room(self, keep: str) -> None:
        used = sum(self._sizes.values())
        if self._sizes[keep] > self.capacity_bytes:
            raise CacheFullError(
                f"model {keep!r} needs {self._sizes[keep]} bytes, more than the cache capacity {self.capacity_bytes}"
            )
        victims = sorted(
            (n for n in self._sizes if n != keep and self._pins.get(n, 0) == 0), key=lambda n: self._last_used[n]
        )
        for victim in victims:
            if used <= self.capacity_bytes:
                break
            used -= self._sizes[victim]
            self._delete(victim)
            self.evictions += 1
        if used > self.capacity_bytes:
            raise CacheFullError(
                f"cache full: {used} bytes needed for {keep!r} with capacity {self.capacity_bytes}; "
                f"pinned models: {sorted(n for n in self._pins if self._pins[n] > 0)}"
            )

    def _delete(self, name: str) -> None:
        # Rename first so a crash mid-delete leaves a TMP_PREFIX leftover (cleaned on start), never a half model.
        path = self.root / name
        self._sizes.pop(name, None)
        self._last_used.pop(name, None)
        self._versions.pop(name, None)
        self._write_version(name, None)
        if path.exists():
            aside = Path(tempfile.mkdtemp(dir=self.root, prefix=f"{TMP_PREFIX}del-"))
            os.replace(path, aside / name)
            shutil.rmtree(aside, ignore_errors=True)

    def evict(self, name: str) -> bool:
        """Delete one entry now; refuses pinned entries. Returns False when it was not cached."""
        with self._lock:
            if name not in self._sizes:
                return False
            if self._pins.get(name, 0) > 0:
                raise ArtifactError(f"cannot delete {name!r} from the cache: it is pinned (loaded)")
            self._delete(name)
            return True
