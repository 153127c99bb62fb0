"""The gateway's core, shared by the HTTP and gRPC wings: options, admission (``admission.Admission``: identity,
policy, limits, pins), the pooled connection to Triton, and what Triton's answers mean to a client.

The wings know nothing of auth, limits or models beyond calling ``identify``/``admit``/``admit_now`` and
``forward``/``forward_infer``; errors are mapped by ``errors.to_gateway_error`` and rendered by each wing.
The hot path for a warm model is: health flag check, authentication (skipped when no principals exist), the policy,
one counter for the concurrency limit, the manager's pin (dict lookups), and one request on a pooled keep-alive
connection whose body is forwarded as bytes: tensors are never decoded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from toolkit.ensembles.reach import ReachMap
from toolkit.gateway.admission import KSERVE_ENDPOINT, Admission
from toolkit.gateway.auth import ADMIN, Principal
from toolkit.gateway.endpoints import EndpointRouter
from toolkit.gateway.errors import (
    AccessDeniedError,
    UpstreamError,
    to_gateway_error,
)
from toolkit.gateway.models import ModelProvider
from toolkit.gateway.mux_rewrite import from_host, to_host
from toolkit.gateway.options import GatewayOptions
from toolkit.gateway.telemetry import AccessLog, GatewayCollector, RequestStats
from toolkit.gateway.upstream import UpstreamPool
from toolkit.mme.metrics import registry_of
from toolkit.server.endpoint import TritonEndpoint

__all__ = ["KSERVE_ENDPOINT", "Forwarded", "GatewayCore", "GatewayOptions"]

log = logging.getLogger(__name__)

# The only headers that travel between client and Triton (the hot path in http_dispatch uses the same lists). A
# compressed request is inflated by the gateway (bounded, off the event loop): Triton only ever sees plain bodies.
# W3C trace context (traceparent, tracestate) goes through, so Triton's OpenTelemetry spans join the client's trace.
FWD_REQUEST = ("Content-Type", "Inference-Header-Content-Length", "Accept-Encoding", "traceparent", "tracestate")
FWD_RESPONSE = ("Content-Type", "Inference-Header-Content-Length", "Content-Encoding")
_FWD_RESPONSE = tuple((h, h.lower()) for h in FWD_RESPONSE)


@dataclass
class Forwarded:
    status: int
    headers: dict[str, str]
    body: bytes


def triton_message(body: bytes) -> str:
    """Triton's ``{"error": "..."}`` text, or the raw body when it is not JSON."""
    try:
        got = json.loads(body)
        if isinstance(got, dict) and isinstance(got.get("error"), str):
            return got["error"]
    except ValueError:
        pass
    return body.decode(errors="replace")[:2000]


def client_status(status: int, body: bytes) -> int:
    """The status a client gets for Triton's answer: Triton says 500 to a body it cannot parse, which is the
    client's error (400)."""
    if status == 500 and triton_message(body).startswith(("failed to parse", "Unable to parse", "parse error")):
        return 400
    return status


