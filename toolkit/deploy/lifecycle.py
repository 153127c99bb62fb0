"""``deploy status`` and ``deploy delete``: what an endpoint is now, and removing everything deploy made for it.

Delete finds its objects from AWS, not from the manifest (the manifest may have changed since): the endpoint, every
endpoint config named ``<endpoint>-<8 hex>`` and the models those configs use, the scaling targets on its variants.
S3 is kept unless ``purge_s3`` (the tarballs are cheap, and may be what another endpoint's config still points at).
Delete is also a plan: the list of calls is computed first, printed, then run.
"""

from __future__ import annotations

from typing import Any

from toolkit.deploy.desired import SCALABLE_DIMENSION
from toolkit.deploy.errors import DeployError, aws_errors
from toolkit.deploy.plan import Call, _not_found, _pages, config_pattern


def _describe_endpoint(sm: Any, endpoint: str) -> dict[str, Any] | None:
    try:
        with aws_errors(f"sagemaker DescribeEndpoint {endpoint}"):
            return dict(sm.describe_endpoint(EndpointName=endpoint))
    except DeployError as exc:
        if _not_found(exc):
            return None
        raise


def _configs(sm: Any, endpoint: str) -> dict[str, list[str]]:
    pattern = config_pattern(endpoint)
    out: dict[str, list[str]] = {}
    with aws_errors(f"sagemaker ListEndpointConfigs {endpoint}"):
        for c in _pages(sm, "list_endpoint_configs", "EndpointConfigs", NameContains=endpoint[:54]):
            if pattern.match(c["EndpointConfigName"]):
                desc = sm.describe_endpoint_config(EndpointConfigName=c["EndpointConfigName"])
                out[c["EndpointConfigName"]] = [v["ModelName"] for v in desc.get("ProductionVariants", [])]
    return out


def _targets(aas: Any, endpoint: str) -> list[dict[str, Any]]:
    prefix = f"endpoint/{endpoint}/variant/"
    with aws_errors(f"application-autoscaling DescribeScalableTargets {endpoint}"):
        return [
            t
            for t in _pages(aas, "describe_scalable_targets", "ScalableTargets", ServiceNamespace="sagemaker")
            if t["ResourceId"].startswith(prefix) and t["ScalableDimension"] == SCALABLE_DIMENSION
        ]


def status_doc(clients: Any, endpoint: str) -> dict[str, Any]:
    """What the endpoint is now, as data (``deploy status --json``); raises when it does not exist."""
    ep = _describe_endpoint(clients.sagemaker, endpoint)
    if ep is None:
        raise DeployError(f"endpoint {endpoint} does not exist in {clients.region}")
    variants = [
        {
            "name": v.get("VariantName"),
            "instances": v.get("CurrentInstanceCount"),
            "desired_instances": v.get("DesiredInstanceCount"),
            "weight": v.get("CurrentWeight"),
        }
        for v in ep.get("ProductionVariants", [])
    ]
    scaling = [
        {"resource": t["ResourceId"], "min": t["MinCapacity"], "max": t["MaxCapacity"]}
        for t in _targets(clients.autoscaling, endpoint)
    ]
    return {
        "endpoint": endpoint,
        "region": clients.region,
        "status": ep.get("EndpointStatus"),
        "config": ep.get("EndpointConfigName"),
        "failure_reason": " ".join(str(ep["FailureReason"]).split()) if ep.get("FailureReason") else None,
        "variants": variants,
        "scaling": scaling,
        "old_configs": sorted(set(_configs(clients.sagemaker, endpoint)) - {ep.get("EndpointConfigName")}),
    }


def status_lines(doc: dict[str, Any]) -> list[str]:
    """``status_doc`` for a terminal: the endpoint, its config, variants, scaling, configs left to clean up."""
    lines = [f"endpoint {doc['endpoint']}: {doc['status']}  config {doc['config']}"]
    if doc["failure_reason"]:
        lines.append(f"  failure: {doc['failure_reason']}")
    for v in doc["variants"]:
        lines.append(
            f"  variant {v['name']}: instances {v['instances']}/{v['desired_instances']}  weight {v['weight']}"
        )
    for t in doc["scaling"]:
        lines.append(f"  scaling {t['resource']}: {t['min']}..{t['max']} instances")
    if doc["old_configs"]:
        lines.append(f"  old configs not yet cleaned up: {', '.join(doc['old_configs'])}")
    return lines


def status(clients: Any, endpoint: str) -> list[str]:
    """Lines describing the endpoint, its config, variants, scaling; raises when it does not exist."""
    return status_lines(status_doc(clients, endpoint))


def delete_calls(clients: Any, endpoint: str, bucket: str | None = None, prefix: str | None = None) -> list[Call]:
    """Every call that removes what deploy made for ``endpoint`` (S3 objects only with ``bucket`` and ``prefix``)."""
    calls = [
        Call(
            "application-autoscaling",
            "deregister_scalable_target",
            {k: t[k] for k in ("ServiceNamespace", "ResourceId", "ScalableDimension")},
            "scaling",
        )
        for t in _targets(clients.autoscaling, endpoint)
    ]
    if _describe_endpoint(clients.sagemaker, endpoint) is not None:
        calls.append(Call("sagemaker", "delete_endpoint", {"EndpointName": endpoint}, "endpoint"))
    models: set[str] = set()
    for name, used in sorted(_configs(clients.sagemaker, endpoint).items()):
        calls.append(Call("sagemaker", "delete_endpoint_config", {"EndpointConfigName": name}, "endpoint config"))
        models |= set(used)
    for m in sorted(models):
        try:
            with aws_errors(f"sagemaker DescribeModel {m}"):
                clients.sagemaker.describe_model(ModelName=m)
        except DeployError as exc:
            if _not_found(exc):
                continue
            raise
        calls.append(Call("sagemaker", "delete_model", {"ModelName": m}, "model"))
    if bucket and prefix is not None:
        with aws_errors(f"s3 ListObjectsV2 s3://{bucket}/{prefix}/"):
            for obj in _pages(clients.s3, "list_objects_v2", "Contents", Bucket=bucket, Prefix=prefix + "/"):
                calls.append(Call("s3", "delete_object", {"Bucket": bucket, "Key": obj["Key"]}, "tarball (purge)"))
    return calls
