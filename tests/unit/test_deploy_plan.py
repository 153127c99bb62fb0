"""The deploy planner, artifacts and error lines without AWS: ``plan_calls`` is a pure function of (desired, state),
so the branches moto cannot reach (the clean-up after a successful UpdateEndpoint, a Failed endpoint, quota and
access errors) are tested here on constructed states and botocore errors."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from botocore.exceptions import ClientError

from examples.deploy_demo import manifest_dict
from toolkit.deploy.apply import wait_in_service
from toolkit.deploy.artifacts import build_repository, imported_packages
from toolkit.deploy.errors import DeployError, aws_errors
from toolkit.deploy.onnx_compile import CompileRefused, compile_sklearn
from toolkit.deploy.plan import State, plan_calls
from toolkit.deploy.prepare import prepare
from toolkit.spec.models import Manifest

ROOT = Path(__file__).resolve().parents[2]


def _manifest(**deploy: Any) -> Manifest:
    return Manifest.model_validate(manifest_dict("tt-bucket", **deploy))


def _prepared(endpoint: str, tmp_path: Path, **deploy: Any) -> Any:
    return prepare(_manifest(**deploy), endpoint, base_dir=ROOT, work=tmp_path / endpoint)


def _ops(calls: list[Any]) -> list[str]:
    return [c.operation for c in calls]


def test_first_deploy_then_nothing(tmp_path: Path) -> None:
    d = _prepared("ab", tmp_path).desired
    calls = plan_calls(d, State())
    assert _ops(calls) == [
        *["put_object"] * 2,
        *["create_model"] * 2,
        "create_endpoint_config",
        "create_endpoint",
        "wait_until_in_service",
        *["register_scalable_target", "put_scaling_policy"] * 2,
    ]
    done = State(
        endpoint={"EndpointConfigName": d.config_name, "EndpointStatus": "InService"},
        models={m["ModelName"] for m in d.models},
        config_exists=True,
        objects={u.key: u.tarball.sha256 for u in d.uploads},
        configs={d.config_name: [m["ModelName"] for m in d.models]},
        targets={v: {"MinCapacity": 1, "MaxCapacity": 3} for v in d.scaling},
        policies={v: _policy(d, v) for v in d.scaling},
    )
    assert plan_calls(d, done) == []


def _policy(d: Any, variant: str) -> dict[str, Any]:
    from toolkit.deploy.desired import scaling_calls

    return scaling_calls(d.endpoint, variant, d.scaling[variant])[1]


def test_cleanup_after_the_update_succeeded(tmp_path: Path) -> None:
    """What moto cannot show: once the endpoint runs the new config, the next plan deletes the old config and the
    models only it used, and keeps the models the new config shares with it."""
    old = _prepared("ab", tmp_path).desired
    new = _prepared("ab", tmp_path, instance_count=2, autoscaling=None).desired
    assert new.config_name != old.config_name and [m["ModelName"] for m in new.models] == [
        m["ModelName"] for m in old.models
    ]
    after_update = State(
        endpoint={"EndpointConfigName": new.config_name, "EndpointStatus": "InService"},
        models={m["ModelName"] for m in new.models},
        config_exists=True,
        objects={u.key: u.tarball.sha256 for u in new.uploads},
        configs={new.config_name: [m["ModelName"] for m in new.models], old.config_name: ["ab-gone-12345678"]},
    )
    calls = plan_calls(new, after_update)
    assert [(c.operation, c.params) for c in calls] == [
        ("delete_endpoint_config", {"EndpointConfigName": old.config_name}),
        ("delete_model", {"ModelName": "ab-gone-12345678"}),
    ]


def test_busy_or_failed_endpoints_are_refused(tmp_path: Path) -> None:
    d = _prepared("mme", tmp_path).desired
    with pytest.raises(DeployError, match="is Updating; wait"):
        plan_calls(d, State(endpoint={"EndpointConfigName": "mme-00000000", "EndpointStatus": "Updating"}))
    failed = {"EndpointConfigName": "mme-00000000", "EndpointStatus": "Failed", "FailureReason": "image pull"}
    with pytest.raises(DeployError, match=r"Failed \(image pull\); delete it first"):
        plan_calls(d, State(endpoint=failed))


class _FailingEndpoint:
    def __init__(self) -> None:
        self.statuses = ["Creating", "Failed"]

    def describe_endpoint(self, EndpointName: str) -> dict[str, Any]:
        status = self.statuses.pop(0)
        reason = "The primary container for production variant AllTraffic did not pass the ping health check."
        return {"EndpointStatus": status, "FailureReason": reason}


def test_waiter_reports_failure_reason() -> None:
    lines: list[str] = []
    with pytest.raises(DeployError, match=r"endpoint e Failed: The primary container .* ping health check"):
        wait_in_service(_FailingEndpoint(), "e", lines.append, poll_s=0)
    assert [ln.split(":")[1].split()[0] for ln in lines] == ["Creating", "Failed"]


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("AccessDenied", "access denied (AccessDenied)"),
        ("ResourceLimitExceeded", "quota exceeded (ResourceLimitExceeded)"),
        ("NoSuchBucket", "the bucket does not exist"),
    ],
)
def test_aws_errors_are_one_line(code: str, expected: str) -> None:
    err = ClientError({"Error": {"Code": code, "Message": "multi\nline   message"}}, "CreateEndpoint")
    with pytest.raises(DeployError) as info, aws_errors("sagemaker CreateEndpoint e"):
        raise err
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_manifest_checks_role_and_instance_type() -> None:
    from pydantic import ValidationError

    data = manifest_dict("tt-bucket")
    del data["deploy"]["role"]
    with pytest.raises(ValidationError, match="role"):
        Manifest.model_validate(data)
    with pytest.raises(ValidationError, match="not an IAM role ARN"):
        Manifest.model_validate(manifest_dict("tt-bucket", role="SageMakerRole"))
    with pytest.raises(ValidationError, match="not a SageMaker instance type"):
        Manifest.model_validate(manifest_dict("tt-bucket", instance_type="m5.xlarge"))


def test_tarballs_are_deterministic_and_in_sagemaker_layout(tmp_path: Path) -> None:
    a = build_repository(_manifest(), tmp_path / "a").tarball("digits_logreg")
    b = build_repository(_manifest(), tmp_path / "b").tarball("digits_logreg")
    assert a.sha256 == b.sha256
    with tarfile.open(fileobj=io.BytesIO(a.data)) as tf:
        names = sorted(m.name for m in tf.getmembers() if m.isfile())
        config = tf.extractfile("digits_logreg/config.pbtxt").read().decode()  # type: ignore[union-attr]
    assert names == ["digits_logreg/1/model.onnx", "digits_logreg/config.pbtxt"]
    assert 'backend: "onnxruntime"' in config and "KIND_CPU" in config


def test_gpu_instance_gets_kind_gpu_for_native_models_only(tmp_path: Path) -> None:
    built = build_repository(_manifest(), tmp_path, gpu=True)
    from tritonclient.grpc import model_config_pb2 as mc

    kind = mc.ModelInstanceGroup.Kind.Name
    assert [kind(g.kind) for g in built.models["digits_logreg"].config.instance_group] == ["KIND_GPU"]
    assert [kind(g.kind) for g in built.models["digits_mlp"].config.instance_group] == ["KIND_CPU"]  # python backend


def test_python_packages_are_shipped_or_refused(tmp_path: Path) -> None:
    src = tmp_path / "uses_pandas.py"
    src.write_text("import json\nimport numpy as np\nimport pandas as pd\nfrom . import helper\n")
    assert imported_packages(src.read_text()) == {"json", "numpy", "pandas"}
    data = manifest_dict("tt-bucket")
    data["models"][3]["artifact"] = str(src)
    data["endpoints"] = [{"name": "p", "mode": "single", "model": "housing_postprocess"}]
    with pytest.raises(DeployError, match="needs package 'pandas', which SageMaker's Triton image lacks"):
        prepare(Manifest.model_validate(data), "p", base_dir=tmp_path, work=tmp_path / "w")
    env = tmp_path / "env.tar.gz"
    env.write_bytes(b"conda-pack output stands here")
    data["deploy"]["python_env"] = str(env)
    p = prepare(Manifest.model_validate(data), "p", base_dir=tmp_path, work=tmp_path / "w2")
    gm = p.built.models["housing_postprocess"]
    assert gm.config.parameters["EXECUTION_ENV_PATH"].string_value == "$$TRITON_MODEL_DIRECTORY/python_env.tar.gz"
    assert "python_env.tar.gz" in gm.files


def test_sklearn_compiles_only_when_equal(tmp_path: Path) -> None:
    m = _manifest()
    spec = m.model("housing_Chicago_IL")
    compiled = compile_sklearn(spec, spec.artifact)  # type: ignore[arg-type]
    import onnxruntime as ort

    sess = ort.InferenceSession(compiled.onnx, providers=["CPUExecutionProvider"])
    assert [(o.name, o.shape[1:]) for o in sess.get_outputs()] == [("price", [1])]
    # The digits forest ties votes on random pixels: refused on them, accepted on real digits.
    forest = spec.model_copy(
        update={
            "name": "digits_forest",
            "artifact": ROOT / "examples/artifacts/digits_forest.joblib",
            "max_batch_size": 64,
            "inputs": [spec.inputs[0].model_copy(update={"name": "X", "dims": [64]})],
            "outputs": [
                spec.outputs[0].model_copy(update={"name": "probabilities", "dims": [10], "method": "predict_proba"}),
                spec.outputs[0].model_copy(update={"name": "label", "dtype": "INT64", "method": "predict"}),
            ],
        }
    )
    with pytest.raises(CompileRefused, match="output label: ONNX differs from sklearn"):
        compile_sklearn(forest, forest.artifact)  # type: ignore[arg-type]
    assert compile_sklearn(forest, forest.artifact, ROOT / "examples/digits_samples.npy").samples == 64  # type: ignore[arg-type]
    assert np.load(ROOT / "examples/digits_samples.npy").shape == (64, 64)


def test_endpoint_override_can_turn_autoscaling_off(tmp_path: Path) -> None:
    on = _prepared("mme", tmp_path).desired
    off = _prepared("mme", tmp_path, endpoints={"mme": {"autoscaling": None, "instance_type": "ml.c5.xlarge"}}).desired
    assert set(on.scaling) == {"AllTraffic"} and off.scaling == {}
    assert off.config["ProductionVariants"][0]["InstanceType"] == "ml.c5.xlarge"


def test_model_cache_disabled_reaches_the_multi_model_container(tmp_path: Path) -> None:
    """SageMaker's MultiModelConfig.ModelCacheSetting, only when the manifest says Disabled (an unchanged manifest
    keeps its model names: the body is content-hashed)."""
    plain = _prepared("mme", tmp_path).desired.models[0]["PrimaryContainer"]
    assert "MultiModelConfig" not in plain
    raw = manifest_dict("tt-bucket")
    for ep in raw["endpoints"]:
        if ep["name"] == "mme":
            ep["model_cache_setting"] = "Disabled"
    manifest = Manifest.model_validate(raw)
    body = prepare(manifest, "mme", base_dir=ROOT, work=tmp_path / "off").desired.models[0]["PrimaryContainer"]
    assert body["MultiModelConfig"] == {"ModelCacheSetting": "Disabled"}
    raw["endpoints"][1]["model_cache_setting"] = "Disabled"  # "ab": a single endpoint
    with pytest.raises(ValueError, match="model_cache_setting: Disabled is a multi-model endpoint setting"):
        Manifest.model_validate(raw)
