"""Routing for the gateway's HTTP ports, and the callback-only hot path for a warm KServe infer.

Every request arrives here complete (``toolkit.gateway.h1``). A ``POST /v2/models/{m}[/versions/{v}]/infer`` for a
model the manager holds READY is answered without a task or a future: admission (``core.admit_now``: identity,
policy, slot, pin; synchronous code), then the body goes to Triton on a pooled connection and the answer comes back
through a callback. Everything else, and an infer whose model is cold, runs its handler (``HttpFront``) in a task.
Routes are matched on the raw path, one segment per ``{name}``, then percent-decoded, so ``a%2Fb`` is one segment;
a model name is taken raw and must be canonical (``toolkit.names``): ``digits%5Flogreg`` is refused, so Triton runs
exactly the name that was authorized.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from time import perf_counter
from urllib.parse import unquote

from toolkit.gateway.admission import KSERVE_ENDPOINT
from toolkit.gateway.auth import ANONYMOUS
from toolkit.gateway.bodies import check_infer_request, header_length
from toolkit.gateway.core import FWD_REQUEST, FWD_RESPONSE, GatewayCore
from toolkit.gateway.errors import (
    GatewayError,
    PayloadTooLargeError,
    ServiceUnavailableError,
    ValidationError,
    to_gateway_error,
)
from toolkit.gateway.h1 import H1Connection, Request, Response
from toolkit.gateway.http_front import HttpFront, error_for, kserve_error
from toolkit.gateway.upstream import RawHeaders
from toolkit.names import MODEL_NAME_RE

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]
_SEG = r"([^/]+)"
# The hot path's route takes only a canonical model name (names.MODEL_NAME_RE: the rule, from its one home); any
# other segment falls through to the routes below, whose handler refuses it with the reason (check_model_name).
_NAME = MODEL_NAME_RE.pattern.removesuffix(r"\Z")
_INFER = re.compile(rf"/v2/models/({_NAME})(?:/versions/{_SEG})?/infer")
_FWD_REQUEST = tuple((h.encode(), h.lower().encode()) for h in FWD_REQUEST)  # (name as sent, key in Request.hmap)
_FWD_RESPONSE = {h.lower().encode() for h in FWD_RESPONSE}


def _route(pattern: str) -> re.Pattern[str]:
    """``/v2/models/{model}/{action}`` -> a regex with one named group per ``{name}`` (one raw path segment each)."""
    return re.compile(re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern))


class HttpDispatcher:
    """The invoke port (``admin=False``) or the admin port (``admin=True``); ``dispatch`` is the h1 callback."""

    def __init__(self, front: HttpFront, *, admin: bool = False) -> None:
        self.front = front
        self.core: GatewayCore = front.core
        self.admin = admin
        self._tasks: set[asyncio.Task[None]] = set()
        f = front
        any_ = None
        table: list[tuple[str, frozenset[str] | None, Handler]]
        if admin:
            table = [
                ("/v2/repository/index", frozenset({"POST"}), f.admin_repository),
                ("/v2/repository/models/{model}/{action}", frozenset({"POST"}), f.admin_repository),
                ("/models", frozenset({"GET"}), f.admin_models),
                ("/metrics", frozenset({"GET"}), f.metrics),
                ("/ping", frozenset({"GET"}), f.ping),
            ]
        else:
            table = [
                *(
                    (p, any_, f.kserve_server)
                    for p in ("/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/stats")
                ),
                *(
                    (p, any_, f.kserve_model)
                    for p in (
                        "/v2/models/{model}",
                        "/v2/models/{model}/{action}",
                        "/v2/models/{model}/versions/{version}",
                        "/v2/models/{model}/versions/{version}/{action}",
                    )
                ),
                ("/v2/repository/index", frozenset({"POST"}), f.repository),
                ("/v2/repository/models/{model}/{action}", frozenset({"POST"}), f.repository),
                ("/ping", frozenset({"GET"}), f.ping),
                ("/metrics", frozenset({"GET"}), f.metrics),  # Prometheus scrape: read-only, no model control
                ("/endpoints/{endpoint}/invocations", any_, f.invocations),
                ("/invocations", any_, f.invocations),
            ]
        self.routes = [(_route(p), methods, h) for p, methods, h in table]

    # -- h1 callbacks --------------------------------------------------------------------------------------------------
    def dispatch(self, conn: H1Connection, req: Request) -> None:
        raw = req.raw_path.partition("?")[0]
        if not self.admin and req.method == "POST":
            m = _INFER.fullmatch(raw)
            if m is not None and self._fast_infer(conn, req, m[1]):
                return
        handler: Handler = self.front.not_found
        for rx, methods, h in self.routes:
            m = rx.fullmatch(raw)
            if m is None:
                continue
            if methods is not None and req.method not in methods:
                handler = self._method_not_allowed
                break
            req.match_info = {k: v if k == "model" else unquote(v) for k, v in m.groupdict().items()}
            handler = h
            break
        task = asyncio.get_running_loop().create_task(self._run(conn, handler, req))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def pending(self) -> int:
        """Requests whose handler is still running (a cold load, a slow-path call)."""
        return len(self._tasks)

    async def cancel_all(self) -> None:
        """The drain is over: stop the handlers still running, and wait until they have (nothing left pending)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def reject(self, path: str, status: int, message: str) -> Response:
        """The connection layer's refusals (413 body, 431 head, 400 unparsable, 503 over a connection cap, 408 too
        slow, 505 not HTTP/1.x), shaped for the API the path names."""
        err: GatewayError
        if status == 413:
            err = PayloadTooLargeError(message)
        elif status == 503:
            err = ServiceUnavailableError(message)
        else:
            err = ValidationError(message, status=status)
        self.core.stats.record("kserve" if path.startswith("/v2") else "sagemaker", "", "", err.status)
        return error_for(path, err)

    # -- the slow path -------------------------------------------------------------------------------------------------
    async def _run(self, conn: H1Connection, handler: Handler, req: Request) -> None:
        try:
            resp = await handler(req)
        except asyncio.CancelledError:  # the gateway stopped first: a retryable answer beats a dropped connection
            conn.keep_alive = False
            conn.send_response(error_for(req.path, ServiceUnavailableError("The gateway is stopping; retry.")))
            raise
        except Exception:  # handlers map their own errors: anything here is a bug
            log.exception("gateway handler failed for %s %s", req.method, req.raw_path)
            resp = Response(500, b'{"error": "internal error"}', content_type="application/json")
        conn.send_response(resp)

    async def _method_not_allowed(self, req: Request) -> Response:
        err = GatewayError(f"{req.method} is not allowed on {req.path}", status=405, code="ValidationError")
        return error_for(req.path, err)

    # -- the hot path --------------------------------------------------------------------------------------------------
    def _fast_infer(self, conn: H1Connection, req: Request, model: str) -> bool:
        """Answer a warm model's infer with callbacks; False: not warm (or no manager support), use the handler."""
        core = self.core
        if core.upstream is None or not core.is_up():
            return False
        t0 = perf_counter()
        principal = ANONYMOUS
        hm = req.hmap
        try:
            if b"content-encoding" in hm:
                return False  # inflated by the handler, off the event loop
            # req.headers builds a multidict: only when there is someone to authenticate
            principal = (
                core.identify(req.method, req.raw_path, req.headers, req.body) if core.auth.enabled else ANONYMOUS
            )
            ticket = core.admit_now(principal, KSERVE_ENDPOINT, model)
            if ticket is None:
                return False  # cold (or unknown): the handler loads it, or says why not
            try:  # what Triton must never see (bodies.py): refused before it is forwarded
                check_infer_request(req.body, header_length(hm.get(b"inference-header-content-length"), req.body))
            except Exception:
                ticket.release()
                raise
        except Exception as exc:
            err = to_gateway_error(exc)
            known = model if core.models.knows(model) else ""  # label values stay bounded: no client-made names
            core.stats.record(
                "kserve",
                KSERVE_ENDPOINT,
                known,
                err.status,
                perf_counter() - t0,
                None,
                None,
                principal.name,
                hm.get(b"traceparent") if core.stats.access else None,
            )
            conn.send_response(kserve_error(err))
            return True
        up = core.upstream
        fwd = b"".join(b"%s: %s\r\n" % (name, v) for name, key in _FWD_REQUEST if (v := hm.get(key)) is not None)
        data = b"POST %s HTTP/1.1\r\n%s%sContent-Length: %d\r\n\r\n%s" % (
            req.raw_path.encode("latin-1"),
            up.host_header,
            fwd,
            len(req.body),
            req.body,
        )

        def done(status: int, raw: RawHeaders, body: bytes) -> None:
            t1 = perf_counter()
            status = core.answered(model, status, body)
            conn.send_raw(status, b"".join(b"%s: %s\r\n" % (k, v) for k, v in raw if k.lower() in _FWD_RESPONSE), body)
            ticket.release()  # bookkeeping after the answer is on its way: it is off the client's critical path
            stats.hot(("kserve", KSERVE_ENDPOINT, model, status), t1 - t0, t1 - t_up)
            if stats.access is not None:
                stats.log(("kserve", KSERVE_ENDPOINT, model, status), t1 - t0, t1 - t_up, None, principal.name, trace)

        def failed(exc: BaseException) -> None:
            ticket.release()
            err = to_gateway_error(exc, timeout_s=core.options.timeout_s)
            t1 = perf_counter()
            stats.record("kserve", KSERVE_ENDPOINT, model, err.status, t1 - t0, t1 - t_up, None, principal.name, trace)
            conn.send_response(kserve_error(err))

        core.hot_path += 1
        stats = core.stats
        trace = hm.get(b"traceparent") if stats.access else None
        t_up = perf_counter()
        up.send(data, done, failed)
        return True
