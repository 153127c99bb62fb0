"""``ServeConfig``: everything ``tritonctl serve`` takes, as one typed, validated value.

Why one object: the CLI, ``make demo``, the tests and library users all describe the same system (Triton, the MME
manager, the gateway), so they share one description and one set of checks. ``ServeConfig(...)`` raises
``ServeError`` with a one-line message at construction; anything that passes can be started by
``toolkit.serving.start`` without a value being rejected halfway through start-up.

Field names follow the CLI flags (``max_models`` is ``--max-models``, ``drain_s`` is ``--drain``) and messages name the
flag, since that is how most users meet them. Defaults are the CLI's, so ``ServeConfig(repository=d)`` serves what
``tritonctl serve d`` serves. This module does no I/O and imports nothing heavy: files are read, manifests loaded and
ports probed by ``start``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from toolkit.errors import TritonctlError

if TYPE_CHECKING:
    from toolkit.gateway.auth import AuthConfig
    from toolkit.mme.muxspec import HostSettings

__all__ = ["ServeConfig", "ServeError"]

WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
LOOPBACK = "127.0.0.1"


class ServeError(TritonctlError):
    """``tritonctl serve`` (or ``ServeConfig``) was given options that cannot work together."""


def _size(value: str | int) -> int:
    """``8GiB`` -> 8589934592, ``500MB`` -> 500000000, an int is bytes (the MME's own parser, a one-line error)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ServeError(f"--memory-budget must be a size such as 8GiB or a number of bytes, got {value!r}")
    if isinstance(value, int):
        return value
    from toolkit.mme.footprint import parse_size

    try:
        return parse_size(value)
    except ValueError as exc:
        raise ServeError(f"--memory-budget: {exc}") from None


def _port(flag: str, value: int | None, optional: bool = True) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ServeError(f"{flag} must be a port number 0-65535 (0: a free one), got {value!r}")


def _positive(flag: str, value: float, zero_ok: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not zero_ok):
        raise ServeError(
            f"{flag} must be a {'non-negative' if zero_ok else 'positive'} number of seconds, got {value!r}"
        )


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """What to serve and how. Ports: 0 = a free one; ``None`` = a free one for Triton's, disabled for the gateway's
    gRPC and admin ports.

    Where the models come from (one at least): ``repository`` (a Triton model repository directory), ``manifest`` (its
    endpoints are read; without ``repository`` and ``url`` a repository is generated from it into the work directory),
    or ``url`` (an external Triton's HTTP URL instead of the embedded one).
    """

    repository: Path | None = None
    manifest: Path | None = None
    url: str | None = None
    load: Sequence[str] | str = ()  # "all", "none" (the same as empty), or model names: what Triton loads at start
    # Triton's own ports (the embedded one); behind the gateway it binds to 127.0.0.1 whatever ``host`` says.
    http_port: int | None = 8000
    grpc_port: int | None = 8001
    metrics_port: int | None = 8002
    # The gateway: KServe v2 HTTP + SageMaker runtime API, KServe v2 gRPC, and the loopback-only admin API.
    gateway: bool = True
    gateway_port: int = 8080
    gateway_grpc_port: int | None = 8081
    admin_port: int | None = None
    host: str = LOOPBACK  # the gateway's address (Triton's when gateway=False)
    auth: Path | AuthConfig | None = None  # principals, keys and policies: a YAML/JSON file or a loaded AuthConfig
    # The multi-model endpoint manager (it runs in the gateway).
    store: str | None = None  # artifact store: a directory or s3://bucket/prefix
    max_models: int | None = None
    memory_budget: str | int | None = None  # "8GiB", "500MB", or bytes
    gpu_memory_fraction: float | None = None  # (0, 1]: share of the GPU memory Triton reports
    policy: str = "gdsf"  # eviction: gdsf (cost-aware, the default) or lru
    max_concurrent_loads: int | None = None  # Triton loads at once, FIFO (None: the usable CPUs, at most 4)
    # A multi-model endpoint over ``store`` given by flags (no manifest needed): ``--endpoint NAME``, and SageMaker's
    # ``ModelCacheSetting`` for it (``Disabled``: each model is unloaded after each call).
    endpoint: str | None = None
    model_cache_setting: str = "Enabled"
    # Multiplexing (toolkit.mme.mux): small adapter models served inside shared model hosts, not a stub each.
    multiplex: bool = False  # every artifact a host can serve (numpy/sklearn/onnx adapter, <= multiplex_max_bytes)
    multiplex_budget: str | int = "256MiB"  # per host instance: bytes of resident models
    multiplex_max_models: int = 0  # per host instance: resident models (0 = no count limit)
    multiplex_max_bytes: str | int = "64KiB"  # larger artifacts keep a stub of their own (docs/mme.md)
    multiplex_policy: str = "lru"  # inside the host: lru or gdsf
    multiplex_instances: int = 1  # processes per host (each with its own models and budgets)
    # Time limits, in seconds.
    drain_s: float = 10.0  # on stop, what the gateway gives requests in flight to be answered
    timeout_s: float = 60.0  # one request through the gateway to Triton
    load_timeout_s: float = 60.0  # one cold model load (and every manager call to Triton)
    load_wait_s: float = 30.0  # a request waiting longer for its cold model: 429 ModelNotReadyException (load goes on)
    start_timeout_s: float = 120.0  # the embedded Triton becoming ready
    workdir: Path | None = None  # generated repository and Triton's log; None = a temporary one, removed on stop
    # Observability: Triton's own tracing and log, the gateway's access log.
    triton_trace_config: Sequence[str] | str = ()  # each passed as tritonserver --trace-config=VALUE
    triton_log_verbose: int = 0  # tritonserver --log-verbose
    access_log: str | None = None  # the gateway's JSON-lines access log: a file, or "-" (stderr); None = off

    def __post_init__(self) -> None:
        """Coerce (str -> Path, a single load name -> a list) and check every value; the first problem is raised."""
        for name in ("repository", "manifest", "workdir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        if isinstance(self.auth, str):
            object.__setattr__(self, "auth", Path(self.auth))
        load = (self.load,) if isinstance(self.load, str) else tuple(self.load)
        object.__setattr__(self, "load", load)
        self._check_load(load)
        self._check_source()
        self._check_ports()
        self._check_manager()
        self._check_observability()
        self._check_endpoint()
        self._check_multiplex()
        _positive("--drain", self.drain_s, zero_ok=True)
        _positive("--load-wait", self.load_wait_s)
        _positive("timeout_s", self.timeout_s)
        _positive("load_timeout_s", self.load_timeout_s)
        _positive("start_timeout_s", self.start_timeout_s)

    # -- derived values -----------------------------------------------------------------------------------------------
    @property
    def triton_load(self) -> list[str]:
        """What the embedded Triton loads at start, as its ``--load-model`` list (``["*"]`` = everything)."""
        return list(self._check_load(tuple(self.load)))

    @property
    def triton_host(self) -> str:
        """Behind the gateway Triton (no auth, repository API, shared memory) stays on loopback: only the gateway is
        published. Without the gateway, ``host`` is Triton's."""
        return LOOPBACK if self.gateway else self.host

    @property
    def memory_budget_bytes(self) -> int | None:
        return None if self.memory_budget is None else _size(self.memory_budget)

    @property
    def multiplex_settings(self) -> HostSettings:
        """The model hosts' budgets and policy, as ``toolkit.mme.muxspec`` takes them."""
        from toolkit.mme.muxspec import HostSettings

        return HostSettings(
            budget_bytes=_size(self.multiplex_budget),
            max_models=self.multiplex_max_models,
            policy=self.multiplex_policy,
            max_artifact_bytes=_size(self.multiplex_max_bytes),
            instances=self.multiplex_instances,
        )

    @property
    def embedded(self) -> bool:
        """True when this process starts (and supervises) Triton; False with ``url``."""
        return self.url is None

    def listeners(self) -> list[tuple[str, str, int]]:
        """``(flag, host, port)`` for every fixed port (not 0, not disabled) this configuration will listen on."""
        out: list[tuple[str, str, int]] = []
        if self.embedded:
            for flag, port in (
                ("--http-port", self.http_port),
                ("--grpc-port", self.grpc_port),
                ("--metrics-port", self.metrics_port),
            ):
                if port:
                    out.append((flag, self.triton_host, port))
        if self.gateway:
            for flag, host, port in (
                ("--gateway-port", self.host, self.gateway_port),
                ("--gateway-grpc-port", self.host, self.gateway_grpc_port),
                ("--admin-port", LOOPBACK, self.admin_port),  # model control: loopback only, whatever host is
            ):
                if port:
                    out.append((flag, host, port))
        return out

    # -- checks -------------------------------------------------------------------------------------------------------
    @staticmethod
    def _check_load(load: tuple[str, ...]) -> tuple[str, ...]:
        if not all(isinstance(n, str) and n for n in load):
            raise ServeError(f"--load takes all, none, or model names, got {list(load)!r}")
        if load in ((), ("none",)):
            return ()
        if load == ("all",):
            return ("*",)
        if "all" in load or "none" in load:
            raise ServeError("--load takes all, none, or model names (not a mix)")
        return load

    def _check_source(self) -> None:
        if self.repository is None and self.manifest is None and self.url is None:
            raise ServeError("give a model repository DIR, --manifest FILE, or --url of a running Triton")
        if self.url is not None:
            from toolkit.server.launcher import TritonEndpoint

            try:
                TritonEndpoint.from_url(self.url)
            except TritonctlError as exc:
                raise ServeError(str(exc)) from None

    def _check_ports(self) -> None:
        for flag, value in (
            ("--http-port", self.http_port),
            ("--grpc-port", self.grpc_port),
            ("--metrics-port", self.metrics_port),
            ("--gateway-grpc-port", self.gateway_grpc_port),
            ("--admin-port", self.admin_port),
        ):
            _port(flag, value)
        _port("--gateway-port", self.gateway_port, optional=False)
        if not isinstance(self.host, str) or not self.host.strip():
            raise ServeError(f"--host must be an address to bind to, got {self.host!r}")
        seen: list[tuple[str, str, int]] = []
        for flag, host, port in self.listeners():
            for other, other_host, other_port in seen:
                same_host = host == other_host or host in WILDCARD_HOSTS or other_host in WILDCARD_HOSTS
                if port == other_port and same_host:
                    raise ServeError(f"{other} and {flag} both ask for port {port} on {host}")
            seen.append((flag, host, port))

    def _check_observability(self) -> None:
        """Trace settings go to the embedded Triton's command line (an external Triton is configured where it runs);
        the access log is the gateway's."""
        trace = (self.triton_trace_config,) if isinstance(self.triton_trace_config, str) else self.triton_trace_config
        trace = tuple(trace)
        object.__setattr__(self, "triton_trace_config", trace)
        for value in trace:
            if not isinstance(value, str) or "=" not in value or value.startswith("-"):
                raise ServeError(
                    f"--triton-trace-config takes tritonserver's --trace-config values such as mode=opentelemetry, "
                    f"rate=1 or opentelemetry,url=http://host:4318/v1/traces; got {value!r}"
                )
        if trace and not self.embedded:
            raise ServeError("--triton-trace-config configures the embedded Triton; with --url, set it on that Triton")
        v = self.triton_log_verbose
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ServeError(f"Triton's log verbosity must be a whole number >= 0, got {v!r}")
        if self.access_log is not None and not self.gateway:
            raise ServeError("--access-log is the gateway's: drop --no-gateway")
        if self.access_log is not None and (not isinstance(self.access_log, str) or not self.access_log):
            raise ServeError(f"--access-log takes a file path or - (stderr), got {self.access_log!r}")

    @property
    def triton_args(self) -> list[str]:
        """Extra tritonserver arguments from the observability settings."""
        return [f"--trace-config={v}" for v in self.triton_trace_config]

    def _check_endpoint(self) -> None:
        """``--endpoint`` names a multi-model endpoint over ``--store``; ``--model-cache-setting`` configures it."""
        if self.model_cache_setting not in ("Enabled", "Disabled"):
            raise ServeError(f"--model-cache-setting must be Enabled or Disabled, got {self.model_cache_setting!r}")
        if self.endpoint is None:
            if self.model_cache_setting != "Enabled":
                raise ServeError(
                    "--model-cache-setting applies to the endpoint --endpoint NAME names; with a manifest, set "
                    "model_cache_setting: Disabled on its multi-model endpoint"
                )
            return
        from toolkit.names import ModelNameError, check_model_name

        try:
            check_model_name(self.endpoint)  # SageMaker endpoint names are a subset; this keeps URLs plain
        except ModelNameError as exc:
            raise ServeError(f"--endpoint: {exc}") from None
        if not self.store:
            raise ServeError("--endpoint NAME serves a multi-model endpoint over --store: give --store DIR|s3://...")
        if not self.gateway:
            raise ServeError("--endpoint is served by the gateway: drop --no-gateway")

    def _check_manager(self) -> None:
        """The MME manager's settings: they need the gateway (it runs there) and a repository directory Triton reads."""
        mme = {
            "--store": self.store,
            "--max-models": self.max_models,
            "--memory-budget": self.memory_budget,
            "--gpu-memory-fraction": self.gpu_memory_fraction,
            "--policy": None if self.policy == "gdsf" else self.policy,
            "--max-concurrent-loads": self.max_concurrent_loads,
        }
        given = [k for k, v in mme.items() if v is not None]
        if given and not self.gateway:
            raise ServeError(
                f"{', '.join(given)} configure the MME manager, which runs in the gateway: drop --no-gateway"
            )
        if given and self.url is not None and self.repository is None:
            raise ServeError(f"{', '.join(given)} need a model repository DIR that Triton reads")
        if self.max_models is not None and (
            isinstance(self.max_models, bool) or not isinstance(self.max_models, int) or self.max_models < 1
        ):
            raise ServeError(f"--max-models must be a whole number >= 1, got {self.max_models!r}")
        if self.max_concurrent_loads is not None and (
            isinstance(self.max_concurrent_loads, bool)
            or not isinstance(self.max_concurrent_loads, int)
            or self.max_concurrent_loads < 1
        ):
            raise ServeError(f"--max-concurrent-loads must be a whole number >= 1, got {self.max_concurrent_loads!r}")
        if self.memory_budget is not None and (budget := _size(self.memory_budget)) <= 0:
            raise ServeError(f"--memory-budget must be positive, got {budget}")
        if self.gpu_memory_fraction is not None:
            from toolkit.mme.errors import ManagerConfigError
            from toolkit.mme.gpu import check_fraction

            try:
                check_fraction(self.gpu_memory_fraction)
            except ManagerConfigError as exc:
                raise ServeError(str(exc)) from None
        if not isinstance(self.policy, str):
            raise ServeError(f"--policy must be lru or gdsf, got {self.policy!r}")
        from toolkit.mme.policies import PolicyError, make_policy

        try:
            make_policy(self.policy)
        except PolicyError as exc:
            raise ServeError(str(exc)) from None

    def _check_multiplex(self) -> None:
        if self.multiplex and (not self.gateway or (self.url is not None and self.repository is None)):
            raise ServeError("--multiplex needs the gateway and a model repository DIR that Triton reads")
        if self.multiplex_policy not in ("lru", "gdsf"):
            raise ServeError(f"--multiplex-policy must be lru or gdsf, got {self.multiplex_policy!r}")
        m = self.multiplex_max_models
        if isinstance(m, bool) or not isinstance(m, int) or m < 0:
            raise ServeError(f"--multiplex-max-models must be a whole number >= 0, got {m!r}")
        n = self.multiplex_instances
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 64:
            raise ServeError(f"--multiplex-instances must be a whole number from 1 to 64, got {n!r}")
        for flag, value in (
            ("--multiplex-budget", self.multiplex_budget),
            ("--multiplex-max-bytes", self.multiplex_max_bytes),
        ):
            try:
                size = _size(value)
            except ServeError as exc:
                raise ServeError(str(exc).replace("--memory-budget", flag)) from None
            if size <= 0:
                raise ServeError(f"{flag} must be positive, got {size}")
