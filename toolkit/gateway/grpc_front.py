"""gRPC passthrough for ``inference.GRPCInferenceService``: raw bytes in, raw bytes out.

Generic handlers with no (de)serializers forward each message unchanged over one pooled channel to Triton, so
``tritonclient.grpc`` works as against Triton itself. Only the model name is read (protobuf field 1 of the model
requests), for lazy loading and the policy check; the repository methods need an admin Allow, shared-memory
registration is refused (it cannot work across a network hop).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from multidict import CIMultiDict

from toolkit.gateway.auth import INVOKE, Principal
from toolkit.gateway.core import KSERVE_ENDPOINT, GatewayCore, to_gateway_error
from toolkit.gateway.errors import GatewayError, PayloadTooLargeError, ServiceUnavailableError, ValidationError

SERVICE = "inference.GRPCInferenceService"
SERVER_METHODS = ("ServerLive", "ServerReady", "ServerMetadata")
MODEL_METHODS = ("ModelReady", "ModelMetadata", "ModelConfig", "ModelStatistics", "ModelInfer")
LOADING_METHODS = ("ModelMetadata", "ModelConfig", "ModelInfer")
ADMIN_METHODS = ("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload")
REFUSED = (
    "SystemSharedMemoryStatus",
    "SystemSharedMemoryRegister",
    "SystemSharedMemoryUnregister",
    "CudaSharedMemoryStatus",
    "CudaSharedMemoryRegister",
    "CudaSharedMemoryUnregister",
    "TraceSetting",
    "LogSettings",
)


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[i]
        result |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return result, i
        shift += 7


class NeedMore(Exception):
    """The message's bytes seen so far do not yet decide its model name."""


def model_of(body: bytes, complete: bool) -> str:
    """Field 1 (the model name) of a serialized request, from a prefix of it; NeedMore until it is decided.

    Fields are scanned in order: protobuf serializers write them by number, so field 1 comes first and a few hundred
    bytes decide it; a field before it is skipped by its length, and a message without field 1 decides "" at its end.
    """
    i, n = 0, len(body)
    try:
        while i < n:
            key, i = _varint(body, i)
            field, wire = key >> 3, key & 7
            if wire == 0:
                _, i = _varint(body, i)
            elif wire == 1:
                i += 8
            elif wire == 5:
                i += 4
            elif wire == 2:
                size, i = _varint(body, i)
                if field == 1:
                    if i + size > n:
                        raise NeedMore
                    return body[i : i + size].decode()
                i += size
            else:
                raise ValueError(f"unsupported wire type {wire}")
    except ValueError:
        if complete:
            raise
        raise NeedMore from None
    if i > n or not complete:
        if complete:
            raise ValueError("truncated field")
        raise NeedMore
    return ""


class _Refused(GatewayError):
    status = 501
    code = "ValidationError"
    grpc_code = "UNIMPLEMENTED"


def _grpc_code(err: GatewayError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, err.grpc_code, grpc.StatusCode.INTERNAL)


