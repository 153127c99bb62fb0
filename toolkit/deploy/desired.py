"""What one manifest endpoint should be on SageMaker: tarballs, models, an endpoint config, scaling. No AWS here.

Names are content-addressed: a SageMaker model is ``<endpoint>-<label>-<hash>`` and an endpoint config
``<endpoint>-<hash>``, the hash taken over everything the object says. An unchanged manifest therefore maps to the
objects that already exist (nothing to do), and a changed one to new objects beside the old ones, so an endpoint
can move to its new config while the old one keeps serving, and the old objects are deleted only afterwards.

Endpoint modes, as SageMaker has them:

* ``multi-model``: one model, ``Mode: MultiModel``, ``ModelDataUrl`` = the S3 prefix holding ``<model>.tar.gz``.
* ``single``: one model (``SAGEMAKER_TRITON_DEFAULT_MODEL_NAME``), or one per variant, weighted.
* ``multi-container``: one model with up to 15 ``Containers`` (hostname = the manifest model, ``_`` and ``.`` become
  ``-``: SageMaker's hostname rule) and ``InferenceExecutionConfig: {Mode: Direct}``.
* ``serial``: the Triton ensemble in one container (``model:`` names it, or ``models:`` steps become a generated
  ``<endpoint>_serial`` pipeline ensemble). SageMaker's inference pipeline of containers is not offered: it passes a
  container's response body as the next one's request, and a Triton (KServe) response is not a request.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from toolkit.deploy.artifacts import Tarball
from toolkit.deploy.errors import DeployError
from toolkit.spec.deploy import AutoscalingSpec, ContainerSpec, DeploySpec
from toolkit.spec.models import EndpointSpec

SM_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
MAX_CONTAINERS = 15
TAG_ENDPOINT = "tritonctl:endpoint"
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
DEFAULT_VARIANT = "AllTraffic"


def sm_name(text: str) -> str:
    """A manifest name in SageMaker's name alphabet (letters, digits, hyphens)."""
    return re.sub(r"-+", "-", re.sub(r"[^a-zA-Z0-9-]", "-", text)).strip("-")


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:8]


def named(endpoint: str, label: str, body: Any) -> str:
    """``<endpoint>-<label>-<hash>`` within SageMaker's 63 characters (the label is shortened first)."""
    h = _hash(body)
    room = 63 - len(endpoint) - len(h) - 2
    label = sm_name(label)[: max(room, 0)].strip("-")
    return f"{endpoint}-{label}-{h}" if label else f"{endpoint[: 63 - len(h) - 1]}-{h}"


@dataclass(frozen=True)
class Upload:
    key: str
    tarball: Tarball


@dataclass
class Desired:
    """Everything ``plan`` compares with what exists."""

    endpoint: str
    bucket: str
    prefix: str  # <deploy.prefix>/<endpoint>
    uploads: list[Upload] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)  # CreateModel requests
    config: dict[str, Any] = field(default_factory=dict)  # CreateEndpointConfig request
    scaling: dict[str, AutoscalingSpec] = field(default_factory=dict)  # variant -> autoscaling
    tags: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def config_name(self) -> str:
        return str(self.config["EndpointConfigName"])


def container_env(c: ContainerSpec, default_model: str | None) -> dict[str, str]:
    env = {}
    if default_model:
        env["SAGEMAKER_TRITON_DEFAULT_MODEL_NAME"] = default_model
    pairs = {
        "SAGEMAKER_TRITON_THREAD_COUNT": c.thread_count,
        "SAGEMAKER_TRITON_SHM_DEFAULT_BYTE_SIZE": c.shm_default_byte_size,
        "SAGEMAKER_TRITON_SHM_GROWTH_BYTE_SIZE": c.shm_growth_byte_size,
        "SAGEMAKER_TRITON_MODEL_LOAD_GPU_LIMIT": c.model_load_gpu_limit,
        "SAGEMAKER_TRITON_LOG_VERBOSE": None if c.log_verbose is None else str(c.log_verbose).lower(),
    }
    env.update({k: str(v) for k, v in pairs.items() if v is not None})
    env.update(c.env)
    return env


