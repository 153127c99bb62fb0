"""``tritonctl``: the command line. Thin Typer commands over the library; see ``tritonctl --help``.

Start-up is part of the interface: ``tritonctl --help`` and ``tritonctl generate`` run in scripts, CI and shell
completion (which runs the program on every Tab). So the modules imported here import only Typer and cheap parts of the
toolkit, and each command imports what it uses in its body (``tests/unit/test_cli_manners.py`` counts the modules).
Help is click's plain formatter (``rich_markup_mode=None``), not rich's: rich's renderer costs ~0.1 s to import, and
the plain one never cuts a flag name at 80 columns (it moves the help to the next line instead).
"""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import (
    API_KEY_OPTION,
    GRPC_URL_OPTION,
    JSON_OPTION,
    METRICS_URL_OPTION,
    URL_OPTION,
    api_key_headers,
    echo_json,
    endpoint_from,
    fail,
    friendly,
    parse_tensor_arg,
)
from toolkit.cli.models import models_app, status

app = typer.Typer(
    name="tritonctl",
    help="SageMaker hosting patterns on NVIDIA Triton: manifest, repository, server, MME, gateway, load tests.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(models_app, name="models", short_help="Triton's repository API: list, load, unload, ready.")


def _print_version(value: bool) -> None:
    """``tritonctl --version``: this package's version and that of nvidia-pytriton, the wheel whose tritonserver
    ``serve`` runs (read from installed metadata: no server is started to ask)."""
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    def of(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "not installed"

    typer.echo(f"tritonctl {of('tritonctl')} (nvidia-pytriton {of('nvidia-pytriton')})")
    raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="print the version and exit"
    ),
) -> None:
    """SageMaker hosting patterns on NVIDIA Triton: manifest, repository, server, MME, gateway, load tests."""


@app.command()
@friendly
def schema() -> None:
    """Print the manifest's JSON schema (for editors and CI checks)."""
    from toolkit.spec import manifest_json_schema

    typer.echo(manifest_json_schema())


