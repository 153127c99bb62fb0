"""``tritonctl serve``: the Typer layer over ``toolkit.serving.serve`` (flags -> ``ServeConfig`` -> ``serve``).

Everything else -- checking the options, starting Triton, the model manager and the gateway, stopping them on Ctrl-C
or SIGTERM -- lives in the library (``toolkit.serving``, ``toolkit.serve_config``), so the CLI, ``make demo``, the
tests and library users run the same code. The CLI registers ``app.command("serve")(serve_command)``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer


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
    policy: str = typer.Option("gdsf", "--policy", help="MME eviction policy: gdsf (cost-aware) or lru"),
    max_concurrent_loads: int | None = typer.Option(
        None, "--max-concurrent-loads", help="MME: Triton loads at once, first come first served (default: CPUs, <= 4)"
    ),
    endpoint: str | None = typer.Option(
        None, "--endpoint", help="a SageMaker multi-model endpoint NAME over --store (no manifest needed)"
    ),
    model_cache_setting: str = typer.Option(
        "Enabled", "--model-cache-setting", help="--endpoint's ModelCacheSetting: Disabled unloads after each call"
    ),
    load_wait_s: float = typer.Option(
        30.0, "--load-wait", help="seconds a request waits for its cold model, then 429 ModelNotReadyException"
    ),
    multiplex: bool = typer.Option(
        False, "--multiplex", help="serve small numpy/sklearn/ONNX models inside shared model hosts (docs/mme.md)"
    ),
    multiplex_budget: str = typer.Option("256MiB", "--multiplex-budget", help="bytes of resident models per host"),
    multiplex_max_models: int = typer.Option(0, "--multiplex-max-models", help="resident models per host (0: any)"),
    multiplex_max_bytes: str = typer.Option("64KiB", "--multiplex-max-bytes", help="larger artifacts get own stubs"),
    multiplex_policy: str = typer.Option("lru", "--multiplex-policy", help="eviction inside a host: lru or gdsf"),
    multiplex_instances: int = typer.Option(1, "--multiplex-instances", help="processes per host (budgets: each)"),
    auth: Path | None = typer.Option(None, "--auth", help="principals, keys and policies (YAML/JSON)"),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="address the gateway binds to (Triton's with --no-gateway; admin stays loopback)"
    ),
    drain_s: float = typer.Option(
        10.0, "--drain", min=0, help="on Ctrl-C/SIGTERM, seconds the gateway gives requests in flight to be answered"
    ),
    triton_trace_config: list[str] | None = typer.Option(
        None,
        "--triton-trace-config",
        help="passed to tritonserver --trace-config (repeatable): mode=opentelemetry, rate=1, level=TIMESTAMPS, "
        "opentelemetry,url=http://127.0.0.1:4318/v1/traces, or triton,file=/tmp/trace.json",
    ),
    access_log: str | None = typer.Option(
        None, "--access-log", help="gateway access log, JSON lines: a file, or - for stderr"
    ),
    log_level: str = typer.Option(
        "warning", "--log-level", help="tritonctl's log level: debug, info, warning, error (debug: Triton verbose too)"
    ),
) -> None:
    """Serve models: Triton behind the gateway (KServe v2 HTTP/gRPC + SageMaker runtime API) until Ctrl-C."""
    from toolkit.serve_config import ServeConfig
    from toolkit.serving import serve

    level = log_level.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise typer.BadParameter(f"{log_level!r}: use debug, info, warning or error", param_hint="--log-level")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    config = ServeConfig(
        repository=repository,
        manifest=manifest,
        load=load or (),
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
        max_concurrent_loads=max_concurrent_loads,
        endpoint=endpoint,
        model_cache_setting=model_cache_setting,
        load_wait_s=load_wait_s,
        multiplex=multiplex,
        multiplex_budget=multiplex_budget,
        multiplex_max_models=multiplex_max_models,
        multiplex_max_bytes=multiplex_max_bytes,
        multiplex_policy=multiplex_policy,
        multiplex_instances=multiplex_instances,
        auth=auth,
        host=host,
        drain_s=drain_s,
        triton_trace_config=triton_trace_config or (),
        triton_log_verbose=1 if level == "DEBUG" else 0,
        access_log=access_log,
    )
    serve(config, echo=typer.echo)
