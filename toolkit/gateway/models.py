"""What the gateway needs from a model manager, and a small built-in one for when there is no MME manager.

The gateway codes against ``ModelProvider`` (the subset of ``toolkit.mme.manager.ModelManager`` it calls).
``RepositoryModels`` is the manager-less mode: models come only from Triton's repository directory (or whatever an
external Triton has), are loaded on first use through the repository API with single-flight, and are never evicted.
It talks to Triton through the same client as the MME manager (``toolkit.server.client.AsyncTritonClient``) and maps
its failures with the same rule (``model_error``), so both modes report one Triton answer the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from toolkit.errors import InferenceError, TritonctlError
from toolkit.mme.errors import LoadTimeoutError, ModelNotFoundError, model_error
from toolkit.mme.metrics import PREFIX, exposition
from toolkit.mme.safe_tar import ArtifactError, validate_model_name
from toolkit.server.client import AsyncTritonClient, names_in_state
from toolkit.server.endpoint import TritonEndpoint

if TYPE_CHECKING:
    from prometheus_client.core import Metric


@runtime_checkable
class ModelProvider(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def knows(self, name: str) -> bool: ...

    def is_resident(self, name: str) -> bool: ...

    async def ensure_loaded(self, name: str, timeout: float | None = None) -> None: ...

    def serving(self, name: str, timeout: float | None = None) -> AbstractAsyncContextManager[None]: ...

    def try_serve(self, name: str) -> Callable[[], None] | None: ...

    async def serve(self, name: str, timeout: float | None = None) -> Callable[[], None]: ...

    async def unload(self, name: str) -> None: ...

    def collect(self) -> Iterable[Metric]: ...

    def unload_when_idle(self, name: str) -> None: ...

    def metrics_text(self) -> str: ...

    def on_triton_restart(self) -> None: ...

    def on_triton_down(self) -> None: ...


def _nothing() -> None:
    return None


class RepositoryModels:
    """Manager-less mode: load-on-first-use from the Triton repository, no eviction, no store."""

    def __init__(
        self,
        endpoint: TritonEndpoint,
        repository: Path | None = None,
        *,
        load_timeout: float = 60.0,
        on_loaded: Callable[[str], None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.repository = Path(repository) if repository else None
        self.load_timeout = load_timeout
        self.on_loaded = on_loaded
        self._resident: set[str] = set()
        self._loading: dict[str, asyncio.Task[None]] = {}
        self._triton = AsyncTritonClient(endpoint, load_timeout)
        self._bg: asyncio.Future[None] | None = None

    async def start(self) -> None:
        self._triton.open()
        await self._sync()

    async def _sync(self) -> None:
        try:
            index = await self._triton.index()
        except InferenceError:
            index = []  # Triton answered, but with an error: nothing is known to be resident
        except TritonctlError:
            return  # not there (or too slow): keep what is known; a restart syncs again
        self._resident = names_in_state(index)

    async def close(self) -> None:
        for t in self._loading.values():
            t.cancel()
        await self._triton.close()

    def knows(self, name: str) -> bool:
        try:
            validate_model_name(name)  # never a path: `a/../b` must not become a load of `b` after URL normalisation
        except ArtifactError:
            return False
        if name in self._resident:
            return True
        if self.repository is None:
            return True  # an external Triton: let its repository API decide
        return (self.repository / name / "config.pbtxt").is_file()

    def is_resident(self, name: str) -> bool:
        return name in self._resident

    def try_serve(self, name: str) -> Callable[[], None] | None:
        """The synchronous hot path: a release callable for a resident model (nothing is evicted here), else None."""
        return _nothing if name in self._resident else None

    async def _load(self, name: str) -> None:
        try:
            await self._triton.load(name)
        except TritonctlError as exc:
            raise model_error(name, exc) from None
        self._resident.add(name)
        if self.on_loaded is not None:
            self.on_loaded(name)

    async def ensure_loaded(self, name: str, timeout: float | None = None) -> None:
        if name in self._resident:
            return
        if not self.knows(name):
            raise ModelNotFoundError(name, "not in the model repository")
        task = self._loading.get(name)
        if task is None:
            task = asyncio.ensure_future(self._load(name))
            self._loading[name] = task
            task.add_done_callback(lambda _t: self._loading.pop(name, None))
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except asyncio.TimeoutError:
            raise LoadTimeoutError(name, timeout or 0.0) from None

    @contextlib.asynccontextmanager
    async def serving(self, name: str, timeout: float | None = None) -> AsyncIterator[None]:
        if name not in self._resident:
            await self.ensure_loaded(name, timeout)
        yield

    async def serve(self, name: str, timeout: float | None = None) -> Callable[[], None]:
        await self.ensure_loaded(name, timeout)
        return _nothing

    async def unload(self, name: str) -> None:
        try:
            await self._triton.unload(name)
        except TritonctlError as exc:
            raise model_error(name, exc) from None
        self._resident.discard(name)

    def collect(self) -> Iterator[Metric]:
        """The collector protocol: the MME manager's ``loaded_models`` gauge, so dashboards work in both modes."""
        from prometheus_client.core import GaugeMetricFamily

        fam = GaugeMetricFamily(f"{PREFIX}loaded_models", "Models loaded in Triton by the gateway")
        fam.add_metric([], float(len(self._resident)))
        yield fam

    def unload_when_idle(self, name: str) -> None:
        """Nothing: this mode does not count requests in flight, so it cannot unload after a call without cutting
        another one off; ``serving`` refuses ``model_cache_setting: Disabled`` without the MME manager."""

    def metrics_text(self) -> str:
        return exposition(self)

    def on_triton_down(self) -> None:
        self._resident.clear()  # the dead Triton's models are gone; the restart's index sync re-adds survivors

    def on_triton_restart(self) -> None:
        # The supervisor reloaded what it knew; re-read the index so that nothing is wrongly thought resident.
        self._bg = asyncio.ensure_future(self._sync())
