"""The one client of Triton's control plane: repository API (index, load with an optional config override, unload),
health, metadata, configs, statistics and metrics.

Three parts of tritonctl talk to it -- the CLI, the supervisor and tests synchronously (``TritonAdmin``), the MME
manager and the gateway's manager-less mode on their event loop (``AsyncTritonClient``) -- and each used to build its
own requests and read its own failures, so the same Triton answer could become different errors. Here a request is
described once (``Call``), a transport only moves bytes (``http.client`` or ``aiohttp``), and the answer is read once:

* Triton not there (refused, reset, unreachable; for ``TritonAdmin`` also a socket timeout) ->
  ``TritonUnavailableError`` "Triton at host:port is unreachable: ...";
* Triton answered with an error -> ``InferenceError`` carrying Triton's own message (or ``TritonUnavailableError`` when
  that message itself says something could not be reached);
* an ``AsyncTritonClient`` call longer than its timeout -> ``TritonTimeoutError`` "Triton load took longer than N s"
  (an event loop must never wait on Triton unbounded).

``AsyncTritonClient`` sends loads and unloads over Triton's gRPC port, everything else over HTTP. Measured on
tritonserver 2.51: an HTTP repository load runs on the Triton HTTP worker thread that owns its connection, for the
whole load, and Triton gives every connection accepted while it is idle to the same first worker thread -- so a load
(0.1 s for a small python model, forever for one whose stub never starts) stalls every keep-alive connection opened
while Triton was idle, among them the gateway's pooled inference connections (504s for unrelated warm models). An
unload of a model still loading blocks the same way. Triton's gRPC server runs each repository call on a thread of
its own: loads there stall nothing else. When the gRPC port cannot be reached (an external Triton exposing HTTP
only), the call falls back to HTTP, with a warning.

Callers that speak of a model (the MME, the gateway) turn these into their own errors with
``toolkit.mme.errors.model_error``. Not a control-plane client, and deliberately not here:
``toolkit.gateway.upstream``, the gateway's hot path, which forwards inference requests as bytes over pooled HTTP/1.1
connections on uvloop protocols; and ``tritonctl invoke``, whose inferences go through tritonclient (HTTP or gRPC) with
``triton_errors`` applying the same rule to tritonclient's exceptions.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
from tritonclient.utils import InferenceServerException

from toolkit.errors import InferenceError, ServerError, TritonctlError, TritonTimeoutError, TritonUnavailableError
from toolkit.server.endpoint import TritonEndpoint

if TYPE_CHECKING:
    from tritonclient.grpc.aio import InferenceServerClient as GrpcClient

__all__ = [
    "AsyncTritonClient",
    "Call",
    "TritonAdmin",
    "error_text",
    "index_call",
    "load_call",
    "names_in_state",
    "triton_errors",
    "unload_call",
]

# Words of a failure message that mean "Triton was not reached" rather than "Triton said no".
_UNREACHABLE = (
    "connection refused",
    "failed to connect",
    "cannot connect",
    "timed out",
    "connection reset",
    "name or service",
    "broken pipe",
)
log = logging.getLogger(__name__)
EMPTY_ANSWER = "client received an empty response from the server."  # tritonclient's words for an empty error body


# -- requests ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Call:
    """One request to Triton: ``what`` names it in timeout messages ("Triton load took longer than ...")."""

    what: str
    method: str
    path: str
    body: bytes = b""


def _model_path(name: str, version: str = "") -> str:
    path = f"/v2/models/{quote(name, safe='')}"
    return f"{path}/versions/{quote(version, safe='')}" if version else path


def index_call() -> Call:
    return Call("index", "POST", "/v2/repository/index")


def load_call(name: str, config: str | None = None) -> Call:
    """Load (or reload) ``name``; ``config`` (config.pbtxt as JSON) overrides the repository's config for this load."""
    body: dict[str, Any] = {} if config is None else {"parameters": {"config": config}}
    return Call("load", "POST", f"/v2/repository/models/{quote(name, safe='')}/load", json.dumps(body).encode())


def unload_call(name: str, unload_dependents: bool = False) -> Call:
    body = {"parameters": {"unload_dependents": unload_dependents}}
    return Call("unload", "POST", f"/v2/repository/models/{quote(name, safe='')}/unload", json.dumps(body).encode())


# -- answers ----------------------------------------------------------------------------------------------------------
def error_text(body: bytes) -> str:
    """Triton's ``{"error": "..."}`` text, or the raw body when it is not that."""
    if not body.strip():
        return EMPTY_ANSWER
    try:
        got = json.loads(body)
    except ValueError:
        got = None
    error = got.get("error") if isinstance(got, dict) else None
    return error if isinstance(error, str) else body.decode(errors="replace")[:2000]


