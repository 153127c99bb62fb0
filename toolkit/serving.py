"""Serve from Python: ``start(ServeConfig) -> Serving`` (a handle) and ``serve(ServeConfig)`` (blocks until a signal).

Why this module: it is the one place that wires the system -- the embedded Triton (or an external one), its
supervisor, the model manager and the gateway -- so the CLI, ``make demo``, the tests and library users all run the
same thing. It is also the only place that decides which model manager runs (``build_models``); the gateway takes the
manager it is given.

Start-up is all or nothing. Everything that can be checked before a process starts is checked first (the config's
values, the manifest, the auth file, the artifact store, the repository directory, every fixed port), and a failure
there leaves nothing behind: no process, no work directory. Once Triton has been launched, a failure stops whatever
did start and keeps the work directory (and names it), because Triton's log in it is what explains the failure.
After a clean stop the temporary work directory is removed.

(The module is ``serving``, not ``serve``: ``toolkit.serve`` is the function, and a submodule of that name would
replace it on the package as soon as anything imported the module.)
"""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from toolkit.serve_config import ServeConfig, ServeError

if TYPE_CHECKING:
    from toolkit.gateway.auth import AuthConfig
    from toolkit.gateway.models import ModelProvider
    from toolkit.gateway.server import GatewayAddresses, GatewayThread
    from toolkit.mme.manager import ModelManager
    from toolkit.mme.stores import ArtifactStore
    from toolkit.server import Supervisor, TritonEndpoint
    from toolkit.spec.models import EndpointSpec

__all__ = ["ServeConfig", "ServeError", "Serving", "build_models", "check_ports", "serve", "start"]

log = logging.getLogger(__name__)

Echo = Callable[[str], None]


