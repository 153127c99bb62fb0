"""From a manifest and an endpoint name to the desired SageMaker state: the one place that reads ``deploy:``.

Everything that can be checked without AWS is checked here, before any call: the endpoint exists in the manifest,
the region has a Triton image (or ``--image`` is given), the instance type is a hosting type Triton runs on, every
model the endpoint needs builds (ONNX compile checked, python packages present or shipped), autoscaling bounds.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from toolkit.deploy.artifacts import BuiltRepository, Tarball, build_repository
from toolkit.deploy.desired import Desired, desired_state
from toolkit.deploy.errors import DeployError
from toolkit.deploy.images import check_instance_type, check_region, image_uri, is_gpu
from toolkit.spec.deploy import DeploySpec
from toolkit.spec.models import EndpointSpec, EnsembleSpec, Manifest


@dataclass
class Prepared:
    desired: Desired
    region: str
    image: str
    instance_type: str
    built: BuiltRepository


def deploy_spec(manifest: Manifest) -> DeploySpec:
    if manifest.deploy is None:
        raise DeployError("the manifest has no deploy: section (role, bucket, region, instance_type...)")
    return manifest.deploy


def endpoint_spec(manifest: Manifest, name: str) -> EndpointSpec:
    for ep in manifest.endpoints:
        if ep.name == name:
            return ep
    known = ", ".join(e.name for e in manifest.endpoints) or "none"
    raise DeployError(f"endpoint {name!r} is not in the manifest (endpoints: {known})")


def _needed(ep: EndpointSpec) -> list[str]:
    if ep.mode == "serial" and not ep.model and not ep.variants:
        return [f"{ep.name}_serial"]
    return sorted({*ep.models, *([ep.model] if ep.model else []), *(v.model for v in ep.variants)})


def _with_serial(manifest: Manifest, ep: EndpointSpec) -> Manifest:
    """A serial endpoint given as steps becomes a pipeline ensemble, so it runs in one Triton (one container)."""
    if ep.mode != "serial" or ep.model or ep.variants:
        return manifest
    pipeline = EnsembleSpec(name=f"{ep.name}_serial", pattern="pipeline", models=list(ep.models))
    return manifest.model_copy(update={"ensembles": [*manifest.ensembles, pipeline]})


def _resolve(base: Path, p: Path | None) -> Path | None:
    return None if p is None else p if p.is_absolute() else base / p


def prepare(
    manifest: Manifest,
    endpoint: str,
    *,
    base_dir: Path,
    image: str | None = None,
    region: str | None = None,
    work: Path | None = None,
) -> Prepared:
    """Build the endpoint's tarballs and its desired state (no AWS call). ``base_dir``: the manifest's folder."""
    spec = deploy_spec(manifest)
    ep = endpoint_spec(manifest, endpoint)
    over = spec.endpoints.get(endpoint)
    if set(spec.endpoints) - {e.name for e in manifest.endpoints}:
        unknown = sorted(set(spec.endpoints) - {e.name for e in manifest.endpoints})
        raise DeployError(f"deploy.endpoints names {unknown[0]!r}, which is not an endpoint of the manifest")
    region = region or spec.region
    if region is None:
        from toolkit.deploy.aws import resolve_region

        region = resolve_region()
    check_region(region, image_given=bool(image or spec.image))
    image = image or spec.image or image_uri(region, spec.triton_version)
    instance_type = (over.instance_type if over else None) or spec.instance_type
    check_instance_type(instance_type)
    count = (over.instance_count if over else None) or spec.instance_count
    container = (over.container if over else None) or spec.container
    # An override's `autoscaling: null` turns the default off for that endpoint (absent = inherit).
    autoscaling = over.autoscaling if over and "autoscaling" in over.model_fields_set else spec.autoscaling
    samples = {k: p for k, v in spec.samples.items() if (p := _resolve(base_dir, v)) is not None}
    work = work or Path(tempfile.mkdtemp(prefix="tritonctl-deploy-"))
    built = build_repository(
        _with_serial(manifest, ep),
        work,
        gpu=is_gpu(instance_type),
        python_env=_resolve(base_dir, spec.python_env),
        samples=samples,
        needed=set(_needed(ep)),
    )
    cache: dict[str, Tarball] = {}

    def tarball(name: str) -> Tarball:
        if name not in cache:
            cache[name] = built.tarball(name)
        return cache[name]

    d = desired_state(ep, spec, tarball, image, instance_type, count, container, autoscaling)
    used = {m for t in cache.values() for m in t.models}
    d.notes += [f"{m}: {built.notes[m]}" for m in sorted(used) if m in built.notes]
    return Prepared(d, region, image, instance_type, built)
