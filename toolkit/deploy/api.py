"""The library's deploy entry points (what the CLI runs): plan, deploy, status, delete, build.

Each takes the manifest path (artifact paths and ``deploy.samples``/``python_env`` are relative to its folder) and
the endpoint name; ``endpoint_url`` points every client at one URL (moto in the tests and the demo).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.deploy.apply import run_calls
from toolkit.deploy.aws import Clients, make_clients
from toolkit.deploy.lifecycle import delete_calls, status_doc, status_lines
from toolkit.deploy.plan import Call, State, plan_calls, read_state
from toolkit.deploy.prepare import Prepared, deploy_spec, prepare
from toolkit.spec import load_manifest

Echo = Callable[[str], None]


@dataclass
class Planned:
    prepared: Prepared
    calls: list[Call]
    offline: bool


def plan(
    manifest: Path,
    endpoint: str,
    *,
    offline: bool = False,
    image: str | None = None,
    region: str | None = None,
    endpoint_url: str | None = None,
    clients: Clients | None = None,
) -> Planned:
    """The calls ``deploy`` would make. Reads AWS (Describe/List/Head) unless ``offline``; never writes."""
    spec = load_manifest(manifest)
    prepared = prepare(spec, endpoint, base_dir=Path(manifest).resolve().parent, image=image, region=region)
    if offline:
        return Planned(prepared, plan_calls(prepared.desired, State()), True)
    clients = clients or make_clients(prepared.region, endpoint_url)
    return Planned(prepared, plan_calls(prepared.desired, read_state(clients, prepared.desired)), False)


def deploy(
    manifest: Path,
    endpoint: str,
    echo: Echo,
    *,
    image: str | None = None,
    region: str | None = None,
    endpoint_url: str | None = None,
    wait_timeout_s: float = 3600.0,
    poll_s: float = 15.0,
) -> Planned:
    """Plan against what exists, then run the plan (uploads, models, config, endpoint, wait, scaling, clean-up)."""
    spec = load_manifest(manifest)
    prepared = prepare(spec, endpoint, base_dir=Path(manifest).resolve().parent, image=image, region=region)
    clients = make_clients(prepared.region, endpoint_url)
    calls = plan_calls(prepared.desired, read_state(clients, prepared.desired))
    if not calls:
        echo(f"{endpoint}: up to date (nothing to do)")
    run_calls(clients, calls, echo, wait_timeout_s=wait_timeout_s, poll_s=poll_s)
    return Planned(prepared, calls, False)


def endpoint_status_doc(
    endpoint: str, *, manifest: Path | None = None, region: str | None = None, endpoint_url: str | None = None
) -> dict[str, Any]:
    """The endpoint as it is now in SageMaker, as data (``status_lines`` prints it)."""
    region = region or (deploy_spec(load_manifest(manifest)).region if manifest else None)
    from toolkit.deploy.aws import resolve_region

    return status_doc(make_clients(resolve_region(region), endpoint_url), endpoint)


def endpoint_status(
    endpoint: str, *, manifest: Path | None = None, region: str | None = None, endpoint_url: str | None = None
) -> list[str]:
    return status_lines(endpoint_status_doc(endpoint, manifest=manifest, region=region, endpoint_url=endpoint_url))


def delete(
    endpoint: str,
    echo: Echo,
    *,
    manifest: Path | None = None,
    purge_s3: bool = False,
    region: str | None = None,
    endpoint_url: str | None = None,
    dry_run: bool = False,
) -> list[Call]:
    """Delete the endpoint, its configs, models and scaling (and its S3 prefix with ``purge_s3``: needs the
    manifest's ``deploy:`` for the bucket)."""
    from toolkit.deploy.aws import resolve_region
    from toolkit.deploy.errors import DeployError

    spec = deploy_spec(load_manifest(manifest)) if manifest else None
    if purge_s3 and spec is None:
        raise DeployError("--purge-s3 needs the manifest (its deploy: section names the bucket and prefix)")
    clients = make_clients(resolve_region(region, spec.region if spec else None), endpoint_url)
    bucket = spec.bucket if spec and purge_s3 else None
    prefix = (f"{spec.prefix}/{endpoint}" if spec.prefix else endpoint) if spec and purge_s3 else None
    calls = delete_calls(clients, endpoint, bucket, prefix)
    if not calls:
        echo(f"{endpoint}: nothing to delete")
    if not dry_run:
        run_calls(clients, calls, echo)
    return calls


def build(manifest: Path, endpoint: str, out: Path, *, region: str | None = None) -> list[Path]:
    """Write the endpoint's tarballs to ``out`` (as ``deploy`` would upload them); returns their paths."""
    spec = load_manifest(manifest)
    region = region or (spec.deploy.region if spec.deploy else None) or "us-east-1"  # tarballs do not depend on it
    prepared = prepare(spec, endpoint, base_dir=Path(manifest).resolve().parent, region=region)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for u in prepared.desired.uploads:
        path = out / u.key.rsplit("/", 1)[-1]
        path.write_bytes(u.tarball.data)
        paths.append(path)
    return paths