def _port_free(host: str, port: int) -> bool:
    """Nobody listens on ``host:port`` (any address family the host resolves to; TIME_WAIT leftovers do not count,
    since Triton and the gateway bind with SO_REUSEADDR)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServeError(f"cannot bind to {host!r}: {exc.strerror}") from None
    for family, kind, proto, _, addr in infos:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(addr)
            except OSError:
                return False
    return True


def check_ports(config: ServeConfig) -> None:
    """Every fixed port the config listens on is free now: a busy port fails in milliseconds, before Triton starts
    (a port taken in the small window after this check is still reported, by the piece that cannot bind it)."""
    for flag, host, port in config.listeners():
        if not _port_free(host, port):
            raise ServeError(f"{flag} {port}: {host}:{port} is already in use")


def build_models(
    config: ServeConfig,
    endpoint: TritonEndpoint,
    repository: Path | None,
    store: ArtifactStore | None = None,
    endpoints: Sequence[EndpointSpec] = (),
) -> ModelProvider:
    """The model manager the gateway serves through: the MME ``ModelManager`` over a repository directory Triton
    reads; with an external Triton and no directory, the manager-less ``RepositoryModels`` (whatever that Triton
    has, loaded on first use, never evicted). With ``--multiplex`` or an endpoint's ``multiplex: true``, the manager
    is wrapped by ``MuxModels``, which serves the multiplexed models inside model hosts."""
    if repository is None:
        from toolkit.gateway.models import RepositoryModels

        return RepositoryModels(endpoint, None, load_timeout=config.load_timeout_s)
    manager = _manager(config, endpoint, repository, store)
    chosen = multiplexed_names(config, repository, endpoints)
    if chosen is None:
        return manager
    from toolkit.mme.mux import MuxModels

    return MuxModels(manager, chosen, config.multiplex_settings)


def multiplexed_names(
    config: ServeConfig, repository: Path, endpoints: Sequence[EndpointSpec]
) -> Callable[[str], bool] | None:
    """Which names go to a model host (those a host cannot serve still get their own stub): every name with
    ``--multiplex``; else the ``models:`` of endpoints with ``multiplex: true``, and the store's models (those not in
    the repository) when such an endpoint lists none. None: nothing is multiplexed."""
    if config.multiplex:
        return lambda name: True
    chosen = [e for e in endpoints if e.multiplex]
    if not chosen:
        return None
    listed = frozenset(m for e in chosen for m in e.models)
    store_wide = any(not e.models for e in chosen)
    return lambda name: name in listed or (store_wide and not (repository / name / "config.pbtxt").is_file())


def _manager(
    config: ServeConfig, endpoint: TritonEndpoint, repository: Path, store: ArtifactStore | None
) -> ModelManager:
    from toolkit.mme.manager import ModelManager

    return ModelManager(
        endpoint,
        repository=repository,
        store=store,
        max_models=config.max_models,
        memory_budget_bytes=config.memory_budget_bytes,
        gpu_memory_fraction=config.gpu_memory_fraction,
        policy=config.policy,
        load_timeout=config.load_timeout_s,
        max_concurrent_loads=config.max_concurrent_loads,
    )


class Serving:
    """A running system from ``start``: addresses, the model manager, and ``stop()`` (also on leaving a ``with``).

    ``http``/``url``/``grpc`` are the front door: the gateway's when it runs, else Triton's. ``triton`` is Triton's own
    endpoint (loopback when behind the gateway), ``gateway`` the gateway's addresses (None without it), ``models``
    the manager the gateway serves through, ``work`` the work directory (generated repository, Triton's log).
    """

    def __init__(
        self,
        config: ServeConfig,
        *,
        work: Path,
        repository: Path | None,
        endpoints: list[EndpointSpec],
        auth: AuthConfig,
        store: ArtifactStore | None,
        echo: Echo,
    ) -> None:
        self.config = config
        self.work = work
        self.repository = repository
        self.endpoints = endpoints
        self.triton: TritonEndpoint | None = None
        self.gateway: GatewayAddresses | None = None
        self.models: ModelProvider | None = None
        self.supervisor: Supervisor | None = None
        self._auth = auth
        self._store = store
        self._echo = echo
        self._runner: GatewayThread | None = None
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def http(self) -> str:
        """The front door's HTTP ``host:port`` (what ``tritonclient.http`` takes)."""
        if self.gateway is not None:
            return self.gateway.http
        assert self.triton is not None, "not started"
        return self.triton.http

    @property
    def url(self) -> str:
        """The front door's HTTP URL (KServe v2, and the SageMaker runtime API when the gateway runs)."""
        return f"http://{self.http}"

    @property
    def grpc(self) -> str | None:
        """The front door's KServe v2 gRPC ``host:port`` (None when the gateway runs without gRPC)."""
        if self.gateway is not None:
            return self.gateway.grpc
        assert self.triton is not None, "not started"
        return self.triton.grpc

    @property
    def triton_log(self) -> Path | None:
        """The embedded Triton's log file (None with an external Triton): what ``serve`` tells the user to follow."""
        return None if self.config.url is not None else self.work / "tritonserver.log"

    def _launch(self) -> None:
        """Start Triton (or reach the external one), then the manager and the gateway; ``stop`` undoes any part."""
        from toolkit.gateway.core import GatewayOptions
        from toolkit.gateway.server import Gateway, GatewayThread
        from toolkit.server import EmbeddedTriton, ServerOptions, Supervisor, TritonEndpoint

        c, echo = self.config, self._echo
        if c.url is not None:
            endpoint = TritonEndpoint.from_url(c.url)
            echo(f"using Triton at {endpoint.http_url}")
        else:
            assert self.repository is not None
            options = ServerOptions(
                repository=self.repository,
                host=c.triton_host,
                http_port=c.http_port,
                grpc_port=c.grpc_port,
                metrics_port=c.metrics_port,
                load=c.triton_load,
                workdir=self.work,
                log_file=self.triton_log,
                extra_args=c.triton_args,
                log_verbose=c.triton_log_verbose,
                model_load_threads=c.max_concurrent_loads,
            )
            self.supervisor = Supervisor(EmbeddedTriton(options), reload="lazy")
            endpoint = self.supervisor.start(timeout=c.start_timeout_s)
            echo(f"triton   http {endpoint.http}  grpc {endpoint.grpc}  metrics {endpoint.metrics}")
            echo(f"triton log: {self.triton_log}  (follow it: tail -f {self.triton_log})")
        self.triton = endpoint
        if not c.gateway:
            return
        self.models = build_models(c, endpoint, self.repository, self._store, self.endpoints)
        gopts = GatewayOptions(
            host=c.host,
            http_port=c.gateway_port,
            grpc_port=c.gateway_grpc_port,
            admin_port=c.admin_port,
            timeout_s=c.timeout_s,
            drain_s=c.drain_s,
            load_wait_s=c.load_wait_s,
            endpoints=self.endpoints,
            auth=self._auth,
            repository=self.repository,
            access_log=c.access_log,
        )
        gw = Gateway(gopts, endpoint, models=self.models)
        if self.supervisor is not None:
            gw.attach(self.supervisor)
        self._runner = GatewayThread(gw)
        self.gateway = a = self._runner.start()
        echo(f"gateway  http {a.http_url}  grpc {a.grpc or '-'}  admin {a.admin_url or '-'}")
        if c.access_log:
            echo(f"access log (JSON lines): {'stderr' if c.access_log == '-' else c.access_log}")
        if self.endpoints:
            echo("endpoints " + ", ".join(f"{e.name} ({e.mode})" for e in self.endpoints))
        per_process = [
            e.name
            for e in self.endpoints
            if e.mode == "multi-model" and not (c.multiplex or e.multiplex) and e.model_cache_setting != "Disabled"
        ]
        if per_process:  # the choice that decides a cold request's latency most (docs/benchmarks/mme_seed003.md)
            echo(
                f"hint: multi-model endpoint {', '.join(per_process)}: one python stub per model (~0.2-0.3 s per cold "
                "load); small numpy/sklearn/ONNX models load in ~10 ms inside a shared host with --multiplex "
                "(docs/mme.md)"
            )

    def stop(self, *, keep_work: bool = False) -> None:
        """Stop the gateway (draining requests in flight up to ``drain_s``), then Triton; idempotent.

        The temporary work directory is removed, unless ``keep_work`` and Triton was launched: then its log is in
        there to explain a failure, and the directory is kept and named through ``echo``. A ``workdir`` given in the
        config is never removed."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        try:
            if self._runner is not None:
                self._runner.stop()
        finally:
            if self.supervisor is not None:
                self.supervisor.stop()
            if self.config.workdir is None:
                if keep_work and self.supervisor is not None:
                    self._echo(f"work directory kept for inspection: {self.work}")
                else:
                    shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> Serving:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "serving"
        return f"Serving({state}, url={self.url if self.triton else None!r}, work={str(self.work)!r})"


def _flag_endpoints(config: ServeConfig, declared: list[EndpointSpec]) -> list[EndpointSpec]:
    """The endpoint ``--endpoint NAME`` describes (a multi-model endpoint over ``--store``), checked against the
    manifest's; and no endpoint whose model cache is disabled without the MME manager, which alone counts requests in
    flight (unloading after a call must not cut another call off)."""
    from toolkit.spec.models import EndpointSpec

    extra: list[EndpointSpec] = []
    if config.endpoint is not None:
        if any(e.name == config.endpoint for e in declared):
            raise ServeError(f"--endpoint {config.endpoint}: the manifest already has an endpoint of that name")
        extra.append(
            EndpointSpec(
                name=config.endpoint,
                mode="multi-model",
                store=config.store,
                model_cache_setting=config.model_cache_setting,  # checked by ServeConfig: Enabled or Disabled
            )
        )
    uncached = [e.name for e in [*declared, *extra] if e.model_cache_setting == "Disabled"]
    if uncached and config.url is not None and config.repository is None:
        raise ServeError(
            f"endpoint {uncached[0]}: model_cache_setting Disabled needs the MME manager, which needs a model "
            "repository DIR that Triton reads"
        )
    return extra


def _prepare(config: ServeConfig, echo: Echo) -> Serving:
    """Everything before a process starts: read what the config names, probe the ports, make the work directory and
    generate the repository into it when only a manifest was given. On failure, nothing is left behind."""
    from toolkit.gateway.auth import AuthConfig

    endpoints: list[Any] = []
    spec = None
    if config.manifest is not None:
        from toolkit.spec import load_manifest

        spec = load_manifest(config.manifest)
        endpoints = list(spec.endpoints)
    endpoints += _flag_endpoints(config, endpoints)
    auth = config.auth if isinstance(config.auth, AuthConfig) else AuthConfig.load(config.auth) if config.auth else None
    repository = config.repository
    if repository is not None and not repository.is_dir():
        raise ServeError(f"model repository {repository} is not a directory")
    store = None
    if config.store:
        from toolkit.mme.stores import open_store

        store = open_store(config.store)
    check_ports(config)
    work = config.workdir if config.workdir is not None else Path(tempfile.mkdtemp(prefix="tritonctl-serve-"))
    try:
        if spec is not None and repository is None and config.url is None:
            from toolkit.repository.generate import generate_repository

            repository = work / "model_repository"
            report = generate_repository(spec, repository)
            echo(f"generated {repository}: {report.summary()}")
    except BaseException:
        if config.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
        raise
    return Serving(
        config,
        work=work,
        repository=repository,
        endpoints=endpoints,
        auth=auth or AuthConfig(),
        store=store,
        echo=echo,
    )


def start(config: ServeConfig, *, echo: Echo | None = None) -> Serving:
    """Start everything ``config`` describes and return once it serves (Triton ready, gateway listening).

    ``echo`` receives the progress lines ``tritonctl serve`` prints (default: this module's logger, at INFO).
    Raises a ``TritonctlError`` (one line) when something cannot start; whatever did start is stopped first."""
    serving = _prepare(config, echo or log.info)
    try:
        serving._launch()
    except BaseException:
        serving.stop(keep_work=True)
        raise
    return serving


def serve(config: ServeConfig, *, echo: Echo = print, stop_event: threading.Event | None = None) -> None:
    """``tritonctl serve``: start, serve until SIGINT/SIGTERM (or ``stop_event``), stop everything on the way out.

    Signals are caught only when called from the main thread (elsewhere, set ``stop_event``)."""
    serving = _prepare(config, echo)
    stop = stop_event or threading.Event()
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    clean = False
    try:
        serving._launch()
        echo("serving; Ctrl-C to stop")
        while not stop.wait(0.5):
            pass
        clean = True
    finally:
        try:
            serving.stop(keep_work=not clean)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            echo("stopped")
