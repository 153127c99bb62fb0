"""Admission: the one sequence every route runs before Triton sees a request, whatever the protocol.

    identify (who)  ->  authorize (may they, on this endpoint, for this model and every model it may reach)
                    ->  slot (concurrency limit)
                    ->  pin (the model is loaded, counted as an invocation, and not evicted until the answer)

KServe over HTTP (hot path and handler), SageMaker's invocations and both kinds of gRPC call come through here, so
an IAM condition key, a limit or a metric is added once. The model name given is already canonical
(``toolkit.names``): the name checked is the name loaded, pinned and run.

``admit_now`` is the synchronous form for the callback-only hot paths (None when the model is cold, with nothing
held); ``admit`` waits for a cold model's load. Both return a ``Ticket`` whose ``release`` ends the slot and the
pins exactly once, however the request ends (answer, error, timeout, client gone, gateway stopping).
"""

from __future__ import annotations

import contextlib
import enum
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from toolkit.gateway.auth import ANONYMOUS, INVOKE, Principal
from toolkit.gateway.errors import AuthError, NotFoundError, ServiceUnavailableError, ThrottlingError
from toolkit.names import SEPARATOR, ModelNameError, target_path

if TYPE_CHECKING:
    from toolkit.ensembles.reach import ReachMap
    from toolkit.gateway.models import ModelProvider
    from toolkit.gateway.options import GatewayOptions

log = logging.getLogger(__name__)

KSERVE_ENDPOINT = "kserve"  # the endpoint name KServe (HTTP and gRPC) requests are authorized against


class Use(enum.Enum):
    """What a request does with its model, which decides what admission holds for it."""

    INVOKE = "invoke"  # an inference: counted (ModelCacheHit), a slot and an in-flight pin until released
    STREAM = "stream"  # one ModelStreamInfer message: loaded and counted; nothing held past admission
    LOAD = "load"  # metadata / config: the model is loaded first; no count, no slot
    LOOK = "look"  # readiness, statistics: authorized only, never loads


_LOOK, _LOAD, _STREAM = Use.LOOK, Use.LOAD, Use.STREAM


class Ticket:
    """What an admitted request holds; ``release`` gives it all back, once."""

    __slots__ = ("_core", "_pins", "_slot")

    def __init__(self, core: Admission | None, pins: list[Callable[[], None]]) -> None:
        self._core = core  # set while a concurrency slot is held
        self._pins = pins
        self._slot = core is not None

    def release(self) -> None:
        pins, self._pins = self._pins, []
        for pin in pins:
            pin()
        if self._slot:
            self._slot = False
            assert self._core is not None
            self._core.inflight -= 1


NO_TICKET = Ticket(None, [])


def target_context(model: str) -> dict[str, str]:
    """The policy context of a canonical model name: its TargetModel path (``team-a..x`` -> ``team-a/x``; a flat
    name is its own path). Policies match paths, not Triton names: ``toolkit.names`` says why."""
    if SEPARATOR in model:
        with contextlib.suppress(ModelNameError):
            model = target_path(model)
    return {"sagemaker:TargetModel": model}


