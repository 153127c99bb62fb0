"""What the gateway's gRPC port serves of ``inference.GRPCInferenceService``, method by method.

One table for the front and its policy: server calls pass; model calls are authorized on the model their message
names (and the loading ones load it first); repository calls need an admin Allow; shared memory, tracing and log
settings are refused (shared memory cannot work across a network hop; the others change the whole server).
"""

from __future__ import annotations

from toolkit.gateway.errors import GatewayError

SERVICE = "inference.GRPCInferenceService"
PREFIX = f"/{SERVICE}/"
STREAM = "ModelStreamInfer"
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
SCANNED = (*MODEL_METHODS, STREAM)  # calls whose messages name a model: every message of theirs is read
KNOWN = frozenset((*SERVER_METHODS, *ADMIN_METHODS, *REFUSED, *SCANNED))


class UnimplementedError(GatewayError):
    """A method the gateway does not serve (unknown, or refused by the table above)."""

    status = 501
    code = "ValidationError"
    grpc_code = "UNIMPLEMENTED"


def method_of(path: str) -> str:
    return path[len(PREFIX) :] if path.startswith(PREFIX) else path
