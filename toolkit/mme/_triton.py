"""The MME manager's connection to Triton's repository API (explicit mode): the shared client, in the model's terms.

Loading, eviction and resync all talk to the same endpoint through ``toolkit.server.client.AsyncTritonClient`` and
must turn its failures into the same typed errors (``model_error``): "Triton refused" (``ModelLoadError``, carrying
Triton's own message, which the gateway shows the caller) versus "Triton is not there" (``TritonDownError``, which the
gateway reports as unavailable). Every call is bounded by the manager's load timeout, so a wedged Triton cannot hang a
request forever.

Loads and unloads go over Triton's gRPC port (``AsyncTritonClient``): an HTTP load would block the Triton HTTP thread
that the gateway's pooled inference connections share, for as long as the load lasts.
"""

from __future__ import annotations

import contextlib
from typing import Any

from toolkit.errors import TritonctlError, TritonTimeoutError
from toolkit.mme.errors import LoadHungError, ManagerConfigError, model_error
from toolkit.server.client import AsyncTritonClient
from toolkit.server.endpoint import TritonEndpoint


class TritonRepository:
    """Load, unload and list models; ``open`` before use (the aiohttp client must be made on the running loop)."""

    def __init__(self, endpoint: TritonEndpoint, timeout: float) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._client: AsyncTritonClient | None = None

    def open(self) -> None:
        client = AsyncTritonClient(self.endpoint, self.timeout)
        client.open()
        self._client = client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _client_or_raise(self) -> AsyncTritonClient:
        if self._client is None:
            raise ManagerConfigError("ModelManager used before start() (or after close())")
        return self._client

    async def load(self, name: str) -> None:
        client = self._client_or_raise()
        try:
            await client.load(name)
        except TritonTimeoutError as exc:
            raise LoadHungError(name, f"{exc}; Triton may keep it LOADING until it restarts") from None
        except TritonctlError as exc:
            raise model_error(name, exc) from None

    async def still_loading(self, name: str) -> bool:
        """Whether Triton's index says ``name`` is LOADING (an earlier load that hung has not finished)."""
        try:
            return any(m.get("name") == name and m.get("state") == "LOADING" for m in await self.index())
        except TritonctlError:
            return False

    async def unload(self, name: str) -> None:
        client = self._client_or_raise()
        try:
            await client.unload(name)
        except TritonctlError as exc:
            raise model_error(name, exc) from None

    async def unload_quietly(self, name: str, timeout: float = 5.0) -> None:
        """Best-effort unload after a failed load: the original error is what the caller must see, not this one."""
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.unload(name, timeout=timeout)

    async def index(self) -> list[dict[str, Any]]:
        client = self._client_or_raise()
        try:
            return await client.index()
        except TritonctlError as exc:
            raise model_error("*", exc) from None
