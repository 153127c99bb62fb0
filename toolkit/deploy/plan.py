"""The AWS calls a deployment makes, computed from the desired state and what exists: ``deploy plan`` prints them,
``deploy sagemaker`` runs exactly them.

Reading what exists (``read_state``) uses only Describe/List/Head calls; ``plan --offline`` skips even those and
plans against an empty account. ``plan_calls`` is a pure function of (desired, state), so every branch (first
deploy, unchanged, changed, scaling added or removed, clean-up of old configs) is tested without AWS.

Order matters and is the order of the list: uploads, models, endpoint config, scaling targets of variants that go
away (SageMaker refuses to remove a variant that still has one), create or update the endpoint, wait until it is
InService, scaling of the new variants, and only then the old endpoint configs and the models no config uses.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from toolkit.deploy.desired import SCALABLE_DIMENSION, Desired, scaling_calls
from toolkit.deploy.errors import DeployError, aws_errors

SHA_KEY = "tritonctl-sha256"
WAIT = "wait_until_in_service"  # not an AWS operation: DescribeEndpoint polled until InService (or Failed)
READ_PREFIXES = ("describe_", "list_", "head_", "get_")


@dataclass(frozen=True)
class Call:
    """One AWS call: service (boto3 client name), operation (boto3 method), parameters, and why it is made."""

    service: str
    operation: str
    params: dict[str, Any]
    why: str
    body: bytes | None = field(default=None, repr=False, compare=False)  # put_object's payload (not printed)

    def __str__(self) -> str:
        shown = {k: v for k, v in self.params.items() if k != "Tags"}
        args = ", ".join(f"{k}={v!r}" for k, v in shown.items())
        size = f" <{len(self.body)} bytes>" if self.body is not None else ""
        return f"{self.service}.{self.operation}({args}){size}  # {self.why}"


@dataclass
class State:
    """What exists, as far as the plan needs it. ``State()`` is an empty account (``--offline``)."""

    endpoint: dict[str, Any] | None = None  # DescribeEndpoint
    models: set[str] = field(default_factory=set)  # desired model names that exist
    config_exists: bool = False
    objects: dict[str, str] = field(default_factory=dict)  # key -> tritonctl sha256 of the object there
    configs: dict[str, list[str]] = field(default_factory=dict)  # this endpoint's configs -> their model names
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)  # variant -> scalable target
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)  # variant -> scaling policy


def config_pattern(endpoint: str) -> re.Pattern[str]:
    """The endpoint configs this tool made for ``endpoint`` (``<endpoint>-<8 hex>``), and nobody else's."""
    return re.compile(rf"^{re.escape(endpoint[:54])}-[0-9a-f]{{8}}$")


def _not_found(exc: DeployError) -> bool:
    return "could not find" in str(exc).lower() or "not found" in str(exc).lower()


def _pages(client: Any, op: str, key: str, **kw: Any) -> Iterator[dict[str, Any]]:
    for page in client.get_paginator(op).paginate(**kw):
        yield from page.get(key, [])


def _describe_or_none(what: str, describe: Callable[..., dict[str, Any]], **kw: Any) -> dict[str, Any] | None:
    """``describe(**kw)``, or None when AWS says the thing does not exist."""
    try:
        with aws_errors(what):
            return describe(**kw)
    except DeployError as exc:
        if not _not_found(exc):
            raise
    return None


def _read_configs(sm: Any, endpoint: str) -> dict[str, list[str]]:
    """This endpoint's configs (``config_pattern``) -> the models their variants use."""
    pattern = config_pattern(endpoint)
    configs: dict[str, list[str]] = {}
    with aws_errors(f"sagemaker ListEndpointConfigs {endpoint}"):
        listed = _pages(sm, "list_endpoint_configs", "EndpointConfigs", NameContains=endpoint[:54])
        names = [c["EndpointConfigName"] for c in listed]
        for name in names:
            if pattern.match(name):
                desc = sm.describe_endpoint_config(EndpointConfigName=name)
                configs[name] = [v["ModelName"] for v in desc.get("ProductionVariants", [])]
    return configs


