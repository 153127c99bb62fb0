"""HTTP handlers: KServe v2 passthrough, the SageMaker runtime API, and the separate admin API.

Bodies are forwarded as bytes (JSON or the binary tensor extension alike); only a serial endpoint parses the JSON
header of intermediate responses, to feed one step's outputs to the next step as inputs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from time import perf_counter
from typing import Any

import orjson

from toolkit.gateway.admission import KSERVE_ENDPOINT, Ticket, Use, target_context
from toolkit.gateway.auth import INVOKE, METRICS, Principal
from toolkit.gateway.bodies import check_infer_request, header_length, inflate
from toolkit.gateway.core import Forwarded, GatewayCore, triton_message
from toolkit.gateway.errors import (
    GatewayError,
    ModelError,
    NotFoundError,
    PayloadTooLargeError,
    ValidationError,
    to_gateway_error,
)
from toolkit.gateway.h1 import Request, Response
from toolkit.gateway.mux_rewrite import from_host, stats_refused
from toolkit.gateway.telemetry import Timing
from toolkit.names import check_model_name

SAGEMAKER_BINARY = "application/vnd.sagemaker-triton.binary+json"
TRACE_HEADERS = ("traceparent", "tracestate")  # W3C trace context, forwarded to Triton on every route
Handler = Callable[[Request], Awaitable[Response]]

log = logging.getLogger(__name__)


def kserve_error(err: GatewayError) -> Response:
    return Response(
        status=err.status,
        body=json.dumps({"error": err.message}).encode(),
        content_type="application/json",
        headers={"x-amzn-ErrorType": err.code},
    )


def sagemaker_error(err: GatewayError) -> Response:
    body: dict[str, object] = {"__type": err.code, "message": err.message}
    if isinstance(err, ModelError):
        body.update(OriginalStatusCode=err.original_status, OriginalMessage=err.message)
    return Response(
        status=err.status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers={"x-amzn-ErrorType": err.code, "x-amzn-RequestId": str(uuid.uuid4())},
    )


def error_for(path: str, err: GatewayError) -> Response:
    """KServe's error shape under /v2, SageMaker's elsewhere (for answers given before any handler runs)."""
    return kserve_error(err) if path.startswith("/v2") else sagemaker_error(err)


def _reply(f: Forwarded, extra: dict[str, str] | None = None) -> Response:
    headers = dict(f.headers)
    if extra:
        headers.update(extra)
    return Response(status=f.status, body=f.body, headers=headers)


def parse_sagemaker_content_type(ctype: str, body: bytes) -> dict[str, str]:
    """Request headers for Triton from a SageMaker Content-Type; a binary header size that lies is a 400."""
    base, _, params = ctype.partition(";")
    base = base.strip().lower()
    if base in ("", "application/json"):
        return {"Content-Type": "application/json"}
    if base != SAGEMAKER_BINARY:
        raise ValidationError(
            f"Unsupported Content-Type {ctype!r}: use application/json or {SAGEMAKER_BINARY};json-header-size=N"
        )
    size: str | None = None
    for p in params.split(";"):
        k, _, v = p.partition("=")
        if k.strip().lower() == "json-header-size":
            size = v.strip()
    if size is None or not (size.isascii() and size.isdigit()):
        raise ValidationError(f"{SAGEMAKER_BINARY} needs json-header-size=N (a non-negative integer)")
    n = header_length(size, body)
    return {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(n)}


def next_step_request(f: Forwarded) -> tuple[bytes, dict[str, str]]:
    """Serial endpoints: turn one step's response into the next step's request (outputs become inputs by name)."""
    n = int(f.headers.get("Inference-Header-Content-Length") or len(f.body))
    header = json.loads(f.body[:n])
    inputs = []
    for o in header.get("outputs", []):
        item = {"name": o["name"], "datatype": o["datatype"], "shape": o["shape"]}
        if "data" in o:
            item["data"] = o["data"]
        if o.get("parameters", {}).get("binary_data_size") is not None:
            item["parameters"] = {"binary_data_size": o["parameters"]["binary_data_size"]}
        inputs.append(item)
    head = json.dumps({"inputs": inputs}).encode()
    tail = f.body[n:]
    if tail:
        return head + tail, {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(head)),
        }
    return head, {"Content-Type": "application/json"}


# SageMaker request headers handed to the model as KServe request parameters (python models read them with
# ``json.loads(request.parameters())``); Custom-Attributes also comes back in the response, as from a container.
FORWARDED_HEADERS = {
    "X-Amzn-SageMaker-Custom-Attributes": "sagemaker_custom_attributes",
    "X-Amzn-SageMaker-Inference-Id": "sagemaker_inference_id",
}


def with_request_parameters(body: bytes, fwd: dict[str, str], params: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    """Add request-level parameters to a KServe v2 body (JSON, or the JSON header of a binary body). Only requests
    that carry such headers pay for the re-encoding; the others are forwarded untouched."""
    if not params:
        return body, fwd
    n = int(fwd.get("Inference-Header-Content-Length") or len(body))
    try:
        header = orjson.loads(body[:n])
    except orjson.JSONDecodeError as exc:
        raise ValidationError(f"the request body is not KServe v2 JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ValidationError("the request body must be a KServe v2 JSON object")
    existing = header.get("parameters") or {}
    if not isinstance(existing, dict):
        raise ValidationError('the request\'s "parameters" must be a JSON object')
    header["parameters"] = {**existing, **params}
    head = orjson.dumps(header)
    if "Inference-Header-Content-Length" in fwd:
        return head + body[n:], {**fwd, "Inference-Header-Content-Length": str(len(head))}
    return head, fwd


class HttpFront:
    def __init__(self, core: GatewayCore) -> None:
        self.core = core

    async def _sent(self, request: Request) -> bytes:
        """The request's body as sent (what a SigV4 signature covers: clients sign the bytes they send), bounded by
        the body limit. It is authenticated before ``_inflated`` spends any work on it."""
        limit = self.core.options.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise PayloadTooLargeError(f"Request body of {request.content_length} bytes exceeds the limit of {limit}.")
        return await request.read()  # the connection layer has already refused a chunked body over the limit

    async def _inflated(self, request: Request, sent: bytes) -> bytes:
        """The body Triton gets: inflated if it was sent compressed (bounded by the body limit, in a worker thread)."""
        encoding = request.headers.get("Content-Encoding")
        if encoding is not None and encoding.strip().lower() not in ("", "identity"):
            return await asyncio.to_thread(inflate, sent, encoding, self.core.options.max_body_bytes)
        return sent

    def identify(self, request: Request, body: bytes) -> Principal:
        return self.core.identify(request.method, request.raw_path, request.headers, body)

    # -- KServe v2 -----------------------------------------------------------------------------------------------------
    def _record(self, api: str, endpoint: str, model: str, status: int, request: Request, t: Timing) -> None:
        """Count (and, for an invocation, time) an answered request; names a client made up are not labels."""
        core = self.core
        if status != 200 and model and not core.models.knows(model):
            model = ""
        seconds = perf_counter() - t.start if t.timed else None
        trace = request.hmap.get(b"traceparent") if core.stats.access else None
        core.stats.record(api, endpoint, model, status, seconds, t.upstream, t.cold, t.principal, trace)

    async def _admit_timed(
        self, t: Timing, principal: Principal, endpoint: str, chain: tuple[str, ...], **kw: Any
    ) -> Ticket:
        """``core.admit``, timing the wait when a model of the chain was cold (the cold-load histogram)."""
        models = self.core.models
        cold = not all(models.is_resident(m) for m in chain)
        t0 = perf_counter()
        ticket = await self.core.admit(principal, endpoint, chain, **kw)
        if cold:
            t.cold = perf_counter() - t0
        return ticket

    async def _forward_timed(
        self, t: Timing, model: str, body: bytes, headers: Mapping[str, str], path: str | None = None
    ) -> Forwarded:
        t0 = perf_counter()
        try:
            return await self.core.forward_infer(model, body, headers, path)
        finally:
            t.upstream = (t.upstream or 0.0) + perf_counter() - t0

    async def kserve_model(self, request: Request) -> Response:
        core = self.core
        t = Timing()
        model = ""
        try:
            mi = request.match_info
            model, action, version = check_model_name(mi["model"]), mi.get("action", ""), mi.get("version")
            if action not in ("", "infer", "ready", "config", "stats"):
                raise NotFoundError(f"Unknown route {request.path}")
            want = "POST" if action == "infer" else "GET"
            if request.method != want:
                raise GatewayError(f"{request.path} takes {want}", status=405, code="ValidationError")
            sent = await self._sent(request) if action == "infer" else b""
            core.require_up()
            principal = self.identify(request, sent)
            body = await self._inflated(request, sent)
            t.principal = principal.name
            path = request.raw_path
            if action == "infer":
                t.timed = True
                core.authorize(principal, KSERVE_ENDPOINT, target_context(model))  # who may ask: 403 before 400
                check_infer_request(body, header_length(request.headers.get("Inference-Header-Content-Length"), body))
                ticket = await self._admit_timed(t, principal, KSERVE_ENDPOINT, (model,))
                try:
                    f = await self._forward_timed(t, model, body, request.headers, path)
                finally:
                    ticket.release()
            else:  # ready / stats never load a model; metadata / config load it (no invocation is counted)
                await core.admit(
                    principal, KSERVE_ENDPOINT, model, Use.LOOK if action in ("ready", "stats") else Use.LOAD
                )
                host = core.mux_route(model)
                if host is None:
                    f = await core.forward("GET", path, None, request.headers)
                else:
                    f = await self._host_get(model, host, action, request)
            del version
        except Exception as exc:
            err = to_gateway_error(exc)
            self._record("kserve", KSERVE_ENDPOINT, model, err.status, request, t)
            return kserve_error(err)
        self._record("kserve", KSERVE_ENDPOINT, model, f.status, request, t)
        return _reply(f)

    async def _host_get(self, model: str, host: str, action: str, request: Request) -> Forwarded:
        """Readiness, metadata and config of a multiplexed model: its host's, under the model's name. Statistics are
        refused: the host's count every model it serves (per-model counts are in /metrics)."""
        if action == "stats":
            raise stats_refused(model)
        f = await self.core.forward("GET", f"/v2/models/{host}" + (f"/{action}" if action else ""), None, {})
        f.body = from_host(model, f.body, f.headers)
        return f

    async def kserve_server(self, request: Request) -> Response:
        """/v2, /v2/health/*, /v2/models/stats: forwarded, but answered at once (truthfully) when Triton is down."""
        core = self.core
        path = request.path
        if path == "/v2/health/live":
            return Response(status=200)  # the gateway is live; readiness tells about Triton
        try:
            if request.method != "GET":
                raise GatewayError(f"{path} takes GET", status=405, code="ValidationError")
            core.require_up()
            # /v2 and the statistics are for callers with credentials; readiness stays open (load balancers probe it)
            principal = self.identify(request, b"") if path != "/v2/health/ready" else None
            if path == "/v2/models/stats" and principal is not None:  # as gRPC: an invoke Allow on the endpoint
                core.authorize(principal, KSERVE_ENDPOINT, {"sagemaker:TargetModel": ""})
            f = await core.forward("GET", request.raw_path, None, request.headers)
            if path == "/v2/models/stats" and principal is not None and core.auth.enabled and f.status == 200:
                f.body = self._visible_stats(principal, f.body)
        except Exception as exc:
            err = to_gateway_error(exc)
            if path == "/v2/health/ready":
                return Response(status=err.status)
            return kserve_error(err)
        return _reply(f)

    def _visible_stats(self, principal: Principal, body: bytes) -> bytes:
        """Every model's statistics, less the models this principal may not invoke (their names are not told)."""
        core = self.core
        doc = orjson.loads(body)
        arn = core.auth.endpoint_arn(KSERVE_ENDPOINT)
        doc["model_stats"] = [
            m
            for m in doc.get("model_stats", [])
            if core.auth.allowed(principal, INVOKE, arn, target_context(str(m.get("name", ""))))
        ]
        return orjson.dumps(doc)

    async def repository(self, request: Request) -> Response:
        """The repository API on the invoke port. The index only reads, so every caller gets it, listing the models
        it may invoke (``tritonctl status``/``models list`` through the gateway); an admin gets every model, and
        load and unload need an explicit admin Allow."""
        try:
            sent = await self._sent(request)
            principal = self.identify(request, sent)
            body = await self._inflated(request, sent)
            if request.match_info.get("model") is None and not self.core.may_admin(principal):
                return await self._visible_index(principal, request, body)
            self.core.check_admin(principal)
            return await self._admin_repository(request, body)
        except Exception as exc:
            return kserve_error(to_gateway_error(exc))

    async def _visible_index(self, principal: Principal, request: Request, body: bytes) -> Response:
        """Triton's repository index less the models this principal may not invoke (their names are not told)."""
        core = self.core
        core.require_up()
        f = await core.forward("POST", "/v2/repository/index", body or b"{}", request.headers)
        if f.status == 200 and core.auth.enabled:
            arn = core.auth.endpoint_arn(KSERVE_ENDPOINT)
            allowed = core.auth.allowed
            index = orjson.loads(f.body)
            visible = [m for m in index if allowed(principal, INVOKE, arn, target_context(str(m.get("name", ""))))]
            f.body = orjson.dumps(visible)
        return _reply(f)

    # -- SageMaker runtime ---------------------------------------------------------------------------------------------
    async def ping(self, request: Request) -> Response:
        return Response(status=200 if self.core.is_up() else 503)

    async def invocations(self, request: Request) -> Response:
        core = self.core
        h = request.headers
        t = Timing(timed=True)
        name: str | None = ""
        model = ""
        try:
            if request.method != "POST":
                raise GatewayError("invocations take POST", status=405, code="ValidationError")
            name = request.match_info.get("endpoint")
            if name is None:  # the container contract's bare /invocations: the only endpoint, if there is one
                names = core.router.names()
                if len(names) != 1:
                    raise ValidationError(
                        "POST /invocations needs exactly one configured endpoint; use /endpoints/NAME"
                    )
                name = names[0]
            sent = await self._sent(request)
            core.require_up()
            principal = self.identify(request, sent)
            body = await self._inflated(request, sent)
            t.principal = principal.name
            route = core.router.resolve(
                name,
                h.get("X-Amzn-SageMaker-Target-Model"),
                h.get("X-Amzn-SageMaker-Target-Container-Hostname"),
                h.get("X-Amzn-SageMaker-Target-Variant"),
            )
            model = route.model if len(route.chain) == 1 else ">".join(route.chain)
            core.authorize(principal, name, route.context)  # who may ask: 403 before 400
            fwd = parse_sagemaker_content_type(h.get("Content-Type", ""), body)
            ihcl = fwd.get("Inference-Header-Content-Length")
            check_infer_request(body, None if ihcl is None else int(ihcl))
            extra = {param: h[header] for header, param in FORWARDED_HEADERS.items() if header in h}
            step = with_request_parameters(body, fwd, extra)  # a malformed body is refused before any load
            ticket = await self._admit_timed(t, principal, name, route.chain, use=Use.INVOKE, context=route.context)
            trace = {k: v for k in TRACE_HEADERS if (v := h.get(k)) is not None}  # every step joins the trace
            try:
                for i, step_model in enumerate(route.chain):
                    f = await self._forward_timed(t, step_model, step[0], {**step[1], **trace})
                    if f.status != 200:
                        msg = triton_message(f.body)
                        kind = "client" if f.status < 500 else "server"
                        raise ModelError(
                            f'Received {kind} error ({f.status}) from model {step_model} with message "{msg}".',
                            original_status=f.status,
                        )
                    if i + 1 < len(route.chain):
                        step = with_request_parameters(*next_step_request(f), extra)
            finally:
                ticket.release()
        except Exception as exc:
            err = to_gateway_error(exc, sagemaker=True)
            known = bool(name) and name in core.router.specs
            self._record("sagemaker", (name or "") if known else "", model if known else "", err.status, request, t)
            return sagemaker_error(err)
        self._record("sagemaker", name, model, 200, request, t)
        n = f.headers.get("Inference-Header-Content-Length")
        ctype = f"{SAGEMAKER_BINARY};json-header-size={n}" if n else "application/json"
        headers = {"Content-Type": ctype, "x-Amzn-Invoked-Production-Variant": route.variant}
        if "X-Amzn-SageMaker-Custom-Attributes" in h:
            headers["X-Amzn-SageMaker-Custom-Attributes"] = h["X-Amzn-SageMaker-Custom-Attributes"]
        return Response(status=200, body=f.body, headers=headers)

    async def not_found(self, request: Request) -> Response:
        err = NotFoundError(f"Unknown route {request.method} {request.path}")
        self.core.stats.record("other", "", "", 404)
        if request.path.startswith("/v2"):
            return kserve_error(err)
        return sagemaker_error(ValidationError(f"Unknown route {request.method} {request.path}", status=404))

    # -- admin ---------------------------------------------------------------------------------------------------------
    async def _admin_repository(self, request: Request, body: bytes) -> Response:
        core = self.core
        core.require_up()
        model, action = request.match_info.get("model"), request.match_info.get("action")
        if model is not None:
            check_model_name(model)
        if model is None:  # index
            return _reply(await core.forward("POST", "/v2/repository/index", body or b"{}", request.headers))
        if action == "load":
            await core.models.ensure_loaded(model, timeout=core.options.timeout_s)
        elif action == "unload":
            await core.models.unload(model)
        else:
            raise NotFoundError(f"Unknown repository action {action!r}")
        return Response(status=200, content_type="application/json", body=b"{}")

    async def admin_repository(self, request: Request) -> Response:
        try:
            sent = await self._sent(request)
            if self.core.auth.enabled:
                self.core.check_admin(self.identify(request, sent))
            body = await self._inflated(request, sent)
            return await self._admin_repository(request, body)
        except Exception as exc:
            return kserve_error(to_gateway_error(exc))

    async def admin_models(self, request: Request) -> Response:
        if self.core.auth.enabled:
            try:
                self.core.check_admin(self.identify(request, b""), METRICS)
            except Exception as exc:
                return kserve_error(to_gateway_error(exc))
        await self.core.mux_fresh()
        states = getattr(self.core.models, "states", None)
        rows = [s if isinstance(s, dict) else getattr(s, "__dict__", str(s)) for s in (states() if states else [])]
        return Response.json(
            {"triton_up": self.core.is_up(), "models": rows}, dumps=lambda o: json.dumps(o, default=str)
        )

    async def metrics(self, request: Request) -> Response:
        """Prometheus scrape. With principals configured it needs credentials (an API key as a Bearer token is what
        Prometheus sends) and an Allow on ``metrics`` or ``admin``: model names and traffic are not public."""
        if self.core.auth.enabled:
            try:
                self.core.check_admin(self.identify(request, b""), METRICS)
            except Exception as exc:
                return kserve_error(to_gateway_error(exc))
        await self.core.mux_fresh()
        body, content_type = self.core.metrics_text(request.headers.get("Accept", ""))
        return Response(status=200, body=body, headers={"Content-Type": content_type})


_ANON = Principal("anonymous")
