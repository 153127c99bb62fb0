"""Embedded Triton: locate the binary in nvidia-pytriton, launch, supervise, and talk to its control plane (the one
client, sync and async: ``toolkit.server.client``)."""

from toolkit.server.client import AsyncTritonClient, TritonAdmin, triton_errors
from toolkit.server.endpoint import TritonEndpoint
from toolkit.server.launcher import EmbeddedTriton, ServerOptions, free_port
from toolkit.server.locate import TritonInstall, locate_triton, prepare_backend_dir
from toolkit.server.supervisor import Supervisor

__all__ = [
    "AsyncTritonClient",
    "EmbeddedTriton",
    "ServerOptions",
    "Supervisor",
    "TritonAdmin",
    "TritonEndpoint",
    "TritonInstall",
    "free_port",
    "locate_triton",
    "prepare_backend_dir",
    "triton_errors",
]
