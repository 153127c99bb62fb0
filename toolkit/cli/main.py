"""``tritonctl``: the command line. Thin Typer commands over the library; see ``tritonctl --help``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from toolkit.cli.common import (
    GRPC_URL_OPTION,
    METRICS_URL_OPTION,
    URL_OPTION,
    endpoint_from,
    fail,
    friendly,
    parse_tensor_arg,
)

app = typer.Typer(
    name="tritonctl",
    help="SageMaker hosting patterns on NVIDIA Triton: manifest, repository, server, MME, gateway, load tests.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
models_app = typer.Typer(help="Triton's repository API: list, load, unload, readiness.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@app.command()
@friendly
def schema() -> None:
    """Print the manifest's JSON schema (for editors and CI checks)."""
    from toolkit.spec import manifest_json_schema

    typer.echo(manifest_json_schema())


@app.command()
@friendly
def generate(
    manifest: Path = typer.Argument(Path("tritonctl.yaml"), help="the manifest"),
    output: Path = typer.Option(Path("model_repository"), "-o", "--output", help="repository directory to write"),
    target: str = typer.Option("embedded", help="embedded (python backend adapters) or triton (native backends)"),
    prune: bool = typer.Option(True, help="remove generated model directories no longer in the manifest"),
    allow_outside: bool = typer.Option(
        False, "--allow-outside", help="let ensemble_files name files outside the manifest's directory"
    ),
) -> None:
    """Write a Triton model repository from the manifest (deterministic; unchanged files are not rewritten; on
    failure an existing output directory is left as it was and a new one is not created)."""
    from toolkit.repository.generate import generate_repository
    from toolkit.spec import load_manifest

    spec = load_manifest(manifest, allow_outside=allow_outside)
    report = generate_repository(spec, output, target=target, prune=prune)
    typer.echo(f"{output}: {report.summary()}")


@app.command()
@friendly
def validate(
    repository: Path = typer.Argument(Path("model_repository"), help="model repository directory"),
    gpus: bool = typer.Option(False, "--gpus", help="the target server has GPUs (accept KIND_GPU instance groups)"),
) -> None:
    """Check a repository offline for what Triton would reject at load; non-zero exit on any error."""
    from toolkit.repository.validate import format_findings, validate_repository

    if not repository.is_dir():
        fail(f"{repository} is not a directory")
    findings = validate_repository(repository, gpus=gpus)
    errors = [f for f in findings if f.severity == "error"]
    if findings:
        typer.echo(format_findings(findings), err=bool(errors))
    if errors:
        raise typer.Exit(1)
    typer.echo(f"{repository}: ok ({len(findings)} warnings)")


@models_app.command("list")
@friendly
def models_list(url: str | None = URL_OPTION, as_json: bool = typer.Option(False, "--json")) -> None:
    """Every model in the repository with its state."""
    from toolkit.server import TritonAdmin

    index = TritonAdmin(endpoint_from(url), timeout=10).index()
    if as_json:
        typer.echo(json.dumps(index))
        return
    for m in sorted(index, key=lambda m: m["name"]):
        reason = f"  ({m['reason']})" if m.get("reason") else ""
        typer.echo(f"{m['name']:<32} {m.get('version', '') or '-':<4} {m.get('state', 'UNAVAILABLE')}{reason}")


@models_app.command("load")
@friendly
def models_load(names: list[str] = typer.Argument(...), url: str | None = URL_OPTION) -> None:
    """Load (or reload) models."""
    from toolkit.server import TritonAdmin

    admin = TritonAdmin(endpoint_from(url))
    for name in names:
        admin.load(name)
        typer.echo(f"{name}: READY")


@models_app.command("unload")
@friendly
def models_unload(names: list[str] = typer.Argument(...), url: str | None = URL_OPTION) -> None:
    """Unload models."""
    from toolkit.server import TritonAdmin

    admin = TritonAdmin(endpoint_from(url))
    for name in names:
        admin.unload(name)
        typer.echo(f"{name}: unloaded")


