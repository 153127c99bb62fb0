"""``tritonctl tune``: the Typer command over ``toolkit.tune.run.tune`` (flags parsed here, everything else there)."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import JSON_OPTION, echo_json


def tune_cmd(
    model: str = typer.Argument(..., help="the model (or ensemble: its step models are tuned) to tune"),
    p99: str = typer.Option(..., "--p99", help="p99 latency bound, e.g. 5ms"),
    manifest: Path = typer.Option(Path("tritonctl.yaml"), "--manifest", help="the manifest (embedded Triton, --apply)"),
    url: str | None = typer.Option(
        None, "--url", help="tune on a running Triton (HTTP URL) instead of an embedded one"
    ),
    grpc_url: str | None = typer.Option(None, "--grpc-url", help="with --url: its gRPC host:port (default: +1)"),
    objective: str = typer.Option("throughput", help="throughput, or cost (needs a price; ties go to lighter configs)"),
    strategy: str = typer.Option("climb", help="climb (coordinate ascent, fast) or brute (every config: reference)"),
    budget_time: str = typer.Option("3m", "--budget-time", help="search time budget, e.g. 90s, 3m"),
    instances: str = typer.Option("1-4", help="instance counts: LO-HI (powers of two and both ends) or a list 1,2,3"),
    max_batch: str = typer.Option("1-64", "--max-batch", help="max batch sizes, same forms"),
    dynamic_batching: str = typer.Option("both", "--dynamic-batching", help="on, off or both"),
    queue_delays: str = typer.Option("0,100,200,500,1000", "--queue-delays", help="max queue delays (us) to try"),
    concurrency: str = typer.Option("1-16", help="client concurrencies: LO-HI (powers of two) or a list"),
    price_per_hour: float | None = typer.Option(None, "--price-per-hour", help="instance price (else deploy.prices)"),
    instance_type: str | None = typer.Option(None, "--instance-type", help="deploy.prices key (default: deploy's)"),
    report: Path | None = typer.Option(Path("reports/tune"), "--report", help="report directory (html, png, json)"),
    apply: bool = typer.Option(False, "--apply", help="write the winning settings into the manifest"),
    perf_analyzer: Path | None = typer.Option(None, "--perf-analyzer", help="perf_analyzer binary"),
    protocol: str = typer.Option("grpc", help="grpc or http (perf_analyzer's)"),
    window: str = typer.Option("500ms", help="perf_analyzer measurement window (3 per measurement)"),
    repeats: int = typer.Option(1, help="extra measurements of each of two configs within the noise"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Find the config (instances, max batch, dynamic batching, concurrency) with the best throughput (or cost) under
    a p99 bound; configs are loaded through Triton's config override (no restart), originals restored at the end."""
    from toolkit.tune.run import TuneOptions, tune
    from toolkit.tune.space import Space, TuneError, parse_range, parse_time

    modes = {"on": (True,), "off": (False,), "both": (True, False)}
    if dynamic_batching not in modes:
        raise TuneError(f"--dynamic-batching {dynamic_batching!r}: on, off or both")
    space = Space(
        instances=tuple(parse_range(instances, "--instances")),
        max_batch=tuple(parse_range(max_batch, "--max-batch")),
        dynamic=modes[dynamic_batching],
        delays_us=tuple(parse_range(queue_delays, "--queue-delays")),
        concurrency=tuple(parse_range(concurrency, "--concurrency")),
    )
    options = TuneOptions(
        model=model, p99_ms=parse_time(p99, "ms") * 1000.0, manifest=manifest, url=url, grpc_url=grpc_url,
        objective=objective,
        strategy=strategy, budget_s=parse_time(budget_time, "s"), space=space, price_per_hour=price_per_hour,
        instance_type=instance_type, perf_analyzer=perf_analyzer, protocol=protocol,
        window_ms=round(parse_time(window, "ms") * 1000.0), repeats=repeats, report_dir=report, apply=apply,
    )  # fmt: skip
    result = tune(options, progress=lambda line: typer.echo(line, err=as_json))
    if as_json:  # the search's progress went to stderr: stdout is the one document
        echo_json(result.to_dict())
    else:
        typer.echo(result.summary())
        if report is not None:
            typer.echo(f"report: {report / 'report.html'}")
        if result.applied:
            typer.echo(f"{manifest}: tuned settings written (tritonctl generate {manifest} reproduces them)")
    if not result.found:
        raise typer.Exit(1)
