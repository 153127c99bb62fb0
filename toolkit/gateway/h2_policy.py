"""The gRPC rules the HTTP/2 frame forwarder (``h2_front``) applies to a call: at its HEADERS and to each message.

Kept apart from the framing so the rules read as what they are: the method table of ``grpc_service``, decided from
the call's method and headers and each message's model name (as protobuf reads it: ``protowire``), against the
gateway's core (authentication, policy, admin scope, concurrency limit, the manager's in-flight pins, lazy loading).
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from multidict import CIMultiDict

from toolkit.gateway import h2_frames as f
from toolkit.gateway.auth import INVOKE, Principal
from toolkit.gateway.core import KSERVE_ENDPOINT, GatewayCore
from toolkit.gateway.errors import ModelNotReadyError, ServiceUnavailableError
from toolkit.gateway.grpc_service import ADMIN_METHODS, KNOWN, LOADING_METHODS, REFUSED, STREAM, UnimplementedError


def check_call(core: GatewayCore, s: f.Stream, path: str, headers: list[tuple[str, str]], dead: str | None) -> None:
    """At the call's HEADERS: known method, not refused, Triton up, who is calling, admin scope. Raises to refuse."""
    if dead is not None:
        raise ServiceUnavailableError(dead)
    if s.method not in KNOWN:
        raise UnimplementedError(f"Method not found: {path}")
    if s.method in REFUSED:
        raise UnimplementedError(f"{s.method} is not available through the gateway")
    core.require_up()
    if core.auth.enabled:
        md = CIMultiDict((k, v) for k, v in headers if not k.startswith(":"))
        s.principal = core.auth.authenticate("POST", path, md, b"")
    if s.method in ADMIN_METHODS:
        core.check_admin(s.principal or Principal("anonymous"))


def check_message(core: GatewayCore, s: f.Stream, model: str) -> Coroutine[Any, Any, None] | None:
    """The rules for one message; None when decided synchronously (the warm path), else what to await."""
    if s.principal is not None:
        core.auth.authorize(
            s.principal, INVOKE, core.auth.endpoint_arn(KSERVE_ENDPOINT), {"sagemaker:TargetModel": model}
        )
    if s.method == "ModelInfer":
        core.acquire()
        s.acquired = True
        s.pin = core.models.try_serve(model)
        return None if s.pin is not None else _load(core, s, model, keep=True)
    if s.method == STREAM:  # counted like serving(); the pin ends at once
        pin = core.models.try_serve(model)
        if pin is not None:
            pin()
            return None
        return _load(core, s, model, keep=False)
    if s.method in LOADING_METHODS:
        return core.models.ensure_loaded(model, timeout=core.options.load_wait_s)
    return None


async def _load(core: GatewayCore, s: f.Stream, model: str, *, keep: bool) -> None:
    for _ in range(3):  # loaded, then evicted by a burst before this pin: load again
        await core.models.ensure_loaded(model, timeout=core.options.load_wait_s)
        pin = core.models.try_serve(model)
        if pin is not None:
            if keep:
                s.pin = pin
            else:
                pin()
            return
    raise ModelNotReadyError(f"Model {model} was evicted while waiting to serve it; retry")
