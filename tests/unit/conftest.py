"""The unit tier starts no server: a test here that starts Triton or the gateway fails at once and says where it belongs
(tests/integration). moto's S3 server is out of reach already: its fixture lives in tests/integration/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


def _refuse(what: str) -> Any:
    def start(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError(f"a unit test started {what}: tests that need a server belong in tests/integration")

    return start


@pytest.fixture(autouse=True, scope="session")
def _no_servers() -> Iterator[None]:
    from toolkit.gateway.server import Gateway, GatewayThread
    from toolkit.server import EmbeddedTriton

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(EmbeddedTriton, "start", _refuse("an embedded Triton"))
        mp.setattr(Gateway, "start", _refuse("the gateway"))
        mp.setattr(GatewayThread, "start", _refuse("the gateway"))
        yield
