"""The gRPC rules the HTTP/2 frame forwarder (``h2_front``) applies to a call: at its HEADERS and to each message.

Kept apart from the framing so the rules read as what they are: the method table of ``grpc_service``, decided from
the call's method and headers and each message's model name (as protobuf reads it: ``protowire``), against the
gateway's core (authentication, policy, admin scope, concurrency limit, the manager's in-flight pins, lazy loading).
"""

from __future__ import annotations

from collections.abc import Coroutine
from time import perf_counter
from typing import Any

from multidict import CIMultiDict

from toolkit.gateway import h2_frames as f
from toolkit.gateway.admission import KSERVE_ENDPOINT, Ticket, Use
from toolkit.gateway.auth import METRICS
from toolkit.gateway.core import GatewayCore
from toolkit.gateway.errors import GatewayError, ServiceUnavailableError
from toolkit.gateway.grpc_service import ADMIN_METHODS, KNOWN, LOADING_METHODS, REFUSED, STREAM, UnimplementedError
from toolkit.gateway.h2_mux import MuxCall
from toolkit.gateway.mux_rewrite import stats_refused

USE = {"ModelInfer": Use.INVOKE, STREAM: Use.STREAM, **{m: Use.LOAD for m in LOADING_METHODS if m != "ModelInfer"}}


def check_call(core: GatewayCore, s: f.Stream, path: str, headers: list[tuple[str, str]], dead: str | None) -> None:
    """At the call's HEADERS: known method, not refused, Triton up, who is calling, admin scope. Raises to refuse."""
    if dead is not None:
        raise ServiceUnavailableError(dead)
    if s.method not in KNOWN:
        raise UnimplementedError(f"Method not found: {path}")
    if s.method in REFUSED:
        raise UnimplementedError(f"{s.method} is not available through the gateway")
    core.require_up()
    if core.auth.enabled:  # SigV4 on gRPC is checked against an empty body: the message is never held whole
        md = CIMultiDict((k, v) for k, v in headers if not k.startswith(":"))
        s.principal = core.identify("POST", path, md, b"")
    if s.method in ADMIN_METHODS:
        core.check_admin(s.principal)


def check_message(core: GatewayCore, s: f.Stream, model: str) -> Coroutine[Any, Any, None] | None:
    """Admission for one message's model; None when decided synchronously (the warm path), else what to await."""
    if not model and s.method == "ModelStatistics" and core.auth.enabled:
        core.check_admin(s.principal, METRICS)  # every model's statistics, denied ones included: operators only
    s.model = s.model or model  # the call's model label (h2_stats): a stream's first
    use = USE.get(s.method, Use.LOOK)
    ticket = core.admit_now(s.principal, KSERVE_ENDPOINT, model, use)
    if ticket is not None:
        _route(core, s, model, ticket)
        s.ticket = ticket
        return None
    return _admit(core, s, model, use)


async def _admit(core: GatewayCore, s: f.Stream, model: str, use: Use) -> None:
    """Not warm: admission waits for the load (its time is the call's cold-load wait, as HTTP's ``_admit_timed``)."""
    t0 = perf_counter()
    ticket = await core.admit(s.principal, KSERVE_ENDPOINT, model, use)
    s.cold = (s.cold or 0.0) + perf_counter() - t0
    _route(core, s, model, ticket)
    s.ticket = ticket


def _route(core: GatewayCore, s: f.Stream, model: str, ticket: Ticket) -> None:
    """After authorization: a multiplexed model's call is retargeted at its host (``h2_mux``), as over HTTP; the
    host's own name never reaches here (admission does not know it). Refused for it: a stream (each message would
    need its own rewrite), statistics (the host's count every model it serves; per-model counts are in /metrics)
    and a compressed message (the suffix is appended to plain bytes)."""
    host = core.mux_route(model)
    if host is None:
        return
    why: GatewayError | None = None
    if s.method == STREAM:
        why = UnimplementedError(
            f"model {model} is multiplexed: ModelStreamInfer is not available for it, use ModelInfer"
        )
    elif s.method == "ModelStatistics":
        why = stats_refused(model)
    elif s.compressed:
        why = UnimplementedError(f"model {model} is multiplexed: send its requests uncompressed")
    if why is not None:
        ticket.release()
        raise why
    s.mux = MuxCall(s.method, host, model)
