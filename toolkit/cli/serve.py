"""``tritonctl serve``: Triton (embedded and supervised, or external) behind the gateway, in the foreground.

``serve()`` is the plain function (tests and other tools call it); ``serve_command`` is the Typer command the CLI
registers as ``app.command("serve")(serve_command)``. Ctrl-C or SIGTERM stops the gateway, then Triton, cleanly.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from toolkit.errors import TritonctlError


class ServeError(TritonctlError):
    """``tritonctl serve`` was given options that cannot work together."""


def parse_size(text: str) -> int:
    """``8GiB`` -> 8589934592, ``500MB`` -> 500000000 (the MME's own parser, with a CLI-shaped error)."""
    from toolkit.mme.footprint import parse_size as _parse

    try:
        return _parse(text)
    except ValueError as exc:
        raise ServeError(str(exc)) from None


def _make_manager(endpoint: Any, repository: Path | None, **kw: Any) -> Any:
    """The MME manager over the repository directory (None = the gateway's manager-less mode, for --url alone).

    ``load_timeout`` (seconds; None = the manager's own default) bounds each cold load and every Triton call."""
    from toolkit.mme.manager import DEFAULT_LOAD_TIMEOUT, ModelManager

    if repository is None:
        if any(v is not None for v in kw.values()):
            raise ServeError(
                "--store/--max-models/--memory-budget/--gpu-memory-fraction/--policy need a model repository DIR that "
                "Triton reads"
            )
        return None
    store = None
    if kw.get("store"):
        from toolkit.mme.stores import open_store

        store = open_store(kw["store"])
    return ModelManager(
        endpoint,
        repository=repository,
        store=store,
        max_models=kw.get("max_models"),
        memory_budget_bytes=kw.get("memory_budget_bytes"),
        gpu_memory_fraction=kw.get("gpu_memory_fraction"),
        policy=kw.get("policy") or "lru",
        load_timeout=kw.get("load_timeout") or DEFAULT_LOAD_TIMEOUT,
    )


def serve(
    repository: Path | None = None,
    *,
    manifest: Path | None = None,
    load: list[str] | None = None,
    http_port: int | None = None,
    grpc_port: int | None = None,
    metrics_port: int | None = None,
    gateway: bool = True,
    gateway_port: int = 8080,
    gateway_grpc_port: int | None = 8081,
    admin_port: int | None = None,
    url: str | None = None,
    store: str | None = None,
    max_models: int | None = None,
    memory_budget: str | None = None,
    gpu_memory_fraction: float | None = None,
    policy: str = "lru",
    auth: Path | None = None,
    host: str = "127.0.0.1",
    drain_s: float = 10.0,
    workdir: Path | None = None,
    echo: Callable[[str], None] = print,
    stop_event: threading.Event | None = None,
) -> None:
    """Run until SIGINT/SIGTERM (or ``stop_event``); every started piece is stopped on the way out."""
    from toolkit.gateway.auth import AuthConfig
    from toolkit.gateway.core import GatewayOptions
    from toolkit.gateway.server import Gateway, GatewayThread
    from toolkit.server import EmbeddedTriton, ServerOptions, Supervisor, TritonEndpoint

    # One work directory (generated repository, Triton's log): ours unless --workdir, removed after a clean stop and
    # kept (and named) after a failure, when its log is what explains it.
    own_work = workdir is None
    work = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="tritonctl-serve-"))
    clean = False
    try:  # options and manifest first: a mistake here must not leave an empty work directory behind
        endpoints: list[Any] = []
        if manifest is not None:
            from toolkit.repository.generate import generate_repository
            from toolkit.spec import load_manifest

            spec = load_manifest(manifest)
            endpoints = list(spec.endpoints)
            if repository is None and url is None:
                repository = work / "model_repository"
                report = generate_repository(spec, repository)
                echo(f"generated {repository}: {report.summary()}")
        if repository is None and url is None:
            raise ServeError("give a model repository DIR, --manifest FILE, or --url of a running Triton")
        loads = load or ["none"]
        if loads == ["all"]:
            loads = ["*"]
        elif loads == ["none"]:
            loads = []
        elif "all" in loads or "none" in loads:
            raise ServeError("--load takes all, none, or model names (not a mix)")
        auth_cfg = AuthConfig.load(auth) if auth else AuthConfig()
        if gpu_memory_fraction is not None:  # the manager's own check, before anything starts
            from toolkit.mme.errors import ManagerConfigError
            from toolkit.mme.gpu import check_fraction

            try:
                check_fraction(gpu_memory_fraction)
            except ManagerConfigError as exc:
                raise ServeError(str(exc)) from None
        mme = {
            "--store": store,
            "--max-models": max_models,
            "--memory-budget": memory_budget,
            "--gpu-memory-fraction": gpu_memory_fraction,
            "--policy": None if policy == "lru" else policy,
        }
        if not gateway and (given := [k for k, v in mme.items() if v is not None]):
            raise ServeError(
                f"{', '.join(given)} configure the MME manager, which runs in the gateway: drop --no-gateway"
            )
    except BaseException:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
        raise

    stop = stop_event or threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    supervisor: Supervisor | None = None
    runner: GatewayThread | None = None
    try:
        if url is not None:
            endpoint = TritonEndpoint.from_url(url)
            echo(f"using Triton at {endpoint.http_url}")
        else:
            assert repository is not None
            options = ServerOptions(
                repository=repository,
                # Behind the gateway, Triton (no auth, repository API, shared memory) stays on loopback whatever
                # --host says: only the gateway is published. Without the gateway, --host is Triton's.
                host="127.0.0.1" if gateway else host,
                http_port=http_port,
                grpc_port=grpc_port,
                metrics_port=metrics_port,
                load=loads,
                workdir=work,
                log_file=work / "tritonserver.log",
            )
            supervisor = Supervisor(EmbeddedTriton(options), reload="lazy")
            endpoint = supervisor.start(timeout=120)
            echo(f"triton   http {endpoint.http}  grpc {endpoint.grpc}  metrics {endpoint.metrics}  (log {work})")
        if gateway:
            mm = _make_manager(
                endpoint,
                repository,
                store=store,
                max_models=max_models,
                memory_budget_bytes=parse_size(memory_budget) if memory_budget else None,
                gpu_memory_fraction=gpu_memory_fraction,
                policy=policy if policy != "lru" else None,
            )
            gopts = GatewayOptions(
                host=host,
                http_port=gateway_port,
                grpc_port=gateway_grpc_port,
                admin_port=admin_port,
                endpoints=endpoints,
                auth=auth_cfg,
                repository=repository,
                drain_s=drain_s,
            )
            gw = Gateway(gopts, endpoint, models=mm)
            if supervisor is not None:
                gw.attach(supervisor)
            runner = GatewayThread(gw)
            a = runner.start()
            echo(f"gateway  http {a.http_url}  grpc {a.grpc or '-'}  admin {a.admin_url or '-'}")
            if endpoints:
                echo("endpoints " + ", ".join(f"{e.name} ({e.mode})" for e in endpoints))
        echo("serving; Ctrl-C to stop")
        while not stop.wait(0.5):
            pass
        clean = True
    finally:
        if runner is not None:
            runner.stop()
        if supervisor is not None:
            supervisor.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if own_work and clean:
            shutil.rmtree(work, ignore_errors=True)
        elif own_work:
            echo(f"work directory kept for inspection: {work}")
        echo("stopped")