def _says_unreachable(message: str) -> bool:
    return any(s in message.lower() for s in _UNREACHABLE)


def _unreachable(endpoint: TritonEndpoint, detail: object) -> TritonUnavailableError:
    return TritonUnavailableError(f"Triton at {endpoint.http} is unreachable: {detail}")


def _rejected(endpoint: TritonEndpoint, message: str) -> TritonctlError:
    return _unreachable(endpoint, message) if _says_unreachable(message) else InferenceError(message)


def _answer(endpoint: TritonEndpoint, call: Call, status: int, body: bytes) -> Any:
    """The JSON of a 200 answer (None when empty, as for load and unload), else the error it carries."""
    if status != 200:
        raise _rejected(endpoint, error_text(body))
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except ValueError:
        raise InferenceError(f"Triton's answer to {call.what} is not JSON: {body[:200]!r}") from None


def names_in_state(index: Iterable[dict[str, Any]], states: Iterable[str] = ("READY",)) -> set[str]:
    """Names of the repository index entries in one of ``states`` (READY: loaded and serving)."""
    wanted = set(states)
    return {m["name"] for m in index if m.get("state") in wanted}


@contextmanager
def triton_errors(endpoint: TritonEndpoint) -> Iterator[None]:
    """The same rule for tritonclient's failures (the inference calls of ``tritonctl invoke``, HTTP or gRPC)."""
    try:
        yield
    except InferenceServerException as exc:
        raise _rejected(endpoint, exc.message() or str(exc)) from None
    except (ConnectionError, OSError) as exc:
        raise _unreachable(endpoint, exc) from None


