"""The manifest's ``deploy:`` section: where and how ``tritonctl deploy sagemaker`` puts the manifest's endpoints.

Kept apart from ``models.py`` because it describes AWS, not Triton: the role SageMaker assumes, the S3 location of the
model tarballs, the instances and the container settings. It is checked here with the rest of the manifest, so a typo
in an instance type or a malformed role ARN is a manifest error with its YAML line, found before any AWS call.
Values AWS itself decides (whether the role exists, whether the account has quota) can only be checked by AWS.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ROLE_ARN_RE = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
INSTANCE_TYPE_RE = re.compile(r"^ml\.[a-z0-9-]+\.[a-z0-9-]+$")
REGION_RE = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class AutoscalingSpec(_Strict):
    """Application Auto Scaling on a production variant: target tracking on invocations per instance."""

    min_instances: int = Field(default=1, ge=1)
    max_instances: int = Field(default=1, ge=1)
    target_invocations_per_instance: float = Field(default=100.0, gt=0)
    scale_in_cooldown_s: int = Field(default=300, ge=0)
    scale_out_cooldown_s: int = Field(default=60, ge=0)

    @model_validator(mode="after")
    def _order(self) -> AutoscalingSpec:
        if self.max_instances < self.min_instances:
            raise ValueError("max_instances must be >= min_instances")
        return self


class ContainerSpec(_Strict):
    """Settings of SageMaker's Triton container, passed as its SAGEMAKER_TRITON_* environment variables."""

    thread_count: int | None = Field(default=None, ge=1, description="SAGEMAKER_TRITON_THREAD_COUNT")
    shm_default_byte_size: int | None = Field(
        default=None, ge=1, description="SAGEMAKER_TRITON_SHM_DEFAULT_BYTE_SIZE (python backend shared memory)"
    )
    shm_growth_byte_size: int | None = Field(default=None, ge=1, description="SAGEMAKER_TRITON_SHM_GROWTH_BYTE_SIZE")
    model_load_gpu_limit: float | None = Field(
        default=None, gt=0, le=1, description="SAGEMAKER_TRITON_MODEL_LOAD_GPU_LIMIT (fraction of each GPU)"
    )
    log_verbose: bool | None = Field(default=None, description="SAGEMAKER_TRITON_LOG_VERBOSE")
    env: dict[str, str] = Field(default_factory=dict, description="further environment variables, passed as given")


class EndpointDeploySpec(_Strict):
    """Per-endpoint overrides of the ``deploy:`` defaults."""

    instance_type: str | None = None
    instance_count: int | None = Field(default=None, ge=1)
    autoscaling: AutoscalingSpec | None = None
    container: ContainerSpec | None = None

    @field_validator("instance_type")
    @classmethod
    def _instance(cls, v: str | None) -> str | None:
        return _check_instance_type(v)


def _check_instance_type(v: str | None) -> str | None:
    if v is not None and not INSTANCE_TYPE_RE.match(v):
        raise ValueError(
            f"instance type {v!r} is not a SageMaker instance type (ml.<family>.<size>, e.g. ml.g5.xlarge)"
        )
    return v


class DeploySpec(_Strict):
    """Where the manifest's endpoints go on SageMaker (``tritonctl deploy sagemaker``)."""

    role: str = Field(description="IAM role ARN SageMaker assumes (reads the model tarballs, pulls the image)")
    bucket: str = Field(description="S3 bucket for the model tarballs")
    prefix: str = Field(default="tritonctl", description="S3 key prefix; each endpoint gets <prefix>/<endpoint>/")
    region: str | None = Field(default=None, description="AWS region (default: the usual AWS configuration)")
    instance_type: str = "ml.m5.xlarge"
    instance_count: int = Field(default=1, ge=1)
    image: str | None = Field(default=None, description="container image URI (default: sagemaker-tritonserver)")
    triton_version: str | None = Field(
        default=None, description="sagemaker-tritonserver tag without -py3, e.g. 24.09 (default: the newest known)"
    )
    python_env: Path | None = Field(
        default=None,
        description="a conda-pack tarball shipped with python-backend models that import packages the container "
        "lacks (set as their EXECUTION_ENV_PATH)",
    )
    samples: dict[str, Path] = Field(
        default_factory=dict, description="model -> .npy of inputs for the sklearn -> ONNX equality check"
    )
    container: ContainerSpec = Field(default_factory=ContainerSpec)
    autoscaling: AutoscalingSpec | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    endpoints: dict[str, EndpointDeploySpec] = Field(default_factory=dict, description="per-endpoint overrides")
    prices: dict[str, float] = Field(
        default_factory=dict,
        description="instance type -> price per hour (e.g. SageMaker's on-demand USD): tritonctl tune's cost per "
        "million inferences at the target latency",
    )

    @field_validator("role")
    @classmethod
    def _role(cls, v: str) -> str:
        if not ROLE_ARN_RE.match(v):
            raise ValueError(f"role {v!r} is not an IAM role ARN (arn:aws:iam::<12-digit account>:role/<name>)")
        return v

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, v: str) -> str:
        if not BUCKET_RE.match(v):
            raise ValueError(f"bucket {v!r} is not a valid S3 bucket name")
        return v

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        return v.strip("/")

    @field_validator("region")
    @classmethod
    def _region(cls, v: str | None) -> str | None:
        if v is not None and not REGION_RE.match(v):
            raise ValueError(f"region {v!r} is not an AWS region name (e.g. us-east-1)")
        return v

    @field_validator("instance_type")
    @classmethod
    def _instance(cls, v: str) -> str:
        return _check_instance_type(v) or v

    @field_validator("prices")
    @classmethod
    def _prices(cls, v: dict[str, float]) -> dict[str, float]:
        for instance, price in v.items():
            _check_instance_type(instance)
            if not price > 0:
                raise ValueError(f"price of {instance} must be positive, got {price}")
        return v

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [k for k in v if k.lower().startswith("aws:") or not 1 <= len(k) <= 128]
        if bad:
            raise ValueError(f"tag key {bad[0]!r} is not allowed (1-128 characters, not starting with aws:)")
        return v
