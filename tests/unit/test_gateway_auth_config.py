"""The gateway's access-control configuration: a bad one is refused with a clear error before anything serves (the
access checks themselves, through a running gateway, are tests/integration/test_gateway_auth.py)."""

from __future__ import annotations

import pytest

from toolkit.gateway.auth import AuthConfig
from toolkit.gateway.errors import GatewayConfigError


@pytest.mark.parametrize(
    "raw, why",
    [
        ({"principals": [{"api_keys": ["k"]}]}, "needs a name"),
        ({"principals": [{"name": "a", "policy": [{"Effect": "Maybe", "Action": "invoke"}]}]}, "Allow or Deny"),
        ({"principals": [{"name": "a", "policy": [{"Effect": "Allow"}]}]}, "Action is required"),
        ({"principals": [{"name": "a", "policy": [{"Effect": "Allow", "Action": "invoke", "Condition": {"X": {}}}]}]},
         "unsupported"),
        ({"principals": [{"name": "a", "access_keys": [{"id": "A", "secret": "env:TEST_GW_UNSET_VAR"}]}]},
         "TEST_GW_UNSET_VAR is not set"),
        ({"principals": [{"name": "a", "api_keys": ["k"]}, {"name": "b", "api_keys": ["k"]}]}, "two principals"),
    ],
)  # fmt: skip
def test_bad_auth_config_is_a_clear_error(raw: dict, why: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(GatewayConfigError, match=why):
        AuthConfig.from_dict(raw)