# -- synchronous ------------------------------------------------------------------------------------------------------
class TritonAdmin:
    """Repository API + health + stats for one Triton endpoint, from synchronous code (CLI, supervisor, tests).

    Each call opens its own connection: calls are rare (the supervisor polls every 2 s), and the object is then safe to
    share between threads.
    """

    def __init__(
        self, endpoint: TritonEndpoint, timeout: float = 60.0, headers: Mapping[str, str] | None = None
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        # sent with every call: the credentials of a tritonctl gateway with principals (``X-Api-Key``), which answers
        # the same API as Triton, so the CLI can point here at either
        self.headers = dict(headers or {})

    def close(self) -> None:
        """Nothing stays open between calls; kept so that callers can release a client without knowing that."""

    def _send(self, call: Call) -> tuple[int, bytes]:
        try:
            conn = http.client.HTTPConnection(self.endpoint.http, timeout=self.timeout)
            try:
                body = call.body if call.method == "POST" else None
                conn.request(call.method, call.path, body=body, headers=self.headers)
                response = conn.getresponse()
                return response.status, response.read()
            finally:
                conn.close()
        except (OSError, http.client.HTTPException) as exc:
            raise _unreachable(self.endpoint, exc) from None

    def _json(self, call: Call) -> Any:
        return _answer(self.endpoint, call, *self._send(call))

    def _get(self, path: str) -> dict[str, Any]:
        return dict(self._json(Call(path, "GET", path)) or {})

    def _status_ok(self, path: str) -> bool:
        return self._send(Call(path, "GET", path))[0] == 200

    def live(self) -> bool:
        try:
            return self._status_ok("/v2/health/live")
        except TritonctlError:
            return False

    def ready(self) -> bool:
        try:
            return self._status_ok("/v2/health/ready")
        except TritonctlError:
            return False

    def index(self) -> list[dict[str, Any]]:
        return list(self._json(index_call()) or [])

    def loaded(self) -> list[str]:
        return sorted(names_in_state(self.index()))

    def load(self, name: str, config: str | None = None) -> None:
        self._json(load_call(name, config))

    def unload(self, name: str, unload_dependents: bool = False) -> None:
        self._json(unload_call(name, unload_dependents))

    def model_ready(self, name: str, version: str = "") -> bool:
        """Whether Triton serves the model now. A refusal (401/403, which only a gateway in front of Triton
        answers) raises with its message: it says nothing about the model, and is not a "no"."""
        call = Call("model ready", "GET", _model_path(name, version) + "/ready")
        status, body = self._send(call)
        if status in (401, 403):
            raise _rejected(self.endpoint, error_text(body))
        return status == 200

    def metadata(self, name: str) -> dict[str, Any]:
        return self._get(_model_path(name))

    def config(self, name: str) -> dict[str, Any]:
        return self._get(_model_path(name) + "/config")

    def stats(self, name: str = "") -> dict[str, Any]:
        return self._get((_model_path(name) if name else "/v2/models") + "/stats")

    def server_metadata(self) -> dict[str, Any]:
        return self._get("/v2")

    def metrics_text(self, timeout: float = 5.0) -> str:
        try:
            with urllib.request.urlopen(self.endpoint.metrics_url, timeout=timeout) as r:
                text: bytes = r.read()
                return text.decode()
        except (urllib.error.URLError, OSError) as exc:
            raise TritonUnavailableError(f"Triton metrics at {self.endpoint.metrics} unreachable: {exc}") from None


# -- asynchronous -----------------------------------------------------------------------------------------------------
class AsyncTritonClient:
    """The repository API from an event loop (MME manager, gateway), every call bounded by ``timeout`` seconds.

    ``open`` it on the loop that uses it (an aiohttp session and a gRPC channel belong to one loop), ``close`` it there
    too. ``grpc=False`` sends loads and unloads over HTTP as well (see the module docstring for why that is not the
    default).
    """

    def __init__(self, endpoint: TritonEndpoint, timeout: float = 60.0, *, grpc: bool = True) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.grpc = grpc
        self._session: aiohttp.ClientSession | None = None
        self._grpc: GrpcClient | None = None
        self._warned = False

    def open(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        if self.grpc:
            from tritonclient.grpc.aio import InferenceServerClient  # only here: a gRPC import costs ~50 ms

            self._grpc = InferenceServerClient(self.endpoint.grpc)

    async def close(self) -> None:
        session, self._session = self._session, None
        client, self._grpc = self._grpc, None
        if session is not None:
            await session.close()
        if client is not None:
            await client.close()

    async def _exchange(self, session: aiohttp.ClientSession, call: Call) -> tuple[int, bytes]:
        async with session.request(call.method, self.endpoint.http_url + call.path, data=call.body) as r:
            return r.status, await r.read()

    async def _send(self, call: Call, timeout: float | None = None) -> Any:
        if self._session is None:
            raise ServerError("AsyncTritonClient used before open() (or after close())")
        limit = self.timeout if timeout is None else timeout
        try:
            status, body = await asyncio.wait_for(self._exchange(self._session, call), limit)
        except asyncio.TimeoutError:  # before OSError: on Python >= 3.11 it is the builtin TimeoutError, an OSError
            raise TritonTimeoutError(f"Triton {call.what} took longer than {limit:g} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise _unreachable(self.endpoint, exc) from None
        return _answer(self.endpoint, call, status, body)

    async def index(self) -> list[dict[str, Any]]:
        return list(await self._send(index_call()) or [])

    async def _send_grpc(
        self, call: Call, grpc_call: Callable[[float], Awaitable[None]], timeout: float | None
    ) -> None:
        """``grpc_call(deadline)`` on the gRPC port; the same errors as ``_send``; HTTP when gRPC is not there."""
        limit = self.timeout if timeout is None else timeout
        try:
            await grpc_call(limit)
            return
        except InferenceServerException as exc:
            status, message = str(exc.status() or ""), exc.message() or str(exc)
        if status == "StatusCode.DEADLINE_EXCEEDED":
            raise TritonTimeoutError(f"Triton {call.what} took longer than {limit:g} s") from None
        if status != "StatusCode.UNAVAILABLE":
            raise _rejected(self.endpoint, message)
        if not self._warned:  # the gRPC port is not there (or Triton is down: then HTTP fails too, as it should)
            self._warned = True
            log.warning(
                "Triton's gRPC port %s is unreachable (%s; Triton down, or its gRPC port not there): repository loads "
                "go over HTTP, where each blocks a Triton HTTP thread and the connections on it",
                self.endpoint.grpc, message.splitlines()[0][:200],
            )  # fmt: skip
        await self._send(call, timeout)

    async def load(self, name: str, config: str | None = None) -> None:
        client = self._grpc
        if client is None:
            await self._send(load_call(name, config))
            return
        await self._send_grpc(
            load_call(name, config), lambda limit: client.load_model(name, config=config, client_timeout=limit), None
        )

    async def unload(self, name: str, unload_dependents: bool = False, timeout: float | None = None) -> None:
        client = self._grpc
        if client is None:
            await self._send(unload_call(name, unload_dependents), timeout)
            return
        await self._send_grpc(
            unload_call(name, unload_dependents),
            lambda limit: client.unload_model(name, unload_dependents=unload_dependents, client_timeout=limit),
            timeout,
        )
