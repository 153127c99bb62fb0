"""tritonctl as a library: author a manifest, generate and validate a Triton repository, and serve it.

    from toolkit import ServeConfig, start

    with start(ServeConfig(manifest="tritonctl.yaml", http_port=0, grpc_port=0, metrics_port=0)) as s:
        ...  # tritonclient or boto3 against s.url / s.grpc

The names below are the public API; everything else is internal and may move. They are imported on first use
(module ``__getattr__``): importing the whole toolkit costs about a second (pydantic, aiohttp, the Triton client), and
``import toolkit`` -- which every CLI command and every ``toolkit.x`` import pays -- should not.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (a few ms of every `import toolkit`)
if TYPE_CHECKING:  # what type checkers and IDEs see; at run time these come from __getattr__
    from typing import Any

    from toolkit.errors import GenerateError, InferenceError, ManifestError, ServerError, TritonctlError
    from toolkit.gateway.auth import AuthConfig
    from toolkit.gateway.core import GatewayOptions
    from toolkit.gateway.server import Gateway, GatewayAddresses, GatewayThread
    from toolkit.mme.manager import ModelManager
    from toolkit.mme.stores import open_store
    from toolkit.repository.generate import generate_repository
    from toolkit.repository.validate import validate_repository
    from toolkit.serve_config import ServeConfig, ServeError
    from toolkit.server import EmbeddedTriton, ServerOptions, Supervisor, TritonEndpoint
    from toolkit.serving import Serving, serve, start
    from toolkit.spec import Manifest, load_manifest

_WHERE = {
    # Author: the manifest, the repository written from it, the offline check of what Triton would reject.
    "Manifest": "toolkit.spec",
    "load_manifest": "toolkit.spec",
    "generate_repository": "toolkit.repository.generate",
    "validate_repository": "toolkit.repository.validate",
    # Serve: the whole system (Triton, the model manager, the gateway) from one config.
    "ServeConfig": "toolkit.serve_config",
    "Serving": "toolkit.serving",
    "start": "toolkit.serving",
    "serve": "toolkit.serving",
    # The pieces, for wiring them differently.
    "EmbeddedTriton": "toolkit.server",
    "ServerOptions": "toolkit.server",
    "Supervisor": "toolkit.server",
    "TritonEndpoint": "toolkit.server",
    "ModelManager": "toolkit.mme.manager",
    "open_store": "toolkit.mme.stores",
    "Gateway": "toolkit.gateway.server",
    "GatewayAddresses": "toolkit.gateway.server",
    "GatewayOptions": "toolkit.gateway.core",
    "GatewayThread": "toolkit.gateway.server",
    "AuthConfig": "toolkit.gateway.auth",
    # Errors: every failure meant for a user is a TritonctlError with a one-line message.
    "TritonctlError": "toolkit.errors",
    "ManifestError": "toolkit.errors",
    "GenerateError": "toolkit.errors",
    "ServerError": "toolkit.errors",
    "InferenceError": "toolkit.errors",
    "ServeError": "toolkit.serve_config",
}

__all__ = [
    "AuthConfig",
    "EmbeddedTriton",
    "Gateway",
    "GatewayAddresses",
    "GatewayOptions",
    "GatewayThread",
    "GenerateError",
    "InferenceError",
    "Manifest",
    "ManifestError",
    "ModelManager",
    "ServeConfig",
    "ServeError",
    "ServerError",
    "ServerOptions",
    "Serving",
    "Supervisor",
    "TritonEndpoint",
    "TritonctlError",
    "generate_repository",
    "load_manifest",
    "open_store",
    "serve",
    "start",
    "validate_repository",
]  # the keys of _WHERE (a literal, for linters and tools)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'toolkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
