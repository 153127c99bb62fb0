"""boto3 clients for a deployment: one session, the usual credential chain, an optional endpoint URL (moto, a VPC
endpoint) and a short retry budget, so a wrong URL or a missing permission fails in seconds with one line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from toolkit.deploy.errors import DeployError


@dataclass
class Clients:
    region: str
    s3: Any
    sagemaker: Any
    autoscaling: Any
    runtime: Any


def resolve_region(*candidates: str | None) -> str:
    """The first region given, else the AWS configuration's (profile, AWS_DEFAULT_REGION)."""
    import boto3

    for c in candidates:
        if c:
            return c
    region = boto3.session.Session().region_name
    if not region:
        raise DeployError("no AWS region: set deploy.region, --region or AWS_DEFAULT_REGION")
    return region


def make_clients(region: str, endpoint_url: str | None = None) -> Clients:
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(region_name=region)
    config = Config(connect_timeout=5, read_timeout=60, retries={"total_max_attempts": 2, "mode": "standard"})

    def client(name: str) -> Any:
        return session.client(name, endpoint_url=endpoint_url, config=config)  # type: ignore[call-overload]

    return Clients(
        region, client("s3"), client("sagemaker"), client("application-autoscaling"), client("sagemaker-runtime")
    )
