"""``tritonctl loadtest``: headless Locust load tests with a report (JSON, CSV, HTML + PNG plots).

``loadtest()`` is the plain function (tests and scripts call it); ``loadtest_cmd`` is the Typer command the CLI
registers as ``app.command("loadtest")(loadtest_cmd)``. Without ``--target`` it starts an embedded Triton over
``--repository`` and loads the models the scenario needs, so ``tritonctl loadtest single_model`` works out of the box.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from toolkit.errors import TritonctlError

if TYPE_CHECKING:
    from toolkit.loadtest.runner import RunOptions

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


def plan_levels(
    sweep: str | None, concurrency_range: str | None, request_rate_range: str | None
) -> tuple[str, list[float]] | None:
    """The sweep asked for, as (mode, levels); None for a single run. The three flags exclude each other."""
    from toolkit.loadtest.scenario import LoadTestError
    from toolkit.loadtest.sweep import parse_range

    given = [f for f, v in (("--sweep", sweep), ("--concurrency-range", concurrency_range),
                            ("--request-rate-range", request_rate_range)) if v]  # fmt: skip
    if len(given) > 1:
        raise LoadTestError(f"{' and '.join(given)} exclude each other: give one")
    if sweep:
        return "concurrency", [float(n) for n in parse_sweep(sweep) or []]
    if concurrency_range:
        return "concurrency", parse_range(concurrency_range, "--concurrency-range", integer=True)
    if request_rate_range:
        return "rate", parse_range(request_rate_range, "--request-rate-range", integer=False)
    return None


def check_args(
    proto: str,
    encoding: str | None,
    processes: int,
    users: int | None,
    rate: float | None,
    grpc_client: str,
    sweep: str | None,
    concurrency_range: str | None,
    request_rate_range: str | None,
) -> tuple[str, list[float]] | None:
    """Every refusal before anything starts (a server, workers); returns the sweep plan."""
    from toolkit.loadtest.scenario import LoadTestError

    if proto not in ("http", "grpc", "sagemaker"):
        raise LoadTestError(f"unknown protocol {proto!r}: http, grpc or sagemaker")
    if encoding not in (None, "json", "binary"):
        raise LoadTestError(f"unknown encoding {encoding!r}: json or binary")
    if processes < 1:
        raise LoadTestError("--processes must be at least 1")
    if users is not None and users < 1:
        raise LoadTestError("--users must be at least 1")
    if grpc_client not in ("h2", "grpcio"):
        raise LoadTestError(f"unknown --grpc-client {grpc_client!r}: h2 or grpcio")
    plan = plan_levels(sweep, concurrency_range, request_rate_range)
    if plan and plan[0] == "concurrency" and users is not None:
        raise LoadTestError("--users and a concurrency sweep exclude each other (the sweep sets the users)")
    if plan and plan[0] == "rate" and rate is not None:
        raise LoadTestError("--rate and --request-rate-range exclude each other")
    return plan


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
    concurrency_range: str | None = None,
    request_rate_range: str | None = None,
    csv_path: Path | None = None,
    grpc_client: str = "h2",
    repository: Path = Path("model_repository"),
    progress: Callable[[str], None] | None = print,
) -> Path:
    """Run a scenario (or a sweep of it) and write the report; returns the path of report.html.

    Beside report.html: summary.json (what ``--json`` prints) and, with ``csv_path``, perf_analyzer's CSV.
    """
    import tempfile

    from toolkit.extras import require
    from toolkit.loadtest.runner import RunOptions, embedded_triton
    from toolkit.loadtest.scenario import LoadTestError, load_scenario, parse_duration

    require("loadtest", "tritonctl loadtest")  # before an embedded Triton is started for nothing
    sc = load_scenario(scenario)
    proto = protocol or sc.protocol
    ranges = (sweep, concurrency_range, request_rate_range)
    plan = check_args(proto, encoding, processes, users, rate, grpc_client, *ranges)
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
            grpc_client=grpc_client,
            progress=progress,
            extra={"endpoint": endpoint or ""},
        )
        html = _run_and_write(opts, plan, report_dir, csv_path, progress)
    if progress:
        progress(f"report: {html}")
    return html


def _run_and_write(
    opts: RunOptions,
    plan: tuple[str, list[float]] | None,
    report_dir: Path,
    csv_path: Path | None,
    progress: Callable[[str], None] | None,
) -> Path:
    """One run or a sweep; the report, summary.json and the perf_analyzer CSV. A sweep of one level is one run."""
    import json

    from toolkit.loadtest.perfcsv import write_perf_csv
    from toolkit.loadtest.report import write_report, write_sweep_report
    from toolkit.loadtest.runner import run_loadtest
    from toolkit.loadtest.sweep import run_sweep

    if plan and len(plan[1]) == 1:
        mode, (level,) = plan
        opts.users, opts.rps = (int(level), opts.rps) if mode == "concurrency" else (opts.users, level)
        plan = None
    if plan:
        result = run_sweep(opts, plan[1], plan[0])
        html = write_sweep_report(result, report_dir)
        runs, summary = result["runs"], sweep_summary(result)
    else:
        report = run_loadtest(opts)
        html = write_report(report, report_dir)
        runs, summary = [report], run_summary(report)
        if progress:
            progress(summary_line(report))
    summary["report"] = str(html)
    if csv_path is not None:
        summary["csv"] = str(write_perf_csv(runs, csv_path))
    (report_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return html


def run_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The loadtest summary (``--json``): the client totals and per target, errors, CPU verdict, server times."""
    keys = ("scenario", "protocol", "users", "processes", "target_rps", "duration_s", "window_s", "started")
    return {
        **{k: report[k] for k in keys},
        "client": {k: report["client"][k] for k in ("total", "per_target", "errors", "cpu")},
        "server": report["server"],
        "mme": report.get("mme") or None,
    }