@models_app.command("ready")
@friendly
def models_ready(name: str, url: str | None = URL_OPTION) -> None:
    """Exit 0 when the model is ready, 1 otherwise."""
    from toolkit.server import TritonAdmin

    ready = TritonAdmin(endpoint_from(url), timeout=10).model_ready(name)
    typer.echo(f"{name}: {'READY' if ready else 'NOT READY'}")
    if not ready:
        raise typer.Exit(1)


@app.command()
@friendly
def invoke(
    model: str,
    input_: list[str] = typer.Option(..., "--input", "-i", help="NAME=@x.npy or NAME=<json>; repeat per input"),
    protocol: str = typer.Option("http", help="http or grpc"),
    url: str | None = URL_OPTION,
    grpc_url: str | None = GRPC_URL_OPTION,
    version: str = typer.Option("", help="model version (default: Triton's policy)"),
    as_json: bool = typer.Option(False, "--json", help="print outputs as JSON"),
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
    typer.echo(format_outputs(run_invoke(endpoint_from(url, grpc_url), model, inputs, protocol, version), as_json))


@app.command()
@friendly
def metrics(
    url: str | None = URL_OPTION,
    metrics_url: str | None = METRICS_URL_OPTION,
    gateway: str | None = typer.Option(
        None, "--gateway", help="the tritonctl gateway (http://127.0.0.1:8080): adds the MME's SageMaker-named metrics"
    ),
    all_: bool = typer.Option(False, "--all", help="every metric line, not only tritonctl_/nv_inference_ ones"),
    emf: bool = typer.Option(
        False, "--emf", help="with --gateway: CloudWatch Embedded Metric Format lines, SageMaker's metric names"
    ),
) -> None:
    """Prometheus metrics of the server (Triton's, plus the gateway's and the MME's when served by tritonctl)."""
    import urllib.request

    from toolkit.server import TritonAdmin

    text = ""
    if gateway:
        gw = gateway if "://" in gateway else f"http://{gateway}"
        try:
            with urllib.request.urlopen(gw.rstrip("/") + "/metrics", timeout=10) as r:
                text = r.read().decode()
        except OSError as exc:
            fail(f"gateway metrics at {gw} unreachable: {exc}")
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
    for line in text.splitlines():
        if all_ or line.startswith(keep) or (line.startswith("# HELP") and any(k in line for k in keep)):
            typer.echo(line)


@app.command()
@friendly
def status(url: str | None = URL_OPTION) -> None:
    """Server health, version, and loaded models."""
    from toolkit.server import TritonAdmin

    admin = TritonAdmin(endpoint_from(url), timeout=5)
    if not admin.live():
        fail(f"Triton at {admin.endpoint.http} is not reachable")
    meta = admin.server_metadata()
    typer.echo(f"server   {meta.get('name')} {meta.get('version')} at {admin.endpoint.http_url}")
    typer.echo(f"ready    {admin.ready()}")
    loaded = admin.loaded()
    typer.echo(f"loaded   {len(loaded)}: {', '.join(loaded) if loaded else '-'}")


def _register_subcommands() -> None:
    """Commands that live in their own modules (one per area of the toolkit)."""
    from toolkit.cli.deploy import deploy_app
    from toolkit.cli.graph import graph_cmd
    from toolkit.cli.loadtest import loadtest_cmd
    from toolkit.cli.mme import mme_app
    from toolkit.cli.serve import serve_command

    app.command("serve", help="Serve a repository: embedded (or external) Triton behind the gateway.")(
        friendly(serve_command)
    )
    app.add_typer(mme_app, name="mme", help="Multi-model endpoint: simulate eviction policies, list/load/unload.")
    app.add_typer(deploy_app, name="deploy", help="SageMaker: plan, deploy, status, delete endpoints.")
    app.command("graph", help="Draw an ensemble's DAG (Mermaid always; SVG/PNG with graphviz).")(friendly(graph_cmd))
    app.command("loadtest", help="Run a Locust scenario headless and write a report (JSON, CSV, HTML + plots).")(
        friendly(loadtest_cmd)
    )


_register_subcommands()


if __name__ == "__main__":
    app()
