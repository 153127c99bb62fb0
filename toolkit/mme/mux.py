"""Multiplexed hosting: small models served inside a shared model host instead of one python stub each.

Why: a python-backend model costs a stub process (~47 MB, ~175 ms to load); a 1 KB regression loaded in-process costs
a few KB and about a millisecond. ``MuxModels`` is the gateway's model provider (``toolkit.gateway.models``) over the
MME ``ModelManager``: a name it multiplexes is prepared once into ``mux_root`` (a local store's tarball read in
memory and only what the host loads written, ``toolkit.mme.muxfiles``, on the event loop when small; else fetched
from the store or disk cache, or linked from the repository; checked by ``muxspec.read_artifact`` either way) and
routed to the host of its signature; every other name, and every artifact the host cannot serve, goes to the
manager exactly as before.

Security: admission authorizes the canonical model name before anything here runs; ``mux_route`` then tells the
gateway which host to send the request to, and the gateway sets the host's ``tritonctl_mux_model`` parameter to that
name, over anything the client sent. No client can name a host (``knows`` is False, ``try_serve``/``serve`` refuse),
so the parameter is only ever set by the gateway. Over gRPC the same name is set by fields appended to the forwarded
message (``toolkit.gateway.h2_mux``); streams and compressed messages are refused for such a model
(``toolkit.gateway.h2_policy``).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.mme._loading import link_tree
from toolkit.mme.errors import ArtifactFetchError, ModelNotFoundError
from toolkit.mme.manager import ModelManager, pinned
from toolkit.mme.metrics import exposition
from toolkit.mme.muxfiles import DESCRIPTOR, ModelFiles, drop_prepared, place_prepared, write_prepared
from toolkit.mme.muxspec import HostSettings, MuxArtifact, is_host, mux_root, read_artifact, write_host
from toolkit.mme.muxstats import HostStats
from toolkit.mme.safe_tar import ArtifactError, ArtifactNotFoundError, install_dir, read_model_tarball
from toolkit.mme.stores import LocalStore

if TYPE_CHECKING:
    from prometheus_client.core import Metric

log = logging.getLogger(__name__)

SHM_BUDGET = 256 << 20  # one-file preparations kept in /dev/shm (memory) at most, and half its free space; then disk
_PAGE = 4096
INLINE_BYTES = 64 << 10  # a local tarball this small is prepared on the event loop (``MuxModels._prepare_inline``)

__all__ = ["MuxModels"]


def _host_refused(name: str) -> ModelNotFoundError:
    return ModelNotFoundError(name, "a model host is reached through the models it serves, never by its own name")


class MuxModels:
    """A ``ModelProvider``: multiplexed names through a host, the others through ``inner``."""

    def __init__(
        self,
        inner: ModelManager,
        multiplexed: Callable[[str], bool],
        settings: HostSettings | None = None,
    ) -> None:
        self.inner = inner
        self.multiplexed = multiplexed
        self.settings = settings or HostSettings()
        self.repository = inner.repository
        self.root = mux_root(inner.repository)
        self.scratch = self.root / ".scratch"
        self.stats = HostStats(self.root, inner.metrics)
        self._routes: dict[str, str] = {}  # model -> its host
        self._plain: set[str] = set()  # checked: served per process
        self._hosts: dict[str, str] = {}  # signature -> host written in this run
        self._host_lock = threading.Lock()
        self._flights: dict[str, asyncio.Future[str | None]] = {}
        self._shm: Path | None = None  # ``.prepared``'s tmpfs folder (``place_prepared``), None: on disk
        self._one_file: dict[str, int] = {}  # name -> bytes of its one-file preparation
        self._one_file_bytes = 0
        self._shm_budget = SHM_BUDGET
        self._tasks: set[asyncio.Task[None]] = set()

    def __getattr__(self, attr: str) -> Any:
        """Everything else (``store``, ``metrics``, ``gpu``, ``stub_failed`` ...) is the manager's."""
        return getattr(self.inner, attr)

    # -- lifecycle -----------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start empty: files prepared by an earlier run may be of artifacts changed since, so they are removed."""
        shutil.rmtree(self.root, ignore_errors=True)
        self.scratch.mkdir(parents=True)
        self._shm = place_prepared(self.root)
        if self._shm is not None:  # at most half of what the tmpfs has free now (a container's /dev/shm is 64 MB)
            st = os.statvfs(self._shm)
            self._shm_budget = min(SHM_BUDGET, st.f_bavail * st.f_frsize // 2)
        await self.inner.start()

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await self.inner.close()
        if self._shm is not None:
            shutil.rmtree(self._shm, ignore_errors=True)

    def on_triton_restart(self) -> None:
        self.inner.on_triton_restart()  # hosts come back empty; their models reload lazily on the next request

    def on_triton_down(self) -> None:
        self.inner.on_triton_down()

    # -- routing -------------------------------------------------------------------------------------------------------
    def mux_route(self, name: str) -> str | None:
        """The host that serves ``name`` (None: not multiplexed, or not prepared yet). The gateway calls this after
        admission to rewrite the request; a synchronous dict look-up."""
        return self._routes.get(name)

    def hides(self, name: str) -> bool:
        """A host's own name: admission answers 404 for it even where it loads nothing (readiness, statistics)."""
        return is_host(name)

    def knows(self, name: str) -> bool:
        return not is_host(name) and self.inner.knows(name)

    def is_resident(self, name: str) -> bool:
        if is_host(name):
            return False
        if name in self._routes:
            return self.stats.holds(name)
        return self.inner.is_resident(name)

    def try_serve(self, name: str) -> Callable[[], None] | None:
        """The gateway's synchronous hot path. None for a multiplexed name (its request is rewritten on the handler
        path) and for a host's own name (refused there); else the manager's answer."""
        if name in self._routes or is_host(name):
            return None
        return self.inner.try_serve(name)

    async def serve(self, name: str, timeout: float | None = None) -> Callable[[], None]:
        if is_host(name):
            raise _host_refused(name)
        host = await self._route(name)
        if host is None:
            return await self.inner.serve(name, timeout)
        return await self.inner.hold(host, timeout)

    async def ensure_loaded(self, name: str, timeout: float | None = None) -> None:
        if is_host(name):
            raise _host_refused(name)
        host = await self._route(name)
        await self.inner.ensure_loaded(host or name, timeout)

    def serving(self, name: str, timeout: float | None = None) -> AbstractAsyncContextManager[None]:
        return pinned(self.serve, name, timeout)

    async def unload(self, name: str) -> None:
        """A multiplexed model: its prepared files are dropped (the host keeps its copy until it evicts it; the next
        request prepares the artifact anew). Any other model: the manager's unload."""
        if is_host(name):
            raise _host_refused(name)
        if self._routes.pop(name, None) is not None:
            await asyncio.to_thread(self._drop, name)
            return
        await self.inner.unload(name)

    async def _route(self, name: str) -> str | None:
        """The host for ``name`` once its artifact is prepared, or None when it is served per process. One
        preparation per name however many requests arrive together (single flight)."""
        host = self._routes.get(name)
        if host is not None or name in self._plain:
            return host
        if not self.multiplexed(name):
            self._plain.add(name)
            return None
        fut = self._flights.get(name)
        if fut is None:
            t0 = time.monotonic()
            host = self._prepare_inline(name)
            if host is not None:
                return self._prepared(name, host, t0)
            fut = self._flights[name] = asyncio.get_running_loop().create_future()
            task = asyncio.ensure_future(self._prepare(name, fut))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(fut)

    def _prepared(self, name: str, host: str | None, t0: float) -> str | None:
        if host is None:
            self._plain.add(name)
        else:
            self._routes[name] = host
            self.inner.metrics.downloading.observe(time.monotonic() - t0)
        return host

    async def _prepare(self, name: str, fut: asyncio.Future[str | None]) -> None:
        try:
            t0 = time.monotonic()
            host = await asyncio.to_thread(self._prepare_files, name)  # one hop: the work is a few file operations
            fut.set_result(self._prepared(name, host, t0))
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: waiters that gave up must not leave a warning
            if not isinstance(exc, Exception):
                raise
        finally:
            self._flights.pop(name, None)

    def _prepare_inline(self, name: str) -> str | None:
        """On the event loop, no thread hop (~0.2-0.3 ms of a ~5 ms cold request): a local store's tarball of at
        most ``INLINE_BYTES``, read in memory and written as one file or a small folder: well under a millisecond
        of CPU, which a worker thread would not overlap anyway (the GIL). Not for anything else, including
        an artifact that is absent or not servable by a host: the worker thread's ``_prepare_files`` has the last
        word and words its errors (None: not here)."""
        try:
            found = self._from_tarball(name, self.inner.knows(name), INLINE_BYTES)
        except ArtifactNotFoundError as exc:
            raise ModelNotFoundError(name, str(exc)) from None
        except (ArtifactError, OSError, ValueError) as exc:
            raise ArtifactFetchError(name, str(exc)) from None
        return None if found is None else self._host_for(found)

    def _exists(self, name: str) -> None:
        store = self.inner.store
        if store is None:
            raise ModelNotFoundError(name, f"not in the repository {self.repository} (no artifact store)")
        try:
            found = store.exists(name)
        except ArtifactError as exc:
            raise ArtifactFetchError(name, str(exc)) from None
        if not found:
            raise ModelNotFoundError(name, f"not in the repository nor in {store!r}")

    def _prepare_files(self, name: str) -> str | None:
        """In a worker thread: the artifact into ``root/<name>``, checked, its descriptor written, its host made. An
        unknown name is looked up in the store (404 if absent) before anything is fetched; on the tarball path that
        look-up is the tarball's own (one store look-up, not two)."""
        known = self.inner.knows(name)
        dest = self.root / name
        try:
            found: MuxArtifact | str | None = self._from_tarball(name, known)
            if found is None:
                if not known:
                    self._exists(name)
                found = self._from_folder(name, dest)
        except ArtifactNotFoundError as exc:
            raise ModelNotFoundError(name, str(exc)) from None
        except (ArtifactError, OSError, ValueError) as exc:
            shutil.rmtree(dest, ignore_errors=True)
            raise ArtifactFetchError(name, str(exc)) from None
        if isinstance(found, str):
            log.info("model %s is served by its own stub, not multiplexed: %s", name, found)
            shutil.rmtree(dest, ignore_errors=True)
            return None
        return self._host_for(found)

    def _host_for(self, found: MuxArtifact) -> str:
        with self._host_lock:  # preparations run in worker threads: one writer per host directory
            host = self._hosts.get(found.signature)
            if host is None:  # once per signature and run: the host's directory, written before its first load
                host = self._hosts[found.signature] = write_host(
                    self.repository, found.config, self.root, self.settings, self.scratch
                )
        return host

    def _from_tarball(self, name: str, known: bool, at_most: int | None = None) -> MuxArtifact | None:
        """The fast path (``toolkit.mme.muxfiles``): a local store's tarball read in memory, judged, and only what
        the host loads written. None where it does not apply (a repository model, a disk cache, a folder artifact, a
        bundle, a large artifact) or where the files are not servable as they are (a native ONNX model is adapted by
        the extraction): ``_materialize`` prepares those as before and ``read_artifact`` has the last word. An
        absent artifact of an unknown name is None too: ``_exists`` words its 404; so is a tarball over ``at_most``
        bytes."""
        store = self.inner.store
        if not isinstance(store, LocalStore) or self.inner.disk_cache is not None:
            return None
        if (self.repository / name / "config.pbtxt").is_file():
            return None
        try:
            tar = store.tarball(name)
        except ArtifactNotFoundError:
            if known:
                raise
            return None
        if tar is None or (at_most is not None and tar.stat().st_size > at_most):
            return None
        label = f"artifact {tar.name!r} in {store!r}"
        limit = self.settings.max_artifact_bytes + (1 << 20)  # room for the config and the adapter's model.py
        members = read_model_tarball(tar, max_read=limit, label=label)
        if members is None:
            return None
        files = ModelFiles.in_memory(members, label)
        found = read_artifact(files, name, self.settings.max_artifact_bytes)
        if isinstance(found, str):
            return None
        chosen = found

        def describe(artifact: str) -> bytes:  # the descriptor names the artifact where the host finds it
            return replace(chosen, artifact=artifact).descriptor()

        size = files.entries[found.artifact]
        with self._host_lock:
            one_file = self._shm is None or self._one_file_bytes + size <= self._shm_budget
        try:
            served, written = write_prepared(files, found.artifact, describe, self.root, name, self.scratch, one_file)
        except OSError as exc:
            if not (one_file and self._shm is not None and exc.errno == errno.ENOSPC):
                raise
            log.warning("%s is full: %s is prepared on disk, and so is every model after it", self._shm, name)
            self._shm_budget = 0  # a tmpfs smaller than it looked (a container's 64 MB /dev/shm, shared)
            served, written = write_prepared(files, found.artifact, describe, self.root, name, self.scratch, False)
        self._count_one_file(name, written)
        return replace(found, artifact=served)

    def _count_one_file(self, name: str, written: int) -> None:
        """``.prepared``'s bytes, for its budget (its files are memory when on tmpfs, a page at least each)."""
        written = -(-written // _PAGE) * _PAGE
        with self._host_lock:
            self._one_file_bytes += written - self._one_file.pop(name, 0)
            if written:
                self._one_file[name] = written

    def _drop(self, name: str) -> None:
        drop_prepared(self.root, name)
        self._count_one_file(name, 0)

    def _from_folder(self, name: str, dest: Path) -> MuxArtifact | str:
        """The general path: the whole model folder at ``dest`` (linked from the repository or the disk cache, or
        fetched), judged, and the descriptor written beside it."""
        self._drop(name)  # the host reads a one-file preparation first: none may be left over
        self._materialize(name, dest)
        found = read_artifact(dest, name, self.settings.max_artifact_bytes)
        if not isinstance(found, str):
            (dest / DESCRIPTOR).unlink(missing_ok=True)  # a hard link to the source's file must not be written through
            (dest / DESCRIPTOR).write_bytes(found.descriptor())
        return found

    def _materialize(self, name: str, dest: Path) -> None:
        local = self.repository / name
        cache, store = self.inner.disk_cache, self.inner.store
        if (local / "config.pbtxt").is_file():
            link_tree(local, dest, self.scratch)
        elif store is None:
            raise ArtifactNotFoundError(f"model {name!r} not in the repository (no artifact store)")
        elif cache is not None:
            path = cache.get_or_fetch(name, store, pin=True)
            try:
                link_tree(path, dest, self.scratch)
            finally:
                cache.unpin(name)
        else:
            fetched = store.fetch(name, self.scratch)
            install_dir(fetched.path, dest, self.scratch)

    # -- reporting -----------------------------------------------------------------------------------------------------
    async def mux_fresh(self, since: int) -> None:
        """Before a scrape (/metrics, the admin states): wait, briefly, for the hosts' counts of every request
        answered before ``since`` (``time.time_ns()`` of the last answer the gateway had from a host)."""
        await self.stats.wait_fresh(since)

    def states(self) -> list[Any]:
        """The manager's models (hosts among them) and every multiplexed model, resident or not."""
        self.stats.refresh()
        rows: list[Any] = [s for s in self.inner.states() if s.name not in self._routes]
        return rows + list(self.stats.model_states(self._routes))

    def collect(self) -> Iterator[Metric]:
        """The manager's metrics (the ``prometheus_client`` collector protocol, what the gateway's /metrics reads)
        with the hosts' counters folded in: the loaded-models gauge counts the models inside hosts, not the hosts;
        the per-model memory gauge has each multiplexed model's measured bytes."""
        self.stats.refresh()
        families = self.inner.collect()  # refreshes the manager's gauges now; families are built as iterated
        m = self.inner.metrics
        resident = self.stats.resident()
        hosts = set(self._routes.values())
        per_process = sum(1 for s in self.inner.states() if s.state == "READY" and s.name not in hosts)
        m.loaded.set(float(per_process + len(resident)))
        for name in self._routes:
            if name in resident:
                m.memory.set(float(resident[name]), model=name)
            elif m.memory.get(model=name):
                m.memory.set(0.0, model=name)
        return families

    def metrics_text(self) -> str:
        return exposition(self)