def sweep_summary(result: dict[str, Any]) -> dict[str, Any]:
    cpu = [r["client"]["cpu"] for r in result["runs"]]
    points = [{**p, "cpu": c} for p, c in zip(result["sweep"], cpu, strict=True)]
    return {"scenario": result["scenario"], "protocol": result["protocol"], "mode": result["mode"], "sweep": points}


def summary_line(report: dict[str, Any]) -> str:
    t, cpu = report["client"]["total"], report["client"].get("cpu") or {}
    line = (
        f"{report['scenario']}: {t['throughput_rps']:.1f} req/s, p50 {t['p50_ms']:.3f} ms, p90 {t['p90_ms']:.3f} ms, "
        f"p99 {t['p99_ms']:.3f} ms, errors {t['errors']}"
    )
    if cpu.get("max") is not None:
        line += f"; load generator CPU {cpu['max']:.0%} of a core"
    if cpu.get("host_busy") is not None:
        line += f", machine {cpu['host_busy']:.0%} busy ({cpu['cpus']} CPUs)"
    return line + (f"\n{cpu['note']}" if cpu.get("note") else "")


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
    concurrency_range: str | None = typer.Option(
        None, "--concurrency-range", help="perf_analyzer's START[:END[:STEP]], e.g. 1:16:2"
    ),
    request_rate_range: str | None = typer.Option(
        None, "--request-rate-range", help="perf_analyzer's START[:END[:STEP]] in req/s (paced --users)"
    ),
    csv_path: Path | None = typer.Option(None, "-f", "--csv", help="also write perf_analyzer's CSV here"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON (progress goes to stderr)"),
    grpc_client: str = typer.Option("h2", "--grpc-client", help="h2 (raw HTTP/2) | grpcio (Locust user)"),
    report_dir: Path = typer.Option(Path("reports/loadtest"), "--report", help="directory for the report"),
    repository: Path = typer.Option(Path("model_repository"), "--repository", help="for the embedded Triton"),
) -> None:
    """Load-test Triton (HTTP, gRPC) or the gateway (SageMaker runtime API) and write report.html/json/CSV."""
    echo = (lambda s: typer.echo(s, err=True)) if as_json else typer.echo
    try:
        loadtest(
            scenario, report_dir=report_dir, users=users, spawn_rate=spawn_rate, duration=duration, warmup=warmup,
            rate=rate, protocol=protocol, encoding=encoding, target=target, triton_url=triton_url,
            mme_metrics_url=mme_metrics_url, endpoint=endpoint, processes=processes, sweep=sweep,
            concurrency_range=concurrency_range, request_rate_range=request_rate_range, csv_path=csv_path,
            grpc_client=grpc_client, repository=repository, progress=echo,
        )  # fmt: skip
        if as_json:
            sys.stdout.write((report_dir / "summary.json").read_text() + "\n")
    except TritonctlError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
