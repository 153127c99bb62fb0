"""The gateway's one error model: typed refusals shaped like the SageMaker runtime's, and the mapping of every
failure below the gateway onto them (``to_gateway_error``), for every route and protocol.

botocore's rest-json parser reads the error code from the ``x-amzn-ErrorType`` header (and ``__type`` in the body),
so every refusal carries both; the KServe routes reuse the same objects and render Triton's ``{"error": ...}`` body;
gRPC answers with ``grpc_code``.
"""

from __future__ import annotations

import asyncio
import logging
import re

from toolkit.errors import TritonctlError, TritonUnavailableError
from toolkit.mme.errors import (
    InsufficientMemoryError,
    LoadTimeoutError,
    ModelLoadError,
    ModelNotFoundError,
    TritonDownError,
)
from toolkit.names import ModelNameError

log = logging.getLogger(__name__)


class GatewayError(TritonctlError):
    """A request the gateway refuses; ``status`` and ``code`` decide the HTTP (and gRPC) answer."""

    status = 500
    code = "InternalFailure"
    grpc_code = "INTERNAL"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code


class ValidationError(GatewayError):
    """Missing or unknown target, malformed body or headers (SageMaker: 400 ValidationError)."""

    status = 400
    code = "ValidationError"
    grpc_code = "INVALID_ARGUMENT"


class NotFoundError(GatewayError):
    """Unknown endpoint, model or route."""

    status = 404
    code = "ValidationError"
    grpc_code = "NOT_FOUND"


class PayloadTooLargeError(GatewayError):
    status = 413
    code = "ValidationError"
    grpc_code = "RESOURCE_EXHAUSTED"


class ModelError(GatewayError):
    """Triton (the 'container') rejected the request; the message is Triton's own (SageMaker: 424 ModelError)."""

    status = 424
    code = "ModelError"
    grpc_code = "INVALID_ARGUMENT"

    def __init__(self, message: str, *, original_status: int = 400) -> None:
        super().__init__(message)
        self.original_status = original_status


class ModelNotReadyError(GatewayError):
    """The model's load outlasted the wait budget (SageMaker: 429 ModelNotReadyException); retry later."""

    status = 429
    code = "ModelNotReadyException"
    grpc_code = "UNAVAILABLE"


class InsufficientStorageError(GatewayError):
    """The model cannot fit even after eviction (larger than the whole budget, or every resident model pinned): HTTP
    507, what SageMaker's Triton front end answers when a model cannot be loaded for want of memory, on every HTTP
    route; gRPC RESOURCE_EXHAUSTED. Retrying does not help until the budget or the resident set changes."""

    status = 507
    code = "InsufficientStorage"
    grpc_code = "RESOURCE_EXHAUSTED"


class ThrottlingError(GatewayError):
    """More requests in flight than ``max_concurrency``: refuse now instead of queueing without bound."""

    status = 429
    code = "ThrottlingException"
    grpc_code = "RESOURCE_EXHAUSTED"


class ServiceUnavailableError(GatewayError):
    """Triton is down or restarting: answered at once, never after a hang."""

    status = 503
    code = "ServiceUnavailable"
    grpc_code = "UNAVAILABLE"


class TimeoutError_(GatewayError):
    """Triton did not answer within the request timeout."""

    status = 504
    code = "ModelError"
    grpc_code = "DEADLINE_EXCEEDED"


class AuthError(GatewayError):
    """Authentication failed (missing, unknown or bad credentials)."""

    status = 403
    code = "UnrecognizedClientException"
    grpc_code = "UNAUTHENTICATED"


class AccessDeniedError(GatewayError):
    """An authenticated principal is not allowed the action on the resource (IAM semantics)."""

    status = 403
    code = "AccessDeniedException"
    grpc_code = "PERMISSION_DENIED"


class GatewayConfigError(TritonctlError):
    """The gateway's configuration (auth file, endpoints) is invalid."""


class UpstreamError(ConnectionError):
    """Triton closed or broke the connection, or sent something that is not HTTP/1.1."""


class StoppingError(UpstreamError):
    """The pool was closed (the gateway is stopping) with this request unanswered."""

    def __init__(self) -> None:
        super().__init__("the gateway is stopping")


# What SageMaker's Triton front end (sagemaker_server.cc, SageMakerMMECheckOOMError) reads as "out of memory" in a
# failed load's message, answering 507 instead of 400: the same load failure means the same thing to a client here.
_OOM = re.compile(
    r"CUDA out of memory|CUDA_OUT_OF_MEMORY|[Oo]ut of memory|Out Of Memory|MemoryError|OutOfMemory|\bOOM\b"
    r"|tensor is not initialized|CNMEM_STATUS_OUT_OF_MEMORY|CUDNN_STATUS_NOT_INITIALIZED|CUBLAS_STATUS_ALLOC_FAILED"
    r"|CUBLAS_STATUS_NOT_INITIALIZED|[Ff]ailed to allocate memory|No space left on device"
)
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:/[^\s'\"/:,;)]+){2,}/?")


def public_reason(reason: str) -> str:
    """What a client may read of a failure: its first line, with file system paths replaced (no server layout, no
    traceback); the operator's log keeps the whole text."""
    first = next((line.strip() for line in reason.splitlines() if line.strip()), "unknown error")
    return _PATH.sub("<path>", first)[:300]


def to_gateway_error(exc: BaseException, *, sagemaker: bool = False, timeout_s: float | None = None) -> GatewayError:
    """Every failure below the gateway becomes one typed, client-facing error."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, ModelNameError):
        return ValidationError(str(exc))
    if isinstance(exc, ModelNotFoundError):
        return ValidationError(str(exc)) if sagemaker else NotFoundError(str(exc))
    if isinstance(exc, LoadTimeoutError):
        return ModelNotReadyError(str(exc))
    if isinstance(exc, StoppingError):
        return ServiceUnavailableError("The gateway is stopping; retry.")
    if isinstance(exc, (TritonDownError, TritonUnavailableError)):
        return ServiceUnavailableError(str(exc))
    if isinstance(exc, InsufficientMemoryError) or (isinstance(exc, ModelLoadError) and _OOM.search(exc.reason)):
        log.warning("model %s cannot be loaded: %s", exc.model, exc.reason)
        return InsufficientStorageError(f"Model {exc.model} cannot be loaded: {public_reason(exc.reason)}")
    if isinstance(exc, ModelLoadError):  # the whole reason (paths, tracebacks) is for the operator's log only
        log.warning("model %s failed to load: %s", exc.model, exc.reason)
        return ModelError(f"Model {exc.model} failed to load: {public_reason(exc.reason)}", original_status=500)
    if isinstance(exc, asyncio.TimeoutError):
        within = f"{timeout_s:g} s" if timeout_s is not None else "the request timeout"
        return TimeoutError_(f"Triton did not answer within {within}")
    if isinstance(exc, ConnectionError | OSError):
        return ServiceUnavailableError(f"Triton is unavailable: {exc}")
    log.exception("unexpected gateway error", exc_info=exc)  # a bug: the client sees 500, the operator the traceback
    return GatewayError(f"internal error: {type(exc).__name__}")