class GrpcFront:
    def __init__(self, core: GatewayCore) -> None:
        self.core = core
        self.server: grpc.aio.Server | None = None
        self.channel: grpc.aio.Channel | None = None
        self.calls: dict[str, Any] = {}

    async def start(self, host: str, port: int) -> int:
        size = self.core.options.max_body_bytes
        opts = [("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", -1)]
        self.channel = grpc.aio.insecure_channel(
            self.core.triton.grpc,
            options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)],
        )
        handlers: dict[str, grpc.RpcMethodHandler] = {}
        for m in SERVER_METHODS + MODEL_METHODS + ADMIN_METHODS + REFUSED:
            self.calls[m] = self.channel.unary_unary(f"/{SERVICE}/{m}")
            handlers[m] = grpc.unary_unary_rpc_method_handler(self._handler(m))
        handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(self._stream)
        self.server = grpc.aio.server(options=opts)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        bound = self.server.add_insecure_port(f"{host}:{port}")
        await self.server.start()
        return bound

    async def stop(self, grace: float = 1.0) -> None:
        if self.server is not None:
            await self.server.stop(grace=grace)
        if self.channel is not None:
            await self.channel.close()

    def _principal(self, context: grpc.aio.ServicerContext, method: str, request: bytes) -> Principal:
        md = CIMultiDict((k, v) for k, v in (context.invocation_metadata() or ()) if isinstance(v, str))
        return self.core.auth.authenticate("POST", f"/{SERVICE}/{method}", md, request)

    def _handler(self, method: str):  # type: ignore[no-untyped-def]
        call = self.calls[method]
        core = self.core

        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            err: GatewayError | None = None
            try:
                if method in REFUSED:
                    raise _Refused(f"{method} is not available through the gateway")
                core.require_up()
                principal = self._principal(context, method, request) if core.auth.enabled else None
                if method in ADMIN_METHODS:
                    core.check_admin(principal or Principal("anonymous"))
                if method not in MODEL_METHODS:
                    return await call(request, timeout=core.options.timeout_s)
                try:
                    model = model_of(request, complete=True)
                except (ValueError, UnicodeDecodeError) as exc:
                    raise ValidationError(f"malformed {method} request: {exc}") from None
                if principal is not None:
                    core.auth.authorize(
                        principal, INVOKE, core.auth.endpoint_arn(KSERVE_ENDPOINT), {"sagemaker:TargetModel": model}
                    )
                if method not in LOADING_METHODS:
                    return await call(request, timeout=core.options.timeout_s)
                if method != "ModelInfer":  # metadata / config: loaded first, but no invocation to count
                    await core.models.ensure_loaded(model, timeout=core.options.load_wait_s)
                    return await call(request, timeout=core.options.timeout_s)
                core.acquire()
                try:
                    async with core.models.serving(model, timeout=core.options.load_wait_s):
                        return await call(request, timeout=core.options.timeout_s)
                finally:
                    core.release()
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    err = ServiceUnavailableError(f"Triton is unavailable: {exc.details()}")
                else:
                    await context.abort(exc.code(), exc.details() or "")
            except Exception as exc:
                err = to_gateway_error(exc)
            assert err is not None
            await context.abort(_grpc_code(err), err.message)
            raise AssertionError("unreachable")

        return handle

    async def _stream(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        """ModelStreamInfer: each message's model is loaded (and authorized) before it is forwarded."""
        core = self.core
        if not core.is_up():
            await context.abort(grpc.StatusCode.UNAVAILABLE, "Triton is restarting; retry shortly.")
        assert self.channel is not None
        principal: Principal | None = None
        md = [(k, v) for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)]
        # A failure inside upstream() (denied, unknown model, load failed) makes grpc cancel the forwarded call, so
        # the loop below sees CancelledError: the first such error is kept to answer with the status it deserves.
        failed: list[BaseException] = []

        async def upstream() -> AsyncIterator[bytes]:
            try:
                async for req in requests:
                    model = model_of(req, complete=True)
                    if principal is not None:
                        core.auth.authorize(
                            principal, INVOKE, core.auth.endpoint_arn(KSERVE_ENDPOINT), {"sagemaker:TargetModel": model}
                        )
                    # each streamed request is an invocation: loaded and counted. The in-flight hold ends here, so a
                    # model may be evicted while a streamed request is still inside Triton (which then errors).
                    async with core.models.serving(model, timeout=core.options.load_wait_s):
                        pass
                    yield req
            except Exception as exc:
                failed.append(exc)
                raise

        try:
            if core.auth.enabled:
                principal = core.auth.authenticate("POST", f"/{SERVICE}/ModelStreamInfer", CIMultiDict(md), b"")
            call = self.channel.stream_stream(f"/{SERVICE}/ModelStreamInfer")(upstream())
            try:
                async for resp in call:
                    yield resp
            except asyncio.CancelledError:
                if not failed:
                    raise  # the client went away
                err = to_gateway_error(failed[0])
                await context.abort(_grpc_code(err), err.message)
        except grpc.aio.AbortError:
            raise  # already answered with its status
        except grpc.aio.AioRpcError as exc:
            await context.abort(exc.code(), exc.details() or "")
        except PayloadTooLargeError as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, exc.message)
        except Exception as exc:
            err = to_gateway_error(exc)
            await context.abort(_grpc_code(err), err.message)
