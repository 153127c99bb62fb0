"""Triton's ``ModelConfig`` protobuf module (``model_config_pb2``), without importing ``tritonclient.grpc``.

tritonclient ships the generated module inside the ``tritonclient.grpc`` package, whose ``__init__`` imports grpcio,
numpy, ml_dtypes, the service stubs and the client: ~0.25 s of CPU that ``tritonctl generate`` and ``validate`` paid
before writing a byte, though they need only the message classes (the module itself imports only protobuf). So the
file is loaded on its own, under its usual name: a later ``import tritonclient.grpc`` (the gateway, ``invoke``) finds
it in ``sys.modules`` and reuses it, so the process has one set of message classes whichever import came first.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import TYPE_CHECKING

from toolkit.errors import TritonctlError

_NAME = "tritonclient.grpc.model_config_pb2"


def _load() -> object:
    """The module, from ``sys.modules`` if anything imported it already, else executed from its file."""
    if _NAME in sys.modules:
        return sys.modules[_NAME]
    package = importlib.util.find_spec("tritonclient.grpc")  # imports the (small) parent only, never runs its __init__
    spec = None
    if package is not None and package.submodule_search_locations:
        location = next(iter(package.submodule_search_locations))
        spec = importlib.util.spec_from_file_location(_NAME, f"{location}/model_config_pb2.py")
    if spec is None or spec.loader is None:
        raise TritonctlError("tritonclient's model_config_pb2 is missing: install tritonclient[grpc]")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_NAME]
        raise
    return module


if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2
else:
    model_config_pb2 = _load()

__all__ = ["model_config_pb2"]
