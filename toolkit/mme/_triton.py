"""The MME manager's connection to Triton's repository API (explicit mode), with one error mapping for every call.

Loading, eviction and resync all talk to the same endpoint and must turn its failures into the same typed errors:
"Triton refused" (``ModelLoadError``, carrying Triton's own message, which the gateway shows the caller) versus
"Triton is not there" (``TritonDownError``, which the gateway reports as unavailable). Every call is bounded by the
manager's load timeout, so a wedged Triton cannot hang a request forever.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, TypeVar

import aiohttp
import tritonclient.http.aio as httpaio
from tritonclient.utils import InferenceServerException

from toolkit.mme.errors import ManagerConfigError, ModelLoadError, TritonDownError
from toolkit.server.endpoint import TritonEndpoint

T = TypeVar("T")
_UNREACHABLE = ("connection refused", "failed to connect", "cannot connect", "timed out", "connection reset")


class TritonRepository:
    """Load, unload and list models; ``open`` before use (the aiohttp client must be made on the running loop)."""

    def __init__(self, endpoint: TritonEndpoint, timeout: float) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._client: httpaio.InferenceServerClient | None = None

    def open(self) -> None:
        self._client = httpaio.InferenceServerClient(self.endpoint.http, conn_timeout=self.timeout)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _client_or_raise(self) -> httpaio.InferenceServerClient:
        if self._client is None:
            raise ManagerConfigError("ModelManager used before start() (or after close())")
        return self._client

    async def _call(self, what: str, name: str, call: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(call, self.timeout)
        except InferenceServerException as exc:
            msg = exc.message() or str(exc)
            if any(s in msg.lower() for s in _UNREACHABLE):
                raise TritonDownError(name, f"Triton at {self.endpoint.http} is unreachable: {msg}") from None
            raise ModelLoadError(name, msg) from None
        except TimeoutError:
            raise ModelLoadError(name, f"Triton {what} took longer than {self.timeout:.0f} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise TritonDownError(name, f"Triton at {self.endpoint.http} is unreachable: {exc}") from None

    async def load(self, name: str) -> None:
        await self._call("load", name, self._client_or_raise().load_model(name))

    async def unload(self, name: str) -> None:
        await self._call("unload", name, self._client_or_raise().unload_model(name))

    async def unload_quietly(self, name: str, timeout: float = 5.0) -> None:
        """Best-effort unload after a failed load: the original error is what the caller must see, not this one."""
        if self._client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._client.unload_model(name), timeout)

    async def index(self) -> list[dict[str, Any]]:
        return list(await self._call("index", "*", self._client_or_raise().get_model_repository_index()))