def desired_state(
    ep: EndpointSpec,
    deploy: DeploySpec,
    tarball: Any,  # Callable[[str], Tarball]: the deployable tarball of a model name
    image: str,
    instance_type: str,
    instance_count: int,
    container: ContainerSpec,
    autoscaling: AutoscalingSpec | None,
) -> Desired:
    if not SM_NAME_RE.match(ep.name):
        raise DeployError(f"endpoint name {ep.name!r} is not a SageMaker name (letters, digits, hyphens; <= 63)")
    prefix = f"{deploy.prefix}/{ep.name}" if deploy.prefix else ep.name
    tags = [{"Key": k, "Value": v} for k, v in sorted(deploy.tags.items())] + [{"Key": TAG_ENDPOINT, "Value": ep.name}]
    d = Desired(ep.name, deploy.bucket, prefix, tags=tags)
    s3 = f"s3://{deploy.bucket}/{prefix}"

    def single_tar(model: str) -> str:
        tb = tarball(model)
        key = f"{prefix}/{sm_name(model)}-{tb.sha256[:12]}.tar.gz"
        if all(u.key != key for u in d.uploads):
            d.uploads.append(Upload(key, tb))
        return f"s3://{deploy.bucket}/{key}"

    def add_model(label: str, body: dict[str, Any]) -> str:
        body = {"ExecutionRoleArn": deploy.role, **body}
        name = named(ep.name, label, body)
        d.models.append({"ModelName": name, **body, "Tags": tags})
        return name

    def one(model: str) -> dict[str, Any]:
        return {"Image": image, "ModelDataUrl": single_tar(model), "Environment": container_env(container, model)}

    variants: list[tuple[str, str, float]] = []  # (variant, model name, weight)
    if ep.mode == "multi-model":
        if not ep.models:
            if not (ep.store or "").startswith("s3://"):
                raise DeployError(f"multi-model endpoint {ep.name!r}: list models: or give an s3:// store")
            url = ep.store.rstrip("/") + "/"  # type: ignore[union-attr]
            d.notes.append(f"ModelDataUrl is the existing store {url}: nothing uploaded")
        else:
            url = s3 + "/"
            for m in ep.models:
                d.uploads.append(Upload(f"{prefix}/{m}.tar.gz", tarball(m)))
        env = container_env(container, None)
        body = {"PrimaryContainer": {"Image": image, "ModelDataUrl": url, "Mode": "MultiModel", "Environment": env}}
        variants.append((DEFAULT_VARIANT, add_model("mme", body), 1.0))
    elif ep.mode == "multi-container":
        if len(ep.models) > MAX_CONTAINERS:
            raise DeployError(f"endpoint {ep.name!r}: {len(ep.models)} containers, SageMaker allows {MAX_CONTAINERS}")
        hosts = [sm_name(m) for m in ep.models]
        if len(set(hosts)) != len(hosts):
            raise DeployError(f"endpoint {ep.name!r}: two models map to one container hostname ({hosts})")
        containers = [{"ContainerHostname": h, **one(m)} for h, m in zip(hosts, ep.models, strict=True)]
        renamed = [f"{m} -> {h}" for h, m in zip(hosts, ep.models, strict=True) if h != m]
        if renamed:
            d.notes.append("TargetContainerHostname on SageMaker: " + ", ".join(renamed))
        body = {"Containers": containers, "InferenceExecutionConfig": {"Mode": "Direct"}}
        variants.append((DEFAULT_VARIANT, add_model("mce", body), 1.0))
    elif ep.variants:
        for v in ep.variants:
            if not SM_NAME_RE.match(v.name):
                raise DeployError(f"endpoint {ep.name!r}: variant name {v.name!r} is not a SageMaker name")
            variants.append((v.name, add_model(v.name, {"PrimaryContainer": one(v.model)}), v.weight))
    else:
        model = ep.model or (f"{ep.name}_serial" if ep.mode == "serial" else "")
        variants.append((DEFAULT_VARIANT, add_model(sm_name(model), {"PrimaryContainer": one(model)}), 1.0))
    if autoscaling is not None and not autoscaling.min_instances <= instance_count <= autoscaling.max_instances:
        raise DeployError(
            f"endpoint {ep.name!r}: instance_count {instance_count} outside autoscaling "
            f"[{autoscaling.min_instances}, {autoscaling.max_instances}]"
        )
    pv = [
        {
            "VariantName": v,
            "ModelName": m,
            "InitialInstanceCount": instance_count,
            "InstanceType": instance_type,
            "InitialVariantWeight": float(w),
        }
        for v, m, w in variants
    ]
    d.config = {"EndpointConfigName": named(ep.name, "", pv), "ProductionVariants": pv, "Tags": tags}
    if autoscaling is not None:
        d.scaling = {v: autoscaling for v, _, _ in variants}
    return d


def scaling_calls(endpoint: str, variant: str, a: AutoscalingSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """RegisterScalableTarget and PutScalingPolicy requests for one variant."""
    rid = f"endpoint/{endpoint}/variant/{variant}"
    target = {
        "ServiceNamespace": "sagemaker",
        "ResourceId": rid,
        "ScalableDimension": SCALABLE_DIMENSION,
        "MinCapacity": a.min_instances,
        "MaxCapacity": a.max_instances,
    }
    policy = {
        "PolicyName": f"{endpoint}-{variant}-invocations",
        "ServiceNamespace": "sagemaker",
        "ResourceId": rid,
        "ScalableDimension": SCALABLE_DIMENSION,
        "PolicyType": "TargetTrackingScaling",
        "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": float(a.target_invocations_per_instance),
            "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
            "ScaleInCooldown": a.scale_in_cooldown_s,
            "ScaleOutCooldown": a.scale_out_cooldown_s,
        },
    }
    return target, policy
