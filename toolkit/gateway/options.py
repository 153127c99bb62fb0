"""The gateway's options: ports, limits and policies, in one typed object (what ``ServeConfig`` fills in).

Kept apart from the core so that the admission rules (``admission``) and the core can both read it without
importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from toolkit.gateway.auth import AuthConfig
from toolkit.spec.models import EndpointSpec

MiB = 1024 * 1024


@dataclass
class GatewayOptions:
    """Ports (0 = a free one, None = disabled) and limits. Defaults follow SageMaker's runtime limits."""

    host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_port: int | None = None
    admin_port: int | None = None
    max_body_bytes: int = 6 * MiB
    timeout_s: float = 60.0
    max_concurrency: int = 256
    load_wait_s: float = 30.0  # longer than this waiting for a cold model -> 429 ModelNotReadyException
    drain_s: float = 10.0  # on stop, requests already received get this long to be answered
    endpoints: list[EndpointSpec] = field(default_factory=list)
    auth: AuthConfig = field(default_factory=AuthConfig)
    repository: Path | None = None
    max_connections: int = 4096  # open client connections per port (gRPC: each also holds one to Triton)
    max_connections_per_client: int = 512  # per peer address (0 = no cap: behind a proxy every client is one address)
    keepalive_s: float = 75.0  # an idle HTTP keep-alive connection is closed after this
    head_timeout_s: float = 30.0  # an HTTP request head must arrive within this of its first byte (else 408)
    request_read_timeout_s: float = 60.0  # a whole HTTP request (body included) within this of its first byte
    grpc_idle_s: float = 300.0  # a gRPC connection with no call open this long gets GOAWAY and is closed
    grpc_head_timeout_s: float = 10.0  # a gRPC connection must send the HTTP/2 preface within this
    access_log: str | None = None  # JSON lines, one per answered request, to this file ("-" = stderr); None = off