def _object_sha(s3: Any, bucket: str, key: str) -> str | None:
    """The tritonctl sha256 of the object at ``key`` ("" if it has none), None if there is no object."""
    from botocore.exceptions import ClientError

    with aws_errors(f"s3 HeadObject s3://{bucket}/{key}"):
        try:
            head = s3.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
    return head.get("Metadata", {}).get(SHA_KEY, "")


def _read_scaling(aas: Any, endpoint: str) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """This endpoint's scalable targets and scaling policies, by variant."""
    targets: dict[str, dict[str, Any]] = {}
    policies: dict[str, dict[str, Any]] = {}
    prefix = f"endpoint/{endpoint}/variant/"
    with aws_errors(f"application-autoscaling DescribeScalableTargets {endpoint}"):
        for t in _pages(aas, "describe_scalable_targets", "ScalableTargets", ServiceNamespace="sagemaker"):
            if t["ResourceId"].startswith(prefix) and t["ScalableDimension"] == SCALABLE_DIMENSION:
                variant = t["ResourceId"][len(prefix) :]
                targets[variant] = t
                described = aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=t["ResourceId"])
                for p in described.get("ScalingPolicies", []):
                    policies[variant] = p
    return targets, policies


def read_state(clients: Any, d: Desired) -> State:
    """Describe what exists for ``d`` (reads only)."""
    st = State()
    sm, s3, aas = clients.sagemaker, clients.s3, clients.autoscaling
    st.endpoint = _describe_or_none(
        f"sagemaker DescribeEndpoint {d.endpoint}", sm.describe_endpoint, EndpointName=d.endpoint
    )
    for m in d.models:
        name = m["ModelName"]
        if _describe_or_none(f"sagemaker DescribeModel {name}", sm.describe_model, ModelName=name) is not None:
            st.models.add(name)
    st.configs = _read_configs(sm, d.endpoint)
    st.config_exists = d.config_name in st.configs
    for u in d.uploads:
        sha = _object_sha(s3, d.bucket, u.key)
        if sha is not None:
            st.objects[u.key] = sha
    st.targets, st.policies = _read_scaling(aas, d.endpoint)
    return st


def _same_policy(have: dict[str, Any] | None, want: dict[str, Any]) -> bool:
    if have is None:
        return False
    h, w = have.get("TargetTrackingScalingPolicyConfiguration", {}), want["TargetTrackingScalingPolicyConfiguration"]
    return have.get("PolicyName") == want["PolicyName"] and all(h.get(k) == v for k, v in w.items())


def _upload_calls(d: Desired, st: State) -> list[Call]:
    """put_object for each tarball that is missing or differs (by its tritonctl sha256)."""
    calls: list[Call] = []
    for u in d.uploads:
        sha = u.tarball.sha256
        if st.objects.get(u.key) == sha:
            continue
        why = "upload (changed)" if u.key in st.objects else "upload"
        params: dict[str, Any] = {"Bucket": d.bucket, "Key": u.key, "Metadata": {SHA_KEY: sha}}
        calls.append(Call("s3", "put_object", params, f"{why}: {', '.join(u.tarball.models)}", u.tarball.data))
    return calls


def _create_calls(d: Desired, st: State) -> list[Call]:
    """create_model for the models that do not exist yet, and create_endpoint_config if the config does not."""
    calls = [Call("sagemaker", "create_model", m, "new model") for m in d.models if m["ModelName"] not in st.models]
    if not st.config_exists:
        calls.append(Call("sagemaker", "create_endpoint_config", d.config, "new endpoint config"))
    return calls