class GatewayCore(Admission):
    """Shared by the wings; created and used inside the gateway's event loop."""

    def __init__(
        self,
        options: GatewayOptions,
        triton: TritonEndpoint,
        models: ModelProvider,
        is_up: Callable[[], bool] | None = None,
    ) -> None:
        repository = getattr(models, "repository", None)  # where the configs of what Triton runs are
        super().__init__(options, models, ReachMap(repository) if repository is not None else None, is_up)
        self.triton = triton
        self.base = triton.http_url
        self.router = EndpointRouter(options.endpoints, models.knows)
        self.hot_path = 0  # warm KServe infers answered with callbacks only (http_dispatch): a check for operators
        self.stats = RequestStats(AccessLog(options.access_log) if options.access_log else None)
        collector = GatewayCollector(self.stats, lambda: self.hot_path, lambda: self.inflight, self.is_up)
        self.registry = registry_of(collector, models)
        self.upstream: UpstreamPool | None = None
        self._mux: Callable[[str], str | None] | None = getattr(models, "mux_route", None)
        self.mux_answered = 0  # time.time_ns() of the last answer from a model host: what a scrape must count
        self.multiplexes = self._mux is not None  # some models may be served inside a host (toolkit.mme.mux)

    async def start(self) -> None:
        host, _, port = self.triton.http.rpartition(":")
        self.upstream = UpstreamPool(host, int(port), self.options.timeout_s)
        await self.models.start()

    async def close(self) -> None:
        await self.models.close()
        if self.stats.access is not None:
            self.stats.access.close()
        if self.upstream is not None:
            await self.upstream.close()

    # -- admin scope -------------------------------------------------------------------------------------------------
    def may_admin(self, principal: Principal) -> bool:
        """Whether ``check_admin(principal)`` passes: an explicit admin Allow (never with no principals)."""
        a = self.auth
        return a.enabled and a.has_policies and a.allowed(principal, ADMIN, a.admin_arn(), {})

    def check_admin(self, principal: Principal, action: str = ADMIN) -> None:
        """Admin (or, with ``action``, a narrower operator right such as METRICS, which admin implies) needs an
        explicit Allow: with no principals the repository API lives only on the admin port."""
        a = self.auth
        arn = a.admin_arn()
        if action != ADMIN and a.enabled and not a.has_policies:
            return  # principals without policies may do everything but admin (as with invoke): reading is allowed
        ok = a.enabled and a.has_policies and any(a.allowed(principal, x, arn, {}) for x in {ADMIN, action})
        if not ok:
            raise AccessDeniedError(f"User: {principal.name} is not authorized to perform: {action} on resource: {arn}")

    # -- forwarding ----------------------------------------------------------------------------------------------------
    async def forward(self, method: str, path: str, body: bytes | None, headers: Mapping[str, str]) -> Forwarded:
        assert self.upstream is not None
        out = {h: v for h in FWD_REQUEST if (v := headers.get(h)) is not None}
        try:
            status, rh, data = await self.upstream.request(method, path, body, out)
        except (asyncio.TimeoutError, UpstreamError, OSError) as exc:
            raise to_gateway_error(exc, timeout_s=self.options.timeout_s) from None
        return Forwarded(status, {h: v for h, k in _FWD_RESPONSE if (v := rh.get(k)) is not None}, data)

    def mux_route(self, model: str) -> str | None:
        """The model host serving ``model`` (``toolkit.mme.mux``), or None for a model of its own."""
        return self._mux(model) if self._mux is not None else None

    async def forward_infer(
        self, model: str, body: bytes, headers: Mapping[str, str], path: str | None = None
    ) -> Forwarded:
        """An admitted infer; Triton's own 4xx/5xx answers come back as they are (a parse error as 400). A
        multiplexed model's request goes to its host, naming the model (the admitted one) in a parameter."""
        host = self.mux_route(model)
        if host is not None:
            body, hdrs = to_host(model, body, headers)
            f = await self.forward("POST", f"/v2/models/{host}/infer", body, hdrs)
            self.mux_answer()
            f.body = from_host(model, f.body, f.headers)
        else:
            f = await self.forward("POST", path or f"/v2/models/{model}/infer", body, headers)
        f.status = self.answered(host or model, f.status, f.body)
        return f

    def mux_answer(self) -> None:
        """A model host answered (HTTP or gRPC): the next scrape waits for counters that include it (``mux_fresh``)."""
        self.mux_answered = time.time_ns()

    async def mux_fresh(self) -> None:
        """Before a scrape: the model hosts' counters include every answer a client already has (their state files
        are written once a second otherwise; ``toolkit.mme.muxstats``). Waits only after new answers, 0.5 s at most."""
        fresh = getattr(self.models, "mux_fresh", None)
        if fresh is not None and self.mux_answered:
            await fresh(self.mux_answered)

    def answered(self, model: str, status: int, body: bytes) -> int:
        """Triton's answer to an infer of ``model``: the status the client gets (``client_status``); a dead python
        stub ("Stub process ... is not healthy") is reported to the manager, which checks and reloads the model."""
        if status == 500 and b"is not healthy" in body:
            hook = getattr(self.models, "stub_failed", None)
            if hook is not None:
                hook(model)
        return client_status(status, body)

    def metrics_text(self, accept: str = "") -> tuple[bytes, str]:
        """The gateway's and the model manager's metrics, rendered by ``prometheus_client`` for the scraper's
        ``Accept`` header (Prometheus text or OpenMetrics): ``(body, content type)``."""
        from prometheus_client.exposition import choose_encoder

        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type
