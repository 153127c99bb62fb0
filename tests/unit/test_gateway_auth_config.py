"""The gateway's access-control configuration: a bad one is refused with a clear error before anything serves (the
access checks themselves, through a running gateway, are tests/integration/test_gateway_auth.py)."""

from __future__ import annotations

from pathlib import Path

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


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"principals:\n  - name: caf\xe9\n", "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper"),
        (
            b"a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
            + b"".join(
                b"%c: &%c [*%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c]\n" % ((98 + i,) * 2 + (97 + i,) * 10)
                for i in range(8)
            ),
            "YAML bomb",
        ),
        (b"principals:\n  - name: x\n    api_keys: [sekrit-123\n", "auth file"),
    ],
)
def test_hostile_auth_files_are_one_line_and_never_quoted(tmp_path: Path, content: bytes, why: str) -> None:
    from toolkit.gateway.auth import AuthConfig
    from toolkit.gateway.errors import GatewayConfigError

    f = tmp_path / "auth.yaml"
    f.write_bytes(content)
    with pytest.raises(GatewayConfigError) as e:
        AuthConfig.load(f)
    assert why in str(e.value) and "\n" not in str(e.value) and "sekrit" not in str(e.value)