@app.command(short_help="Write a Triton model repository from the manifest.")
@friendly
def generate(
    manifest: Path = typer.Argument(Path("tritonctl.yaml"), help="the manifest"),
    output: Path = typer.Option(Path("model_repository"), "-o", "--output", help="repository directory to write"),
    target: str = typer.Option("embedded", help="embedded (python backend adapters) or triton (native backends)"),
    prune: bool = typer.Option(True, help="remove generated model directories no longer in the manifest"),
    allow_outside: bool = typer.Option(
        False, "--allow-outside", help="let ensemble_files name files outside the manifest's directory"
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Write a Triton model repository from the manifest (deterministic; unchanged files are not rewritten; on
    failure an existing output directory is left as it was and a new one is not created)."""
    from toolkit.repository.generate import generate_repository
    from toolkit.spec import load_manifest

    spec = load_manifest(manifest, allow_outside=allow_outside)
    report = generate_repository(spec, output, target=target, prune=prune)
    if as_json:
        echo_json(
            {"output": output, "written": report.written, "unchanged": report.unchanged, "removed": report.removed}
        )
        return
    typer.echo(f"{output}: {report.summary()}")


@app.command(short_help="Check a repository offline for what Triton would reject.")
@friendly
def validate(
    repository: Path = typer.Argument(Path("model_repository"), help="model repository directory"),
    gpus: bool = typer.Option(False, "--gpus", help="the target server has GPUs (accept KIND_GPU instance groups)"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Check a repository offline for what Triton would reject at load; non-zero exit on any error."""
    from dataclasses import asdict

    from toolkit.repository.validate import format_findings, validate_repository

    if not repository.is_dir():
        fail(f"{repository} is not a directory")
    findings = validate_repository(repository, gpus=gpus)
    errors = [f for f in findings if f.severity == "error"]
    if as_json:  # the findings on stdout whatever they say; the exit code says whether any is an error
        echo_json({"repository": repository, "ok": not errors, "findings": [asdict(f) for f in findings]})
        raise typer.Exit(1 if errors else 0)
    if findings:
        typer.echo(format_findings(findings), err=bool(errors))
    if errors:
        raise typer.Exit(1)
    typer.echo(f"{repository}: ok ({len(findings)} warnings)")


@app.command(short_help="Run one inference (KServe v2, or SageMaker with --sagemaker).")
@friendly
def invoke(
    model: str,
    input_: list[str] = typer.Option(..., "--input", "-i", help="NAME=@x.npy or NAME=<json>; repeat per input"),
    protocol: str = typer.Option("http", help="http or grpc"),
    url: str | None = URL_OPTION,
    grpc_url: str | None = GRPC_URL_OPTION,
    version: str = typer.Option(
        "", "--model-version", "--version", help="model version (default: Triton's policy); --version: old spelling"
    ),
    as_json: bool = typer.Option(False, "--json", help="print outputs as JSON"),
    api_key: str | None = API_KEY_OPTION,
    sagemaker: str | None = typer.Option(
        None,
        "--sagemaker",
        help="a SageMaker endpoint name: invoke_endpoint (boto3) instead of KServe; MODEL is "
        "sent as TargetModel for multi-model endpoints (--target), else ignored",
    ),
    target: str = typer.Option("", "--target", help="with --sagemaker: model|container|variant|none: what MODEL is"),
    endpoint_url: str | None = typer.Option(None, "--endpoint-url", help="with --sagemaker: e.g. the local gateway"),
    region: str | None = typer.Option(None, "--region", help="with --sagemaker: AWS region"),
) -> None:
    """Run one inference. Inputs without the batch dimension are sent as a batch of one (KServe only: with
    --sagemaker, inputs are sent as given, FP32 for JSON numbers)."""
    from toolkit.cli.invoke import format_outputs
    from toolkit.cli.invoke import invoke as run_invoke

    inputs = dict(parse_tensor_arg(a) for a in input_)
    if sagemaker:
        from toolkit.deploy.runtime import invoke_endpoint

        if target not in ("", "model", "container", "variant", "none"):
            fail(f"--target {target!r}: use model, container, variant or none")
        picked = {f"target_{target}": model} if target in ("model", "container", "variant") else {}
        out = invoke_endpoint(sagemaker, inputs, endpoint_url=endpoint_url, region=region, **picked)
        typer.echo(format_outputs(out, as_json))
        return
    headers = api_key_headers(api_key) or None
    out = run_invoke(endpoint_from(url, grpc_url), model, inputs, protocol, version, headers)
    typer.echo(format_outputs(out, as_json))


@app.command(short_help="Prometheus metrics of Triton (and the gateway with --gateway).")
@friendly
def metrics(
    url: str | None = URL_OPTION,
    metrics_url: str | None = METRICS_URL_OPTION,
    gateway: str | None = typer.Option(
        None, "--gateway", help="the tritonctl gateway (http://127.0.0.1:8080): adds the MME's SageMaker-named metrics"
    ),
    all_: bool = typer.Option(False, "--all", help="every metric line, not only tritonctl_/nv_inference_ ones"),
    api_key: str | None = API_KEY_OPTION,
    as_json: bool = typer.Option(False, "--json", help="samples as JSON: name, labels, value"),
    emf: bool = typer.Option(False, "--emf", help="CloudWatch EMF lines, SageMaker's names (needs --gateway)"),
) -> None:
    """Prometheus metrics of the server (Triton's, plus the gateway's and the MME's when served by tritonctl)."""
    import urllib.request

    from toolkit.server import TritonAdmin

    text = ""
    if gateway:
        gw = gateway if "://" in gateway else f"http://{gateway}"
        try:
            req = urllib.request.Request(gw.rstrip("/") + "/metrics", headers=api_key_headers(api_key))
            with urllib.request.urlopen(req, timeout=10) as r:
                text = r.read().decode()
        except OSError as exc:
            fail(f"gateway metrics at {gw} unreachable: {exc} (is tritonctl serve running there? set --gateway)")
    if emf:
        import json

        from toolkit.gateway.emf import emf_documents
        from toolkit.loadtest.serverstats import parse_prometheus

        if not gateway:
            fail("--emf reads the gateway's metrics: give --gateway URL")
        for doc in emf_documents(parse_prometheus(text)):
            typer.echo(json.dumps(doc))
        return
    text += TritonAdmin(endpoint_from(url, metrics_url=metrics_url), timeout=10).metrics_text()
    keep = (
        "tritonctl_",
        "nv_inference_request_success",
        "nv_inference_request_failure",
        "nv_inference_count",
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",
        "nv_cpu_memory",
    )
    lines = [
        ln
        for ln in text.splitlines()
        if all_ or ln.startswith(keep) or (ln[:6] == "# HELP" and ln[7:].startswith(keep))
    ]
    if as_json:
        echo_json(_samples("\n".join(lines) + "\n"))
        return
    for line in lines:
        typer.echo(line)


def _samples(text: str) -> list[dict[str, object]]:
    """Prometheus text as data, read by prometheus_client's own parser (not a regex of ours). NaN and infinities,
    which JSON has no numbers for, are written as Prometheus spells them ("NaN", "+Inf", "-Inf")."""
    import math

    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.utils import floatToGoString

    return [
        {"name": s.name, "labels": s.labels, "value": s.value if math.isfinite(s.value) else floatToGoString(s.value)}
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def _register_subcommands() -> None:
    """Commands that live in their own modules (one per area of the toolkit)."""
    from toolkit.cli.deploy import deploy_app
    from toolkit.cli.graph import graph_cmd
    from toolkit.cli.loadtest import loadtest_cmd
    from toolkit.cli.mme import mme_app
    from toolkit.cli.serve import serve_command
    from toolkit.cli.tune import tune_cmd

    app.command("status", short_help="Server health, version and loaded models.")(friendly(status))
    app.command(
        "serve",
        short_help="Serve models: Triton behind the gateway, until Ctrl-C.",
        help="Serve a repository: embedded (or external) Triton behind the gateway.",
    )(friendly(serve_command))
    app.add_typer(
        mme_app,
        name="mme",
        short_help="Multi-model endpoint: simulate, list, load, unload.",
        help="Multi-model endpoint: simulate eviction policies, list/load/unload.",
    )
    app.add_typer(deploy_app, name="deploy", help="SageMaker: plan, deploy, status, delete endpoints.")
    app.command("graph", help="Draw an ensemble's DAG (Mermaid always; SVG/PNG with graphviz).")(friendly(graph_cmd))
    app.command(
        "loadtest",
        short_help="Load-test with Locust; write a report (HTML, JSON, CSV).",
        help="Run a Locust scenario headless and write a report (JSON, CSV, HTML + plots).",
    )(friendly(loadtest_cmd))
    app.command(
        "tune",
        short_help="Find the config that meets a p99 bound at the best throughput or cost.",
        help="Find the serving config (instances, max batch, dynamic batching, concurrency) that meets a p99 bound "
        "at the best throughput or cost; configs swapped through Triton's config override.",
    )(friendly(tune_cmd))


_register_subcommands()


if __name__ == "__main__":
    app()