def _deregister_calls(d: Desired, st: State, updating: bool) -> list[Call]:
    """Scaling targets off: all of them during an update, else those of variants that no longer want scaling."""
    calls: list[Call] = []
    for variant, t in sorted(st.targets.items()):
        if updating or variant not in d.scaling:
            params = {k: t[k] for k in ("ServiceNamespace", "ResourceId", "ScalableDimension")}
            why = "off during the update" if updating and variant in d.scaling else "scaling not wanted"
            calls.append(Call("application-autoscaling", "deregister_scalable_target", params, why))
    return calls


def _endpoint_calls(d: Desired, ep: dict[str, Any] | None) -> list[Call]:
    """Create or update the endpoint (refused while it is busy, or Failed), then wait until it is InService."""
    current = ep.get("EndpointConfigName") if ep else None
    status = ep.get("EndpointStatus") if ep else None
    calls: list[Call] = []
    if ep is None:
        params = {"EndpointName": d.endpoint, "EndpointConfigName": d.config_name, "Tags": d.tags}
        calls.append(Call("sagemaker", "create_endpoint", params, "new endpoint"))
    elif status in ("Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting"):
        raise DeployError(f"endpoint {d.endpoint} is {status}; wait for it (tritonctl deploy status) and retry")
    elif status == "Failed" and current != d.config_name:
        reason = ep.get("FailureReason", "no reason given")
        raise DeployError(f"endpoint {d.endpoint} is Failed ({reason}); delete it first (tritonctl deploy delete)")
    elif current != d.config_name:
        params = {"EndpointName": d.endpoint, "EndpointConfigName": d.config_name}
        calls.append(Call("sagemaker", "update_endpoint", params, f"config {current} -> {d.config_name}"))
    if ep is None or current != d.config_name or status != "InService":
        calls.append(Call("sagemaker", WAIT, {"EndpointName": d.endpoint}, "DescribeEndpoint until InService"))
    return calls


def _register_calls(d: Desired, targets: dict[str, dict[str, Any]], policies: dict[str, dict[str, Any]]) -> list[Call]:
    """Scalable targets and target-tracking policies of the wanted variants, where they differ from what exists."""
    calls: list[Call] = []
    for variant, a in sorted(d.scaling.items()):
        target, policy = scaling_calls(d.endpoint, variant, a)
        have = targets.get(variant)
        if have is None or (have["MinCapacity"], have["MaxCapacity"]) != (target["MinCapacity"], target["MaxCapacity"]):
            calls.append(Call("application-autoscaling", "register_scalable_target", target, f"scale {variant}"))
        if not _same_policy(policies.get(variant), policy):
            calls.append(Call("application-autoscaling", "put_scaling_policy", policy, f"target tracking {variant}"))
    return calls


def _cleanup_calls(d: Desired, st: State) -> list[Call]:
    """Delete this endpoint's other configs, then the models that only they used."""
    calls: list[Call] = []
    keep = {m["ModelName"] for m in d.models}
    old_models: set[str] = set()
    for name, models in sorted(st.configs.items()):
        if name != d.config_name:
            calls.append(Call("sagemaker", "delete_endpoint_config", {"EndpointConfigName": name}, "old config"))
            old_models |= set(models) - keep
    calls += [Call("sagemaker", "delete_model", {"ModelName": m}, "no config uses it") for m in sorted(old_models)]
    return calls


def plan_calls(d: Desired, st: State) -> list[Call]:
    """The calls that take ``st`` to ``d``, in order (empty when everything is as the manifest says)."""
    ep = st.endpoint
    # SageMaker fails an update that changes the instance type of a variant under auto scaling: an update takes
    # every scaling target off first and puts the wanted ones back once the endpoint is InService.
    updating = ep is not None and ep.get("EndpointConfigName") != d.config_name
    targets, policies = ({}, {}) if updating else (st.targets, st.policies)
    return [
        *_upload_calls(d, st),
        *_create_calls(d, st),
        *_deregister_calls(d, st, updating),
        *_endpoint_calls(d, ep),
        *_register_calls(d, targets, policies),
        *_cleanup_calls(d, st),
    ]


def is_read(operation: str) -> bool:
    return operation.startswith(READ_PREFIXES)
