"""A thin, typed wrapper over tritonclient.http for the repository API, health, stats and metrics.

It exists so that every caller (CLI, MME manager, supervisor) gets the same clear errors: an unreachable server
becomes ``TritonUnavailableError`` and a rejected call becomes ``InferenceError`` carrying Triton's own message.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from toolkit.errors import InferenceError, TritonUnavailableError
from toolkit.server.endpoint import TritonEndpoint

_UNREACHABLE = (
    "connection refused",
    "failed to connect",
    "timed out",
    "connection reset",
    "name or service",
    "broken pipe",
)


@contextmanager
def triton_errors(endpoint: TritonEndpoint) -> Iterator[None]:
    """Translate tritonclient / socket failures into tritonctl's typed errors."""
    try:
        yield
    except InferenceServerException as exc:
        msg = exc.message() or str(exc)
        if any(s in msg.lower() for s in _UNREACHABLE):
            raise TritonUnavailableError(f"Triton at {endpoint.http} is unreachable: {msg}") from None
        raise InferenceError(msg) from None
    except (ConnectionError, OSError) as exc:
        raise TritonUnavailableError(f"Triton at {endpoint.http} is unreachable: {exc}") from None


class TritonAdmin:
    """Repository API + health + stats for one Triton endpoint."""

    def __init__(self, endpoint: TritonEndpoint, timeout: float = 60.0) -> None:
        self.endpoint = endpoint
        self._client = httpclient.InferenceServerClient(
            endpoint.http, connection_timeout=timeout, network_timeout=timeout
        )

    def close(self) -> None:
        self._client.close()

    def live(self) -> bool:
        try:
            return bool(self._client.is_server_live())
        except Exception:
            return False

    def ready(self) -> bool:
        try:
            return bool(self._client.is_server_ready())
        except Exception:
            return False

    def index(self) -> list[dict[str, Any]]:
        with triton_errors(self.endpoint):
            return list(self._client.get_model_repository_index())

    def loaded(self) -> list[str]:
        return sorted({m["name"] for m in self.index() if m.get("state") == "READY"})

    def load(self, name: str, config: str | None = None) -> None:
        with triton_errors(self.endpoint):
            self._client.load_model(name, config=config)

    def unload(self, name: str, unload_dependents: bool = False) -> None:
        with triton_errors(self.endpoint):
            self._client.unload_model(name, unload_dependents=unload_dependents)

    def model_ready(self, name: str, version: str = "") -> bool:
        with triton_errors(self.endpoint):
            return bool(self._client.is_model_ready(name, version))

    def metadata(self, name: str) -> dict[str, Any]:
        with triton_errors(self.endpoint):
            return dict(self._client.get_model_metadata(name))

    def config(self, name: str) -> dict[str, Any]:
        with triton_errors(self.endpoint):
            return dict(self._client.get_model_config(name))

    def stats(self, name: str = "") -> dict[str, Any]:
        with triton_errors(self.endpoint):
            return dict(self._client.get_inference_statistics(name))

    def server_metadata(self) -> dict[str, Any]:
        with triton_errors(self.endpoint):
            return dict(self._client.get_server_metadata())

    def metrics_text(self, timeout: float = 5.0) -> str:
        try:
            with urllib.request.urlopen(self.endpoint.metrics_url, timeout=timeout) as r:
                return r.read().decode()
        except (urllib.error.URLError, OSError) as exc:
            raise TritonUnavailableError(f"Triton metrics at {self.endpoint.metrics} unreachable: {exc}") from None
