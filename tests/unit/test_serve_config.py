"""``ServeConfig``: every value checked once, at construction, with a one-line ``ServeError``; the CLI's defaults; and
what ``start`` refuses before anything starts (nothing left behind). No server starts here."""

from __future__ import annotations

import dataclasses
import inspect
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import toolkit
from toolkit.errors import ManifestError, TritonctlError
from toolkit.serve_config import ServeConfig, ServeError
from toolkit.serving import check_ports, start

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_the_cli_defaults() -> None:
    """``ServeConfig(repository=d)`` serves what ``tritonctl serve d`` serves."""
    from toolkit.cli.serve import serve_command

    fields = {f.name: f.default for f in dataclasses.fields(ServeConfig)}
    compared = 0
    for name, param in inspect.signature(serve_command).parameters.items():
        if name in ("repository", "load", "log_level"):  # positional; --load's None is (); --log-level is the CLI's
            continue
        default = param.default.default
        assert fields[name] == (() if name == "triton_trace_config" and default is None else default), name
        compared += 1
    assert compared == len(inspect.signature(serve_command).parameters) - 3


def test_coercion_and_derived_values() -> None:
    c = ServeConfig(repository="repo", manifest="m.yaml", auth="auth.yaml", load="all", memory_budget="1KiB")
    assert c.repository == Path("repo") and c.manifest == Path("m.yaml") and c.auth == Path("auth.yaml")
    assert c.load == ("all",) and c.triton_load == ["*"]
    assert c.memory_budget_bytes == 1024
    assert ServeConfig(repository="r").triton_load == []
    assert ServeConfig(repository="r", load=["none"]).triton_load == []
    assert ServeConfig(repository="r", load=["a", "b"]).triton_load == ["a", "b"]
    assert ServeConfig(repository="r", memory_budget=5000).memory_budget_bytes == 5000


def test_triton_trace_settings_become_tritonserver_arguments() -> None:
    c = ServeConfig(repository="r", triton_trace_config="mode=opentelemetry")
    assert c.triton_trace_config == ("mode=opentelemetry",)
    c = ServeConfig(repository="r", triton_trace_config=["rate=1", "opentelemetry,url=http://h:4318/v1/traces"])
    assert c.triton_args == ["--trace-config=rate=1", "--trace-config=opentelemetry,url=http://h:4318/v1/traces"]
    assert ServeConfig(repository="r").triton_args == []


def test_triton_stays_on_loopback_behind_the_gateway() -> None:
    assert ServeConfig(repository="r", host="0.0.0.0").triton_host == "127.0.0.1"
    assert ServeConfig(repository="r", host="0.0.0.0", gateway=False).triton_host == "0.0.0.0"


