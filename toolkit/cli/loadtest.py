"""``tritonctl loadtest``: headless Locust load tests with a report (JSON, CSV, HTML + PNG plots).

``loadtest()`` is the plain function (tests and scripts call it); ``loadtest_cmd`` is the Typer command the CLI
registers as ``app.command("loadtest")(loadtest_cmd)``. Without ``--target`` it starts an embedded Triton over
``--repository`` and loads the models the scenario needs, so ``tritonctl loadtest single_model`` works out of the box.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import typer

from toolkit.errors import TritonctlError

# Locust, gevent, matplotlib and the Triton clients are imported by the functions that run a test, not here: the CLI
# registers this command at start-up and `tritonctl --help` must not pay for them (tests/unit/test_cli_manners.py).
# The scenario names for the help text are read from the directory (toolkit.loadtest.scenario.SCENARIO_DIR) without
# importing the scenario model (pydantic).
_SCENARIO_NAMES = ", ".join(
    sorted(x.stem for x in (Path(__file__).resolve().parents[2] / "load" / "scenarios").glob("*.yaml"))
)


def parse_sweep(text: str | None) -> list[int] | None:
    from toolkit.loadtest.scenario import LoadTestError

    if not text:
        return None
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise LoadTestError(f"bad --sweep {text!r}: give concurrency levels like 1,2,4,8,16") from None
    if not levels or min(levels) < 1:
        raise LoadTestError(f"bad --sweep {text!r}: levels must be positive integers")
    return levels


def loadtest(
    scenario: str,
    *,
    report_dir: Path,
    users: int | None = None,
    spawn_rate: float | None = None,
    duration: str | float | None = None,
    warmup: str | float | None = None,
    rate: float | None = None,
    protocol: str | None = None,
    encoding: str | None = None,
    target: str | None = None,
    triton_url: str | None = None,
    mme_metrics_url: str | None = None,
    endpoint: str | None = None,
    processes: int = 1,
    sweep: str | None = None,
    repository: Path = Path("model_repository"),
    progress: Callable[[str], None] | None = print,
) -> Path:
    """Run a scenario (or a concurrency sweep of it) and write the report; returns the path of report.html."""
    import tempfile

    from toolkit.extras import require
    from toolkit.loadtest.report import write_report, write_sweep_report
    from toolkit.loadtest.runner import RunOptions, embedded_triton, run_loadtest, run_sweep
    from toolkit.loadtest.scenario import LoadTestError, load_scenario, parse_duration

    require("loadtest", "tritonctl loadtest")  # before an embedded Triton is started for nothing
    sc = load_scenario(scenario)
    proto = protocol or sc.protocol
    if proto not in ("http", "grpc", "sagemaker"):
        raise LoadTestError(f"unknown protocol {proto!r}: http, grpc or sagemaker")
    if encoding not in (None, "json", "binary"):
        raise LoadTestError(f"unknown encoding {encoding!r}: json or binary")
    if processes < 1:
        raise LoadTestError("--processes must be at least 1")
    if users is not None and users < 1:
        raise LoadTestError("--users must be at least 1")
    levels = parse_sweep(sweep)
    with contextlib.ExitStack() as stack:
        if target is None:
            if proto == "sagemaker":
                raise LoadTestError("--protocol sagemaker needs --target (the gateway URL, e.g. from tritonctl serve)")
            models = sc.requires or sorted({t.model for t in sc.expanded_targets()})
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tritonctl-lt-triton-")))
            if progress:
                progress(f"starting an embedded Triton over {repository} with {', '.join(models)}")
            ep = stack.enter_context(embedded_triton(repository, models, work))
            target = ep.grpc if proto == "grpc" else ep.http_url
            triton_url = triton_url or ep.http_url
        elif proto == "grpc" and not triton_url and progress:
            progress("note: no --triton-url given, so the report has no server-side breakdown")
        opts = RunOptions(
            scenario=sc,
            target=target,
            protocol=proto,
            encoding=encoding,
            triton_url=triton_url,
            mme_metrics_url=mme_metrics_url,
            users=users,
            spawn_rate=spawn_rate,
            duration=parse_duration(duration) if duration is not None else None,
            warmup=parse_duration(warmup) if warmup is not None else None,
            rps=rate,
            processes=processes,
            progress=progress,
            extra={"endpoint": endpoint or ""},
        )
        if levels:
            html = write_sweep_report(run_sweep(opts, levels), report_dir)
        else:
            report = run_loadtest(opts)
            html = write_report(report, report_dir)
            if progress:
                progress(summary_line(report))
    if progress:
        progress(f"report: {html}")
    return html


def summary_line(report: dict) -> str:
    t = report["client"]["total"]
    return (
        f"{report['scenario']}: {t['throughput_rps']:.1f} req/s, p50 {t['p50_ms']:.3f} ms, p90 {t['p90_ms']:.3f} ms, "
        f"p99 {t['p99_ms']:.3f} ms, errors {t['errors']}"
    )


def loadtest_cmd(
    scenario: str = typer.Argument(..., help=f"scenario name in load/scenarios ({_SCENARIO_NAMES}) or YAML"),
    users: int | None = typer.Option(None, "--users", "-u", help="concurrent users (default: the scenario's)"),
    spawn_rate: float | None = typer.Option(None, "--spawn-rate", "-r", help="users started per second"),
    duration: str | None = typer.Option(None, "--duration", "-t", help="e.g. 60s, 2m (default: the scenario's)"),
    warmup: str | None = typer.Option(None, "--warmup", help="leading seconds left out of the summary"),
    rate: float | None = typer.Option(None, "--rate", help="total requests/s (paced users) instead of closed loop"),
    protocol: str | None = typer.Option(None, "--protocol", help="http | grpc | sagemaker (default: the scenario's)"),
    encoding: str | None = typer.Option(None, "--encoding", help="json | binary tensors (http, sagemaker)"),
    target: str | None = typer.Option(None, "--target", help="URL to load (default: start an embedded Triton)"),
    triton_url: str | None = typer.Option(None, "--triton-url", help="Triton HTTP URL for server-side statistics"),
    mme_metrics_url: str | None = typer.Option(None, "--mme-metrics-url", help="MME Prometheus text URL"),
    endpoint: str | None = typer.Option(None, "--endpoint", help="SageMaker endpoint name (sagemaker protocol)"),
    processes: int = typer.Option(1, "--processes", "-p", help="load-generating processes (one core each)"),
    sweep: str | None = typer.Option(None, "--sweep", help="concurrency levels, e.g. 1,2,4,8,16"),
    report_dir: Path = typer.Option(Path("reports/loadtest"), "--report", help="directory for the report"),
    repository: Path = typer.Option(Path("model_repository"), "--repository", help="for the embedded Triton"),
) -> None:
    """Load-test Triton (HTTP, gRPC) or the gateway (SageMaker runtime API) and write report.html/json/CSV."""
    try:
        loadtest(
            scenario, report_dir=report_dir, users=users, spawn_rate=spawn_rate, duration=duration, warmup=warmup,
            rate=rate, protocol=protocol, encoding=encoding, target=target, triton_url=triton_url,
            mme_metrics_url=mme_metrics_url, endpoint=endpoint, processes=processes, sweep=sweep,
            repository=repository, progress=typer.echo,
        )  # fmt: skip
    except TritonctlError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
