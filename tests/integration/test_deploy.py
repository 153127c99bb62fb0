"""``tritonctl deploy`` against moto's server (S3, SageMaker, application-autoscaling over real HTTP): every endpoint
mode creates objects of the right shape, plan only reads, unchanged tarballs are not uploaded again, a changed
manifest makes a new config, delete leaves nothing.

moto's limits: moto has no UpdateEndpoint (HTTP 500 "not implemented"); the tests add it to moto's server
(conftest's ``_moto_update_endpoint``: the endpoint moves to the new config), so a re-deploy runs end to end.
moto's CreateModel drops ``InferenceExecutionConfig``, so the Direct mode is checked on the request we send. moto
reports every endpoint InService at once and accepts any role.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from examples.deploy_demo import manifest_dict, write_manifest
from toolkit.deploy import api
from toolkit.deploy.aws import make_clients
from toolkit.deploy.errors import DeployError
from toolkit.deploy.plan import is_read


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    name = f"tt-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture
def manifest(tmp_path: Path, bucket: str) -> Path:
    return write_manifest(tmp_path / "tritonctl.yaml", bucket)


def _sm(url: str) -> Any:
    return boto3.client("sagemaker", endpoint_url=url, region_name="us-east-1")


def _deploy(manifest: Path, endpoint: str, url: str) -> api.Planned:
    lines: list[str] = []
    return api.deploy(manifest, endpoint, lines.append, endpoint_url=url, poll_s=0.01)


def _cleanup(endpoint: str, url: str) -> None:
    api.delete(endpoint, lambda _: None, endpoint_url=url, region="us-east-1")


def test_multi_model_endpoint(manifest: Path, bucket: str, s3_endpoint: str) -> None:
    _deploy(manifest, "mme", s3_endpoint)
    try:
        sm = _sm(s3_endpoint)
        ep = sm.describe_endpoint(EndpointName="mme")
        assert ep["EndpointStatus"] == "InService"
        cfg = sm.describe_endpoint_config(EndpointConfigName=ep["EndpointConfigName"])
        (variant,) = cfg["ProductionVariants"]
        assert variant["VariantName"] == "AllTraffic" and variant["InstanceType"] == "ml.m5.xlarge"
        model = sm.describe_model(ModelName=variant["ModelName"])
        pc = model["PrimaryContainer"]
        assert pc["Mode"] == "MultiModel"
        assert pc["ModelDataUrl"] == f"s3://{bucket}/tt/mme/"
        assert "sagemaker-tritonserver:24.09-py3" in pc["Image"] and ".dkr.ecr.us-east-1." in pc["Image"]
        keys = {
            o["Key"] for o in boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket=bucket)["Contents"]
        }
        assert keys == {"tt/mme/digits_mlp.tar.gz", "tt/mme/housing_postprocess.tar.gz"}
        tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=model["ModelArn"])["Tags"]}
        assert tags == {"team": "ml", "tritonctl:endpoint": "mme"}
        aas = boto3.client("application-autoscaling", endpoint_url=s3_endpoint, region_name="us-east-1")
        (target,) = aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
        assert target["ResourceId"] == "endpoint/mme/variant/AllTraffic"
        assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 3)
        (policy,) = aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=target["ResourceId"])[
            "ScalingPolicies"
        ]
        tt = policy["TargetTrackingScalingPolicyConfiguration"]
        assert policy["PolicyType"] == "TargetTrackingScaling" and tt["TargetValue"] == 150.0
        assert tt["PredefinedMetricSpecification"]["PredefinedMetricType"] == "SageMakerVariantInvocationsPerInstance"
    finally:
        _cleanup("mme", s3_endpoint)


def test_variants_multi_container_and_serial(manifest: Path, bucket: str, s3_endpoint: str) -> None:
    sm = _sm(s3_endpoint)
    try:
        _deploy(manifest, "ab", s3_endpoint)
        cfg = sm.describe_endpoint_config(
            EndpointConfigName=sm.describe_endpoint(EndpointName="ab")["EndpointConfigName"]
        )
        weights = {v["VariantName"]: v["InitialVariantWeight"] for v in cfg["ProductionVariants"]}
        assert weights == {"logreg": 0.7, "mlp": 0.3}
        for v in cfg["ProductionVariants"]:
            pc = sm.describe_model(ModelName=v["ModelName"])["PrimaryContainer"]
            assert pc["ModelDataUrl"].startswith(f"s3://{bucket}/tt/ab/") and pc["ModelDataUrl"].endswith(".tar.gz")
            assert pc["Environment"]["SAGEMAKER_TRITON_DEFAULT_MODEL_NAME"] == f"digits_{v['VariantName']}"

        planned = _deploy(manifest, "mce", s3_endpoint)
        (create,) = [c for c in planned.calls if c.operation == "create_model"]
        assert create.params["InferenceExecutionConfig"] == {"Mode": "Direct"}  # moto drops it: checked as sent
        cfg = sm.describe_endpoint_config(
            EndpointConfigName=sm.describe_endpoint(EndpointName="mce")["EndpointConfigName"]
        )
        containers = sm.describe_model(ModelName=cfg["ProductionVariants"][0]["ModelName"])["Containers"]
        assert [c["ContainerHostname"] for c in containers] == ["digits-logreg", "digits-mlp"]
        assert [c["Environment"]["SAGEMAKER_TRITON_DEFAULT_MODEL_NAME"] for c in containers] == [
            "digits_logreg",
            "digits_mlp",
        ]

        planned = _deploy(manifest, "pipe", s3_endpoint)
        (upload,) = [c for c in planned.calls if c.operation == "put_object"]
        assert set(upload.why.split(": ")[1].split(", ")) == {
            "pipe_serial",
            "housing_Chicago_IL",
            "housing_postprocess",
        }
        assert any("compiled to ONNX" in n for n in planned.prepared.desired.notes)
        cfg = sm.describe_endpoint_config(
            EndpointConfigName=sm.describe_endpoint(EndpointName="pipe")["EndpointConfigName"]
        )
        pc = sm.describe_model(ModelName=cfg["ProductionVariants"][0]["ModelName"])["PrimaryContainer"]
        assert pc["Environment"]["SAGEMAKER_TRITON_DEFAULT_MODEL_NAME"] == "pipe_serial"
    finally:
        for ep in ("ab", "mce", "pipe"):
            _cleanup(ep, s3_endpoint)


def test_plan_only_reads_and_offline_calls_nothing(manifest: Path, s3_endpoint: str) -> None:
    clients = make_clients("us-east-1", s3_endpoint)
    seen: list[str] = []
    for c in (clients.s3, clients.sagemaker, clients.autoscaling):
        c.meta.events.register("before-call.*.*", lambda model, **_: seen.append(model.name))
    planned = api.plan(manifest, "mme", clients=clients)
    assert seen and all(is_read(_snake(op)) for op in seen), seen
    assert [c.operation for c in planned.calls][:3] == ["put_object", "put_object", "create_model"]
    assert _sm(s3_endpoint).list_models()["Models"] == [] or all(
        not m["ModelName"].startswith("mme-") for m in _sm(s3_endpoint).list_models()["Models"]
    )
    offline = api.plan(manifest, "mme", offline=True)
    assert [c.operation for c in offline.calls] == [c.operation for c in planned.calls]


def _snake(op: str) -> str:
    return "".join("_" + ch.lower() if ch.isupper() else ch for ch in op).lstrip("_")


def test_redeploy_unchanged_then_changed(tmp_path: Path, manifest: Path, bucket: str, s3_endpoint: str) -> None:
    first = _deploy(manifest, "mce", s3_endpoint)
    try:
        assert api.plan(manifest, "mce", endpoint_url=s3_endpoint).calls == []  # everything exists: nothing to do
        # A changed model: only its tarball is uploaded again, and the changed container makes a new model + config.
        changed = write_manifest(tmp_path / "changed.yaml", bucket, instance_type="ml.c5.xlarge")
        planned = api.plan(changed, "mce", endpoint_url=s3_endpoint)
        ops = [c.operation for c in planned.calls]
        assert "put_object" not in ops  # same tarballs, same content hashes: nothing re-uploaded
        assert ops[:3] == ["create_endpoint_config", "deregister_scalable_target", "update_endpoint"]
        assert ops[-1] == "delete_endpoint_config"  # the old config, once the endpoint moved
        old = first.prepared.desired.config_name
        _deploy(changed, "mce", s3_endpoint)  # UpdateEndpoint (added to moto's server: conftest), then clean-up
        sm = _sm(s3_endpoint)
        new = planned.prepared.desired.config_name
        assert new != old
        assert sm.describe_endpoint(EndpointName="mce")["EndpointConfigName"] == new  # the endpoint moved
        assert sm.describe_endpoint_config(EndpointConfigName=new)["ProductionVariants"][0]["InstanceType"] == (
            "ml.c5.xlarge"
        )
        configs = [c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]]
        assert old not in configs and new in configs  # the old config is cleaned up once the endpoint moved
        scaling = boto3.client("application-autoscaling", endpoint_url=s3_endpoint, region_name="us-east-1")
        targets = scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
        assert [t["ResourceId"] for t in targets if t["ResourceId"].startswith("endpoint/mce/")]  # registered again
        assert api.plan(changed, "mce", endpoint_url=s3_endpoint).calls == []  # and now nothing is left to do
    finally:
        _cleanup("mce", s3_endpoint)


def test_changed_model_uploads_only_its_tarball(tmp_path: Path, manifest: Path, bucket: str, s3_endpoint: str) -> None:
    _deploy(manifest, "mme", s3_endpoint)
    try:
        data = manifest_dict(bucket)
        data["models"][3]["parameters"] = {"x": "1"}  # housing_postprocess changes; digits_mlp does not
        changed = tmp_path / "changed.yaml"
        changed.write_text(yaml.safe_dump(data))
        planned = api.plan(changed, "mme", endpoint_url=s3_endpoint)
        uploads = [c.params["Key"] for c in planned.calls if c.operation == "put_object"]
        assert uploads == ["tt/mme/housing_postprocess.tar.gz"]
        assert all(c.operation == "put_object" for c in planned.calls)  # an MME's model and config do not change
    finally:
        _cleanup("mme", s3_endpoint)


def test_delete_leaves_nothing(manifest: Path, bucket: str, s3_endpoint: str) -> None:
    _deploy(manifest, "ab", s3_endpoint)
    sm = _sm(s3_endpoint)
    calls = api.delete("ab", lambda _: None, manifest=manifest, endpoint_url=s3_endpoint)
    assert {c.operation for c in calls} == {
        "deregister_scalable_target",
        "delete_endpoint",
        "delete_endpoint_config",
        "delete_model",
    }
    assert not [e for e in sm.list_endpoints()["Endpoints"] if e["EndpointName"] == "ab"]
    assert not [c for c in sm.list_endpoint_configs()["EndpointConfigs"] if c["EndpointConfigName"].startswith("ab-")]
    assert not [m for m in sm.list_models()["Models"] if m["ModelName"].startswith("ab-")]
    aas = boto3.client("application-autoscaling", endpoint_url=s3_endpoint, region_name="us-east-1")
    assert not [
        t
        for t in aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
        if "/ab/" in t["ResourceId"]
    ]
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 2  # S3 kept unless asked
    api.delete("ab", lambda _: None, manifest=manifest, endpoint_url=s3_endpoint, purge_s3=True)
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    assert api.delete("ab", lambda _: None, endpoint_url=s3_endpoint, region="us-east-1") == []


def test_errors_are_one_line(tmp_path: Path, bucket: str, s3_endpoint: str) -> None:
    missing = write_manifest(tmp_path / "nobucket.yaml", "tt-no-such-bucket-x")
    with pytest.raises(DeployError, match="bucket does not exist") as info:
        _deploy(missing, "mme", s3_endpoint)
    assert "\n" not in str(info.value)
    region = write_manifest(tmp_path / "region.yaml", bucket, region="xx-nowhere-1")
    with pytest.raises(DeployError, match="unknown region 'xx-nowhere-1'"):
        api.plan(region, "mme", offline=True)
    bad = write_manifest(tmp_path / "inf.yaml", bucket, instance_type="ml.inf2.xlarge")
    with pytest.raises(DeployError, match=r"bad instance type 'ml\.inf2\.xlarge'"):
        api.plan(bad, "mme", offline=True)
    with pytest.raises(DeployError, match="endpoint 'nope' is not in the manifest"):
        api.plan(write_manifest(tmp_path / "m.yaml", bucket), "nope", offline=True)


def test_cli_plan_status_delete(manifest: Path, s3_endpoint: str) -> None:
    from typer.testing import CliRunner

    from toolkit.cli.main import app

    runner = CliRunner()
    result = runner.invoke(app, ["deploy", "plan", str(manifest), "--endpoint", "mce", "--offline"])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "TargetContainerHostname on SageMaker: digits_logreg -> digits-logreg" in result.output
    assert "sagemaker.create_endpoint(EndpointName='mce'" in result.output
    result = runner.invoke(app, ["deploy", "plan", str(manifest), "--endpoint", "mce", "--offline", "--json"])
    plan = json.loads(result.stdout)
    assert plan["endpoint"] == "mce" and plan["offline"] is True
    assert f"{len(plan['calls'])} call(s) against" in text  # the same plan as the text form printed
    assert any(c["operation"] == "create_endpoint" and c["params"]["EndpointName"] == "mce" for c in plan["calls"])
    url = ["--endpoint-url", s3_endpoint, "--region", "us-east-1"]
    result = runner.invoke(app, ["deploy", "status", "--endpoint", "mce", *url])
    assert result.exit_code == 1 and result.output.strip() == "error: endpoint mce does not exist in us-east-1"
    result = runner.invoke(app, ["deploy", "sagemaker", str(manifest), "--endpoint", "mce", "--poll", "0", *url])
    assert result.exit_code == 0 and "mce: deployed" in result.output
    result = runner.invoke(app, ["deploy", "status", "--endpoint", "mce", *url])
    assert (
        "endpoint mce: InService" in result.output and "scaling endpoint/mce/variant/AllTraffic: 1..3" in result.output
    )
    # --json: the same facts as data (the text above is printed from this document)
    result = runner.invoke(app, ["deploy", "status", "--endpoint", "mce", "--json", *url])
    doc = json.loads(result.stdout)
    assert (doc["endpoint"], doc["status"], doc["region"]) == ("mce", "InService", "us-east-1")
    assert doc["scaling"] == [{"resource": "endpoint/mce/variant/AllTraffic", "min": 1, "max": 3}]
    assert [v["name"] for v in doc["variants"]] == ["AllTraffic"] and doc["config"].startswith("mce-")
    result = runner.invoke(app, ["deploy", "delete", "--endpoint", "mce", "--dry-run", *url])
    assert "delete_endpoint(EndpointName='mce')" in result.output
    result = runner.invoke(app, ["deploy", "delete", "--endpoint", "mce", "--dry-run", "--json", *url])
    dry = json.loads(result.stdout)
    deletes = [c["params"] for c in dry["calls"] if c["operation"] == "delete_endpoint"]
    assert dry["dry_run"] is True and deletes == [{"EndpointName": "mce"}]
    result = runner.invoke(app, ["deploy", "delete", "--endpoint", "mce", *url])
    assert result.exit_code == 0
    assert "nothing to delete" in runner.invoke(app, ["deploy", "delete", "--endpoint", "mce", *url]).output