def serve_command(
    repository: Path | None = typer.Argument(None, help="Triton model repository directory"),
    manifest: Path | None = typer.Option(None, "--manifest", help="manifest: repository generated, endpoints read"),
    load: list[str] | None = typer.Option(None, "--load", help="all, none (default), or a model name (repeatable)"),
    http_port: int | None = typer.Option(8000, "--http-port", help="Triton HTTP port (0: a free one)"),
    grpc_port: int | None = typer.Option(8001, "--grpc-port", help="Triton gRPC port (0: a free one)"),
    metrics_port: int | None = typer.Option(8002, "--metrics-port", help="Triton metrics port (0: a free one)"),
    gateway: bool = typer.Option(True, "--gateway/--no-gateway", help="run the front door (else Triton only)"),
    gateway_port: int = typer.Option(8080, "--gateway-port", help="gateway HTTP port (KServe v2 + SageMaker API)"),
    gateway_grpc_port: int | None = typer.Option(8081, "--gateway-grpc-port", help="gateway gRPC port (KServe v2)"),
    admin_port: int | None = typer.Option(None, "--admin-port", help="admin API port (repository load/unload/index)"),
    url: str | None = typer.Option(None, "--url", help="an external Triton (HTTP URL) instead of the embedded one"),
    store: str | None = typer.Option(None, "--store", help="MME artifact store: a directory or s3://bucket/prefix"),
    max_models: int | None = typer.Option(None, "--max-models", help="MME: most models resident at once"),
    memory_budget: str | None = typer.Option(None, "--memory-budget", help="MME: memory for resident models (8GiB)"),
    gpu_memory_fraction: float | None = typer.Option(
        None, "--gpu-memory-fraction", help="MME: share of the GPU memory Triton reports for resident models (0-1]"
    ),
    policy: str = typer.Option("lru", "--policy", help="MME eviction policy: lru or gdsf"),
    auth: Path | None = typer.Option(None, "--auth", help="principals, keys and policies (YAML/JSON)"),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="address the gateway binds to (Triton's with --no-gateway; admin stays loopback)"
    ),
    drain_s: float = typer.Option(
        10.0, "--drain", min=0, help="on Ctrl-C/SIGTERM, seconds the gateway gives requests in flight to be answered"
    ),
) -> None:
    """Serve models: Triton behind the gateway (KServe v2 HTTP/gRPC + SageMaker runtime API) until Ctrl-C."""
    from toolkit.cli.common import friendly

    friendly(serve)(
        repository,
        manifest=manifest,
        load=load,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        gateway=gateway,
        gateway_port=gateway_port,
        gateway_grpc_port=gateway_grpc_port,
        admin_port=admin_port,
        url=url,
        store=store,
        max_models=max_models,
        memory_budget=memory_budget,
        gpu_memory_fraction=gpu_memory_fraction,
        policy=policy,
        auth=auth,
        host=host,
        drain_s=drain_s,
        echo=typer.echo,
    )