class Admission:
    """The admission rules over the auth config, limits and model provider (``GatewayCore`` is one)."""

    def __init__(
        self,
        options: GatewayOptions,
        models: ModelProvider,
        reach: ReachMap | None = None,
        is_up: Callable[[], bool] | None = None,
    ) -> None:
        self.options = options
        self.auth = options.auth
        self.models = models
        self.reach = reach  # what each model may call (ensembles.reach): authorized with it
        self.inflight = 0  # requests holding a concurrency slot
        self._hides: Callable[[str], bool] | None = getattr(models, "hides", None)
        self._is_up = is_up
        # Endpoints with SageMaker's ModelCacheSetting: Disabled: their model is unloaded once each call ends.
        self.uncached = frozenset(e.name for e in options.endpoints if e.model_cache_setting == "Disabled")

    def is_up(self) -> bool:
        return self._is_up() if self._is_up is not None else True

    def follow(self, is_up: Callable[[], bool]) -> None:
        """Take Triton's health from a supervisor from now on (503 while it restarts)."""
        self._is_up = is_up

    def require_up(self) -> None:
        if not self.is_up():
            raise ServiceUnavailableError("Triton is restarting; retry shortly.")

    def identify(self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes) -> Principal:
        """The calling principal (anonymous when the gateway has no principals), or AuthError."""
        if not self.auth.enabled:
            return ANONYMOUS
        try:
            return self.auth.authenticate(method, raw_path, headers, body)
        except AuthError as exc:  # an audit line for operators: the reason and the path, never a key or secret
            log.info(
                "authentication failed for %s %s: %s (%s)", method, raw_path.partition("?")[0], exc.message, exc.code
            )
            raise

    def authorize(self, principal: Principal, endpoint: str, context: Mapping[str, str]) -> None:
        if self.auth.enabled:
            self.auth.authorize(principal, INVOKE, self.auth.endpoint_arn(endpoint), context)

    def authorize_reach(
        self, principal: Principal, endpoint: str, models: Sequence[str], context: Mapping[str, str]
    ) -> None:
        """Every model these may call (ensemble steps, router targets: ``ensembles.reach``) is authorized as if
        called directly on the same endpoint, before Triton runs anything."""
        if self.reach is None or not self.auth.enabled or not self.auth.has_policies:
            return
        arn = self.auth.endpoint_arn(endpoint)
        for model in models:
            for m in self.reach.reached(model):
                self.auth.authorize(principal, INVOKE, arn, {**context, **target_context(m)}, via=model)

    def _look(self, model: str) -> Ticket:
        """Readiness and statistics need no load, but a name the provider hides (a model host, which serves
        whichever model its parameter names: ``toolkit.mme.mux``) is no model to a client on any route."""
        if self._hides is not None and self._hides(model):
            raise NotFoundError(f"Request for unknown model: '{model}' is not found")
        return NO_TICKET

    def _slot(self) -> None:
        if self.inflight >= self.options.max_concurrency:
            raise ThrottlingError(f"Too many concurrent requests (limit {self.options.max_concurrency}); retry later.")
        self.inflight += 1

    def admit_now(
        self,
        principal: Principal,
        endpoint: str,
        model: str,
        use: Use = Use.INVOKE,
        context: Mapping[str, str] | None = None,
    ) -> Ticket | None:
        """Synchronously: authorized, and for a warm model its slot and pin. None: cold (nothing held).

        Every warm KServe infer over HTTP runs this (``http_dispatch``), so it is written for CPU: the policy context
        is built only when there are principals, and ``Use`` members are read from module constants (an Enum
        member read through its class costs a descriptor call in Python 3.11). Measured under callgrind, this
        shape costs ~6k instructions per request less than calling the general helpers."""
        if not self.is_up():
            raise ServiceUnavailableError("Triton is restarting; retry shortly.")
        if self.auth.enabled:
            ctx = target_context(model) if context is None else context
            self.authorize(principal, endpoint, ctx)
            if use is _LOOK:
                return self._look(model)
            self.authorize_reach(principal, endpoint, (model,), ctx)
        elif use is _LOOK:
            return self._look(model)
        if use is _LOAD:
            return NO_TICKET if self.models.is_resident(model) else None
        pin = self.models.try_serve(model)
        if pin is None:
            return None
        if use is _STREAM:
            pin()
            return NO_TICKET
        try:
            self._slot()
        except ThrottlingError:
            pin()
            raise
        return Ticket(self, [pin])

    async def admit(
        self,
        principal: Principal,
        endpoint: str,
        models: str | Sequence[str],
        use: Use = Use.INVOKE,
        context: Mapping[str, str] | None = None,
    ) -> Ticket:
        """Authorized, then each model loaded (waiting up to ``load_wait_s``) and, for an invocation, pinned under one
        slot. ``models`` is one model, or a serial endpoint's chain (pinned together: no step evicted mid-chain)."""
        chain = (models,) if isinstance(models, str) else tuple(models)
        self.require_up()
        ctx = target_context(chain[-1]) if context is None else context
        self.authorize(principal, endpoint, ctx)
        if use is Use.LOOK:
            return self._look(chain[-1])
        for m in chain:
            if not self.models.knows(m):
                raise NotFoundError(f"Request for unknown model: '{m}' is not found")
        self.authorize_reach(principal, endpoint, chain, ctx)  # what the repository declares before any load
        wait = self.options.load_wait_s
        if use is Use.LOAD:
            for m in chain:
                await self.models.ensure_loaded(m, timeout=wait)
            self.authorize_reach(principal, endpoint, chain, ctx)
            return NO_TICKET
        if use is Use.INVOKE:
            self._slot()
        ticket = Ticket(self if use is Use.INVOKE else None, [])
        try:
            for m in chain:
                ticket._pins.append(await self.models.serve(m, timeout=wait))
            self.authorize_reach(principal, endpoint, chain, ctx)  # an artifact's config is known once it is loaded
        except BaseException:
            ticket.release()
            raise
        if use is Use.STREAM:
            ticket.release()
            return NO_TICKET
        if endpoint in self.uncached:  # after the pins (released first): the model is idle when this runs
            ticket._pins.extend(functools.partial(self.models.unload_when_idle, m) for m in chain)
        return ticket