def test_listeners_are_the_fixed_ports_in_use() -> None:
    c = ServeConfig(repository="r", http_port=0, grpc_port=None, admin_port=9000, host="10.0.0.1")
    assert c.listeners() == [
        ("--metrics-port", "127.0.0.1", 8002),
        ("--gateway-port", "10.0.0.1", 8080),
        ("--gateway-grpc-port", "10.0.0.1", 8081),
        ("--admin-port", "127.0.0.1", 9000),  # loopback whatever host is
    ]
    assert [f for f, _, _ in ServeConfig(repository="r", gateway=False).listeners()] == [
        "--http-port",
        "--grpc-port",
        "--metrics-port",
    ]
    assert [f for f, _, _ in ServeConfig(url="http://h:1").listeners()] == ["--gateway-port", "--gateway-grpc-port"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"repository": None}, r"give a model repository DIR, --manifest FILE, or --url"),
        ({"load": ["all", "digits_mlp"]}, r"--load takes all, none, or model names \(not a mix\)"),
        ({"load": [""]}, r"--load takes all, none, or model names"),
        ({"http_port": 70000}, r"--http-port must be a port number 0-65535"),
        ({"gateway_port": None}, r"--gateway-port must be a port number"),
        ({"admin_port": -1}, r"--admin-port must be a port number"),
        ({"metrics_port": True}, r"--metrics-port must be a port number"),
        ({"gateway_port": 8000}, r"--http-port and --gateway-port both ask for port 8000"),
        ({"host": "0.0.0.0", "admin_port": 8080}, r"--gateway-port and --admin-port both ask for port 8080"),
        ({"host": ""}, r"--host must be an address"),
        ({"max_models": 0}, r"--max-models must be a whole number >= 1, got 0"),
        ({"memory_budget": "lots"}, r"--memory-budget: cannot read a size from 'lots'"),
        ({"memory_budget": 0}, r"--memory-budget must be positive"),
        ({"gpu_memory_fraction": 1.5}, r"--gpu-memory-fraction must be in \(0, 1\]"),
        ({"policy": "fifo"}, r"unknown eviction policy 'fifo'; choose one of: gdsf, lru"),
        ({"max_concurrent_loads": 0}, r"^--max-concurrent-loads must be a whole number >= 1, got 0$"),
        ({"max_concurrent_loads": 2.5}, r"^--max-concurrent-loads must be a whole number >= 1, got 2.5$"),
        ({"gateway": False, "max_concurrent_loads": 2}, r"^--max-concurrent-loads configure the MME manager"),
        ({"gateway": False, "max_models": 2, "store": "s3://b"}, r"--store, --max-models configure the MME manager"),
        ({"repository": None, "url": "http://127.0.0.1:9", "max_models": 2}, r"need a model repository DIR"),
        ({"repository": None, "url": "no-port"}, r"bad Triton URL 'no-port'"),
        ({"drain_s": -1}, r"--drain must be a non-negative number of seconds"),
        ({"timeout_s": 0}, r"timeout_s must be a positive number of seconds"),
        ({"load_timeout_s": float("inf")}, r"load_timeout_s must be a positive number"),
        ({"start_timeout_s": "60"}, r"start_timeout_s must be a positive number"),
        ({"triton_trace_config": ["opentelemetry"]}, r"--triton-trace-config takes tritonserver's --trace-config"),
        ({"triton_trace_config": ["--trace-config=rate=1"]}, r"--triton-trace-config takes"),
        ({"repository": None, "url": "http://h:1", "triton_trace_config": "rate=1"}, r"set it on that Triton"),
        ({"triton_log_verbose": -1}, r"Triton's log verbosity must be a whole number >= 0"),
        ({"gateway": False, "access_log": "a.jsonl"}, r"--access-log is the gateway's"),
        ({"access_log": ""}, r"--access-log takes a file path or -"),
        ({"load_wait_s": 0}, r"--load-wait must be a positive number of seconds"),
        ({"model_cache_setting": "off"}, r"--model-cache-setting must be Enabled or Disabled, got 'off'"),
        ({"model_cache_setting": "Disabled"}, r"--model-cache-setting applies to the endpoint --endpoint NAME"),
        ({"endpoint": "mme"}, r"--endpoint NAME serves a multi-model endpoint over --store"),
        ({"endpoint": "a/../b", "store": "s3://b"}, r"--endpoint: "),
        ({"endpoint": "mme", "store": "s3://b", "gateway": False}, r"--store configure the MME manager"),
    ],
)
def test_bad_values_are_one_line_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ServeError, match=message) as e:
        ServeConfig(**{"repository": "repo", **kwargs})  # type: ignore[arg-type]
    assert "\n" not in str(e.value)


def test_ports_on_different_addresses_may_share_a_number() -> None:
    """Triton behind the gateway is on 127.0.0.1; a gateway published on another address may use the same number."""
    ServeConfig(repository="r", host="127.0.0.2", gateway_port=8000)
    ServeConfig(repository="r", http_port=0, gateway_port=8000)  # 0: Triton takes a free port
    ServeConfig(url="http://127.0.0.1:8000", gateway_port=8000)  # an external Triton's ports are not ours


def test_frozen_and_replace_revalidates() -> None:
    c = ServeConfig(repository="r")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.max_models = 3  # type: ignore[misc]
    assert dataclasses.replace(c, max_models=3).max_models == 3
    with pytest.raises(ServeError, match="--max-models"):
        dataclasses.replace(c, max_models=-1)


