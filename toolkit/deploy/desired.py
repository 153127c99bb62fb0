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
from collections.abc import Callable
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


Variant = tuple[str, str, float]  # (variant name, SageMaker model name, initial weight)


@dataclass
class _Models:
    """Adds the tarballs and CreateModel requests of one endpoint to ``d``; the per-mode builders below share it."""

    ep: EndpointSpec
    deploy: DeploySpec
    tarball: Callable[[str], Tarball]
    image: str
    container: ContainerSpec
    d: Desired

    def single_tar(self, model: str) -> str:
        """Upload ``model``'s own tarball (once) under a content-addressed key; its S3 URL."""
        tb = self.tarball(model)
        key = f"{self.d.prefix}/{sm_name(model)}-{tb.sha256[:12]}.tar.gz"
        if all(u.key != key for u in self.d.uploads):
            self.d.uploads.append(Upload(key, tb))
        return f"s3://{self.deploy.bucket}/{key}"

    def add_model(self, label: str, body: dict[str, Any]) -> str:
        """Add a CreateModel request for ``body`` (role added, name content-addressed); the model's name."""
        body = {"ExecutionRoleArn": self.deploy.role, **body}
        name = named(self.ep.name, label, body)
        self.d.models.append({"ModelName": name, **body, "Tags": self.d.tags})
        return name

    def one(self, model: str) -> dict[str, Any]:
        """A container serving ``model`` from its own tarball."""
        return {
            "Image": self.image,
            "ModelDataUrl": self.single_tar(model),
            "Environment": container_env(self.container, model),
        }


def _multi_model(b: _Models) -> list[Variant]:
    ep, d = b.ep, b.d
    if not ep.models:
        store = ep.store or ""
        if not store.startswith("s3://"):
            raise DeployError(f"multi-model endpoint {ep.name!r}: list models: or give an s3:// store")
        url = store.rstrip("/") + "/"
        d.notes.append(f"ModelDataUrl is the existing store {url}: nothing uploaded")
    else:
        url = f"s3://{d.bucket}/{d.prefix}/"
        for m in ep.models:
            d.uploads.append(Upload(f"{d.prefix}/{m}.tar.gz", b.tarball(m)))
    env = container_env(b.container, None)
    body: dict[str, Any] = {
        "PrimaryContainer": {"Image": b.image, "ModelDataUrl": url, "Mode": "MultiModel", "Environment": env}
    }
    if ep.model_cache_setting == "Disabled":  # only when set: an unchanged manifest keeps its content hash
        body["PrimaryContainer"]["MultiModelConfig"] = {"ModelCacheSetting": "Disabled"}
    return [(DEFAULT_VARIANT, b.add_model("mme", body), 1.0)]


def _multi_container(b: _Models) -> list[Variant]:
    ep = b.ep
    if len(ep.models) > MAX_CONTAINERS:
        raise DeployError(f"endpoint {ep.name!r}: {len(ep.models)} containers, SageMaker allows {MAX_CONTAINERS}")
    hosts = [sm_name(m) for m in ep.models]
    if len(set(hosts)) != len(hosts):
        raise DeployError(f"endpoint {ep.name!r}: two models map to one container hostname ({hosts})")
    containers = [{"ContainerHostname": h, **b.one(m)} for h, m in zip(hosts, ep.models, strict=True)]
    renamed = [f"{m} -> {h}" for h, m in zip(hosts, ep.models, strict=True) if h != m]
    if renamed:
        b.d.notes.append("TargetContainerHostname on SageMaker: " + ", ".join(renamed))
    body: dict[str, Any] = {"Containers": containers, "InferenceExecutionConfig": {"Mode": "Direct"}}
    return [(DEFAULT_VARIANT, b.add_model("mce", body), 1.0)]


def _single(b: _Models) -> list[Variant]:
    """``single`` and ``serial``: one model per variant, or one model (a serial endpoint's pipeline ensemble)."""
    ep = b.ep
    variants: list[Variant] = []
    for v in ep.variants:
        if not SM_NAME_RE.match(v.name):
            raise DeployError(f"endpoint {ep.name!r}: variant name {v.name!r} is not a SageMaker name")
        variants.append((v.name, b.add_model(v.name, {"PrimaryContainer": b.one(v.model)}), v.weight))
    if ep.variants:
        return variants
    model = ep.model or (f"{ep.name}_serial" if ep.mode == "serial" else "")
    return [(DEFAULT_VARIANT, b.add_model(sm_name(model), {"PrimaryContainer": b.one(model)}), 1.0)]


def _production_variants(variants: list[Variant], instance_type: str, instance_count: int) -> list[dict[str, Any]]:
    """The CreateEndpointConfig ``ProductionVariants``."""
    return [
        {
            "VariantName": v,
            "ModelName": m,
            "InitialInstanceCount": instance_count,
            "InstanceType": instance_type,
            "InitialVariantWeight": float(w),
        }
        for v, m, w in variants
    ]


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
    builders = {"multi-model": _multi_model, "multi-container": _multi_container}
    variants = builders.get(ep.mode, _single)(_Models(ep, deploy, tarball, image, container, d))
    if autoscaling is not None and not autoscaling.min_instances <= instance_count <= autoscaling.max_instances:
        raise DeployError(
            f"endpoint {ep.name!r}: instance_count {instance_count} outside autoscaling "
            f"[{autoscaling.min_instances}, {autoscaling.max_instances}]"
        )
    pv = _production_variants(variants, instance_type, instance_count)
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
