"""``tritonctl deploy``: the manifest's endpoints on SageMaker (plan, sagemaker, status, delete, build).

Thin over ``toolkit.deploy.api``. ``plan`` prints every AWS call ``sagemaker`` would make; ``--endpoint-url`` points
all clients at one URL (moto, a VPC endpoint). Credentials come from the usual AWS chain.
"""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import JSON_OPTION, echo_json, friendly

deploy_app = typer.Typer(
    help="SageMaker: plan, deploy, status, delete the manifest's endpoints.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

MANIFEST_ARG = typer.Argument(Path("tritonctl.yaml"), help="the manifest (with a deploy: section)")
ENDPOINT_OPT = typer.Option(..., "--endpoint", "-e", help="the manifest endpoint to deploy")
ENDPOINT_URL_OPT = typer.Option(None, "--endpoint-url", help="one URL for S3, SageMaker and autoscaling (e.g. moto)")
REGION_OPT = typer.Option(None, "--region", help="AWS region (default: deploy.region, then the AWS configuration)")
IMAGE_OPT = typer.Option(None, "--image", help="container image URI (default: sagemaker-tritonserver for the region)")


def _call_doc(call: object) -> dict[str, object]:
    """One AWS call as data: service, operation, parameters (tags left out, as in the text), why."""
    from toolkit.deploy.plan import Call

    assert isinstance(call, Call)
    params = {k: v for k, v in call.params.items() if k != "Tags"}
    return {"service": call.service, "operation": call.operation, "params": params, "why": call.why}


def _print_plan(planned: object, as_json: bool = False) -> None:
    from toolkit.deploy.api import Planned

    assert isinstance(planned, Planned)
    p = planned.prepared
    d = p.desired
    if as_json:
        head = {"endpoint": d.endpoint, "region": p.region, "instance_type": p.instance_type, "image": p.image}
        s3 = f"s3://{d.bucket}/{d.prefix}/"
        calls = [_call_doc(c) for c in planned.calls]
        echo_json({**head, "s3": s3, "notes": d.notes, "offline": planned.offline, "calls": calls})
        return
    typer.echo(f"endpoint {d.endpoint}  region {p.region}  instance {p.instance_type}")
    typer.echo(f"image    {p.image}")
    typer.echo(f"s3       s3://{d.bucket}/{d.prefix}/")
    for note in d.notes:
        typer.echo(f"note     {note}")
    against = "an empty account (--offline: nothing read)" if planned.offline else "what exists (read only)"
    typer.echo(f"{len(planned.calls)} call(s) against {against}:")
    for i, call in enumerate(planned.calls, 1):
        typer.echo(f"  {i}. {call}")


@deploy_app.command("plan", short_help="Print the AWS calls `deploy sagemaker` would make.")
@friendly
def plan_cmd(
    manifest: Path = MANIFEST_ARG,
    endpoint: str = ENDPOINT_OPT,
    offline: bool = typer.Option(False, "--offline", help="make no AWS call at all: plan against an empty account"),
    image: str | None = IMAGE_OPT,
    region: str | None = REGION_OPT,
    endpoint_url: str | None = ENDPOINT_URL_OPT,
    as_json: bool = JSON_OPTION,
) -> None:
    """Print the AWS calls `deploy sagemaker` would make (reads what exists; creates, changes nothing)."""
    from toolkit.deploy.api import plan

    planned = plan(manifest, endpoint, offline=offline, image=image, region=region, endpoint_url=endpoint_url)
    _print_plan(planned, as_json)


@deploy_app.command("sagemaker", short_help="Deploy one manifest endpoint to SageMaker.")
@friendly
def sagemaker_cmd(
    manifest: Path = MANIFEST_ARG,
    endpoint: str = ENDPOINT_OPT,
    image: str | None = IMAGE_OPT,
    region: str | None = REGION_OPT,
    endpoint_url: str | None = ENDPOINT_URL_OPT,
    wait_timeout: float = typer.Option(3600.0, "--wait-timeout", help="seconds to wait for InService"),
    poll: float = typer.Option(15.0, "--poll", help="seconds between DescribeEndpoint polls"),
) -> None:
    """Deploy one manifest endpoint to SageMaker: upload tarballs, models, config, endpoint, wait, autoscaling."""
    from toolkit.deploy.api import deploy

    deploy(
        manifest,
        endpoint,
        typer.echo,
        image=image,
        region=region,
        endpoint_url=endpoint_url,
        wait_timeout_s=wait_timeout,
        poll_s=poll,
    )
    typer.echo(f"{endpoint}: deployed")


@deploy_app.command("status", short_help="The endpoint's status, variants and scaling.")
@friendly
def status_cmd(
    endpoint: str = ENDPOINT_OPT,
    manifest: Path | None = typer.Option(None, "--manifest", help="read the region from its deploy: section"),
    region: str | None = REGION_OPT,
    endpoint_url: str | None = ENDPOINT_URL_OPT,
    as_json: bool = JSON_OPTION,
) -> None:
    """The endpoint's status, config, variants, scaling (and SageMaker's FailureReason)."""
    from toolkit.deploy.api import endpoint_status_doc
    from toolkit.deploy.lifecycle import status_lines

    doc = endpoint_status_doc(endpoint, manifest=manifest, region=region, endpoint_url=endpoint_url)
    if as_json:
        echo_json(doc)
        return
    for line in status_lines(doc):
        typer.echo(line)


@deploy_app.command("delete", short_help="Delete the endpoint and what deploy made for it.")
@friendly
def delete_cmd(
    endpoint: str = ENDPOINT_OPT,
    manifest: Path | None = typer.Option(None, "--manifest", help="the manifest (needed for --purge-s3)"),
    purge_s3: bool = typer.Option(False, "--purge-s3", help="also delete the endpoint's S3 prefix"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the calls, make none"),
    region: str | None = REGION_OPT,
    endpoint_url: str | None = ENDPOINT_URL_OPT,
    as_json: bool = typer.Option(False, "--json", help="the calls as JSON on stdout (progress on stderr)"),
) -> None:
    """Delete the endpoint, its endpoint configs, models and scaling (S3 kept unless --purge-s3)."""
    from toolkit.deploy.api import delete

    def progress(line: str) -> None:
        typer.echo(line, err=as_json)  # with --json, stdout carries the document only

    calls = delete(
        endpoint,
        progress,
        manifest=manifest,
        purge_s3=purge_s3,
        region=region,
        endpoint_url=endpoint_url,
        dry_run=dry_run,
    )
    if as_json:
        echo_json({"endpoint": endpoint, "dry_run": dry_run, "calls": [_call_doc(c) for c in calls]})
    elif dry_run:
        for i, call in enumerate(calls, 1):
            typer.echo(f"  {i}. {call}")


@deploy_app.command("build", short_help="Write the endpoint's tarballs; upload nothing.")
@friendly
def build_cmd(
    manifest: Path = MANIFEST_ARG,
    endpoint: str = ENDPOINT_OPT,
    output: Path = typer.Option(Path("build/sagemaker"), "-o", "--output", help="folder for the tarballs"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Write the endpoint's tarballs (SageMaker's Triton layout) without uploading anything."""
    from toolkit.deploy.api import build

    paths = build(manifest, endpoint, output)
    if as_json:
        echo_json([str(p) for p in paths])
        return
    for path in paths:
        typer.echo(str(path))