@pytest.fixture
def busy_port() -> Iterator[int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s.getsockname()[1]
    s.close()


def test_a_busy_port_is_refused_before_anything_starts(
    busy_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where start() would make its work directory
    config = ServeConfig(repository=ROOT / "model_repository", http_port=0, grpc_port=0, metrics_port=0,
                         gateway_port=busy_port, gateway_grpc_port=0)  # fmt: skip
    with pytest.raises(ServeError, match=rf"--gateway-port {busy_port}: 127\.0\.0\.1:{busy_port} is already in use"):
        check_ports(config)
    with pytest.raises(ServeError, match="already in use"):
        start(config)
    assert list(tmp_path.iterdir()) == []  # no work directory left behind


def test_a_bad_manifest_or_repository_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "tmp"
    work.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(work))
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  - name: x\n    framework: nope\n")
    with pytest.raises(ManifestError):
        start(ServeConfig(manifest=bad, http_port=0, grpc_port=0, metrics_port=0, gateway_port=0))
    with pytest.raises(ServeError, match="is not a directory"):
        start(ServeConfig(repository=tmp_path / "missing", http_port=0, grpc_port=0, metrics_port=0, gateway_port=0))
    assert list(work.iterdir()) == []


def test_public_api_is_lazy_and_complete() -> None:
    """Every name in ``toolkit.__all__`` resolves, and ``import toolkit`` imports none of them (it stays ~1 ms)."""
    assert toolkit.__all__ == sorted(toolkit._WHERE)
    for name in toolkit.__all__:
        assert getattr(toolkit, name) is not None, name
    assert issubclass(toolkit.ServeError, toolkit.TritonctlError) and toolkit.TritonctlError is TritonctlError
    code = "import sys, toolkit; print(sorted(m for m in sys.modules if m.startswith(('toolkit.', 'pydantic'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_flag_endpoints_join_the_manifest_and_disabled_cache_needs_the_manager(tmp_path: Path) -> None:
    """``--endpoint`` adds a multi-model endpoint over ``--store`` (its ModelCacheSetting from the flag); a name the
    manifest has is refused; ``Disabled`` without the MME manager (an external Triton, no DIR) is refused."""
    from toolkit.serving import _flag_endpoints
    from toolkit.spec.models import EndpointSpec

    config = ServeConfig(repository="r", store="s3://b/p", endpoint="laptop", model_cache_setting="Disabled")
    (ep,) = _flag_endpoints(config, [EndpointSpec(name="mme", mode="multi-model", store="s3://b/q")])
    assert (ep.name, ep.mode, ep.store, ep.model_cache_setting) == ("laptop", "multi-model", "s3://b/p", "Disabled")
    with pytest.raises(ServeError, match="the manifest already has an endpoint of that name"):
        _flag_endpoints(config, [EndpointSpec(name="laptop", mode="multi-model", store="s3://b/q")])
    external = ServeConfig(url="http://127.0.0.1:9")  # a manifest's endpoint, served by an external Triton
    uncached = EndpointSpec(name="once", mode="multi-model", models=["m"], model_cache_setting="Disabled")
    with pytest.raises(ServeError, match="endpoint once: model_cache_setting Disabled needs the MME manager"):
        _flag_endpoints(external, [uncached])
    assert _flag_endpoints(ServeConfig(repository="r"), [uncached]) == []


def test_model_cache_setting_is_validated_in_the_manifest_with_its_line(tmp_path: Path) -> None:
    from toolkit.spec import load_manifest

    head = "models:\n  - {name: m, framework: python, inputs: [{name: X, dtype: FP32, dims: [2]}],\n"
    head += "     outputs: [{name: Y, dtype: FP32, dims: [2]}]}\nendpoints:\n"
    ok = tmp_path / "ok.yaml"
    ok.write_text(head + "  - {name: e, mode: multi-model, models: [m], model_cache_setting: Disabled}\n")
    assert load_manifest(ok).endpoints[0].model_cache_setting == "Disabled"
    for line, why in (
        ("  - {name: e, mode: single, model: m, model_cache_setting: Disabled}\n", "a multi-model endpoint setting"),
        ("  - {name: e, mode: multi-model, models: [m], model_cache_setting: disabled}\n", "'Enabled' or 'Disabled'"),
    ):
        bad = tmp_path / "bad.yaml"
        bad.write_text(head + line)
        with pytest.raises(ManifestError) as err:
            load_manifest(bad)
        assert "bad.yaml:5: endpoints[0]" in str(err.value) and why in str(err.value), str(err.value)


def test_serve_flags_reach_the_config_and_refusals_are_one_line() -> None:
    """``tritonctl serve --endpoint/--model-cache-setting/--load-wait``: wired to ``ServeConfig`` (a bad combination is
    the config's one-line refusal, exit 1, before anything starts)."""
    from typer.testing import CliRunner

    from toolkit.cli.main import app

    for args, why in (
        (
            ["repo", "--model-cache-setting", "Disabled"],
            "--model-cache-setting applies to the endpoint --endpoint NAME",
        ),
        (["repo", "--endpoint", "mme"], "--endpoint NAME serves a multi-model endpoint over --store"),
        (["repo", "--load-wait", "0"], "--load-wait must be a positive number of seconds"),
    ):
        result = CliRunner().invoke(app, ["serve", *args])
        assert result.exit_code == 1 and why in result.output and len(result.output.strip().splitlines()) == 1, (
            result.output
        )
