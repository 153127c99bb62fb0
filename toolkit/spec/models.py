"""The tritonctl manifest as pydantic v2 models.

One manifest (``tritonctl.yaml``) describes models, ensembles and endpoints. The models mirror Triton's own
``ModelConfig`` closely enough that a Triton user recognises every field, but they are checked here, before anything
is written, so that mistakes surface with a YAML path instead of as an opaque load failure inside Triton.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from toolkit.names import check_model_name
from toolkit.spec.deploy import DeploySpec

# Triton data types without the TYPE_ prefix (the KServe v2 spelling, which users see in requests).
DataType = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BF16",
    "BYTES",
    "STRING",
]

# Frameworks tritonctl adapts itself (python backend) and native Triton backends it renders for the NGC container.
AdapterFramework = Literal["python", "onnx", "sklearn", "torchscript", "numpy"]
NativeBackend = Literal["onnxruntime", "pytorch_libtorch", "tensorflow_savedmodel", "tensorrt_plan", "fil"]
Framework = Literal[
    "python",
    "onnx",
    "sklearn",
    "torchscript",
    "numpy",
    "onnxruntime",
    "pytorch_libtorch",
    "tensorflow_savedmodel",
    "tensorrt_plan",
    "fil",
]

TENSOR_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-:/]*$")


class _Strict(BaseModel):
    """Unknown keys are errors: a typo in a manifest must never be silently ignored."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class TensorSpec(_Strict):
    """One input or output tensor. ``dims`` exclude the batch dimension when the model batches (as in Triton)."""

    name: str
    dtype: DataType
    dims: list[int] = Field(min_length=0)
    optional: bool = False
    reshape: list[int] | None = None
    # sklearn adapter: which estimator method produces this output (predict, predict_proba, transform...).
    method: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not TENSOR_NAME_RE.match(v):
            raise ValueError(f"invalid tensor name {v!r}: use letters, digits, '_', '.', '-'")
        return v

    @field_validator("dims")
    @classmethod
    def _dims(cls, v: list[int]) -> list[int]:
        for d in v:
            if d == 0 or d < -1:
                raise ValueError(f"dimension {d} is invalid: each dim is a positive size or -1 (variable)")
        return v

    @property
    def dtype_for_config(self) -> str:
        return "STRING" if self.dtype == "BYTES" else self.dtype


class QueuePolicy(_Strict):
    timeout_action: Literal["REJECT", "DELAY"] = "REJECT"
    default_timeout_microseconds: int = Field(default=0, ge=0)
    allow_timeout_override: bool = False
    max_queue_size: int = Field(default=0, ge=0)


class DynamicBatching(_Strict):
    preferred_batch_sizes: list[int] = Field(default_factory=list)
    max_queue_delay_microseconds: int = Field(default=0, ge=0)
    preserve_ordering: bool = False
    queue_policy: QueuePolicy | None = None

    @field_validator("preferred_batch_sizes")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(b <= 0 for b in v):
            raise ValueError("preferred batch sizes must be positive")
        return v


class InstanceGroup(_Strict):
    kind: Literal["CPU", "GPU", "AUTO"] = "CPU"
    count: int = Field(default=1, ge=1)
    gpus: list[int] | None = None

    @model_validator(mode="after")
    def _gpus_need_gpu(self) -> InstanceGroup:
        if self.gpus and self.kind == "CPU":
            raise ValueError("gpus may only be given with kind GPU or AUTO")
        return self


class VersionPolicy(_Strict):
    """Triton's version_policy: exactly one of latest / all / specific."""

    latest: int | None = Field(default=None, ge=1)
    all: bool = False
    specific: list[int] | None = None

    @model_validator(mode="after")
    def _one(self) -> VersionPolicy:
        chosen = sum([self.latest is not None, self.all, self.specific is not None])
        if chosen != 1:
            raise ValueError("give exactly one of latest: N, all: true, specific: [versions]")
        return self


class WarmupInput(_Strict):
    dtype: DataType
    dims: list[int]
    data: Literal["zero", "random"] = "zero"


class Warmup(_Strict):
    name: str
    batch_size: int = Field(default=1, ge=1)
    count: int = Field(default=1, ge=1)
    inputs: dict[str, WarmupInput]


class ModelVersion(_Strict):
    version: int = Field(ge=1)
    artifact: Path | None = None


class ModelSpec(_Strict):
    """A single deployable model."""

    name: str
    framework: Framework
    artifact: Path | None = None
    versions: list[ModelVersion] | None = None
    version_policy: VersionPolicy | None = None
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    max_batch_size: int = Field(default=0, ge=0)
    dynamic_batching: DynamicBatching | None = None
    instance_group: list[InstanceGroup] = Field(default_factory=lambda: [InstanceGroup()])
    warmup: list[Warmup] = Field(default_factory=list)
    response_cache: bool = False
    parameters: dict[str, str] = Field(default_factory=dict)
    # Declared memory footprint: the MME's fallback when it cannot measure one.
    memory_bytes: int | None = Field(default=None, ge=0)
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_model_name(v)

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        seen: set[str] = set()
        for t in [*self.inputs, *self.outputs]:
            if t.name in seen:
                raise ValueError(f"tensor name {t.name!r} is used twice (inputs and outputs share one namespace)")
            seen.add(t.name)
        if self.dynamic_batching is not None and self.max_batch_size == 0:
            raise ValueError("dynamic_batching needs max_batch_size > 0")
        if self.dynamic_batching and any(b > self.max_batch_size for b in self.dynamic_batching.preferred_batch_sizes):
            raise ValueError("a preferred batch size exceeds max_batch_size")
        if self.artifact is None and not self.versions and self.framework != "python":
            raise ValueError(f"framework {self.framework!r} needs an artifact (or versions with artifacts)")
        if self.versions:
            numbers = [v.version for v in self.versions]
            if len(set(numbers)) != len(numbers):
                raise ValueError("version numbers must be unique")
        return self

    def version_artifacts(self) -> list[tuple[int, Path | None]]:
        """(version, artifact) pairs; a bare ``artifact`` means version 1."""
        if self.versions:
            return sorted((v.version, v.artifact or self.artifact) for v in self.versions)
        return [(1, self.artifact)]


class StepSpec(_Strict):
    """One step of an ensemble: a model plus how its tensors connect (None = map by name)."""

    model: str
    version: int = -1
    input_map: dict[str, str] | None = None
    output_map: dict[str, str] | None = None


class EnsembleSpec(_Strict):
    """Ensemble patterns; the ensembles package turns each into Triton config and generated python models."""

    name: str
    pattern: Literal["pipeline", "scatter_gather", "aggregate", "dynamic", "ab"]
    models: list[str] = Field(default_factory=list)
    steps: list[StepSpec] | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    inputs: list[TensorSpec] | None = None
    outputs: list[TensorSpec] | None = None
    max_batch_size: int | None = Field(default=None, ge=0)
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_model_name(v)


class VariantSpec(_Strict):
    name: str
    model: str
    weight: float = Field(default=1.0, ge=0)


class EndpointSpec(_Strict):
    """A front-door endpoint (SageMaker runtime API name -> what it serves)."""

    name: str
    mode: Literal["single", "multi-model", "multi-container", "serial"]
    model: str | None = None
    models: list[str] = Field(default_factory=list)
    store: str | None = None
    variants: list[VariantSpec] = Field(default_factory=list)
    model_cache_setting: Literal["Enabled", "Disabled"] = Field(
        default="Enabled",
        description="multi-model only: SageMaker's MultiModelConfig.ModelCacheSetting; Disabled unloads a model "
        "after each call (for models invoked once, e.g. per-tenant batch jobs)",
    )
    multiplex: bool = Field(
        default=False,
        description="multi-model: serve the models (models:, else the store's) inside shared model hosts (docs/mme.md)",
    )

    @model_validator(mode="after")
    def _check(self) -> EndpointSpec:
        if self.model_cache_setting == "Disabled" and self.mode != "multi-model":
            raise ValueError(
                f"model_cache_setting: Disabled is a multi-model endpoint setting (SageMaker's ModelCacheSetting); "
                f"endpoint {self.name!r} is {self.mode}: remove it"
            )
        if self.multiplex and (self.mode != "multi-model" or self.model_cache_setting == "Disabled"):
            raise ValueError(  # a host keeps its models until its own budget needs room: nothing unloads per call
                "multiplex: true is for multi-model endpoints whose model cache is enabled"
            )
        if self.mode == "single" and not (self.model or self.variants):
            raise ValueError("a single endpoint needs model: or variants:")
        if self.mode == "serial" and not (self.model or self.models or self.variants):
            raise ValueError("a serial endpoint needs models: (its steps in order), model: (a pipeline) or variants:")
        if self.mode == "multi-container" and not self.models:
            raise ValueError("a multi-container endpoint needs models: (its containers)")
        if self.mode == "multi-model" and not (self.store or self.models):
            raise ValueError("a multi-model endpoint needs store: (a directory or s3://bucket/prefix) or models:")
        return self


class Manifest(_Strict):
    """The whole ``tritonctl.yaml``."""

    version: Literal[1] = 1
    models: list[ModelSpec] = Field(default_factory=list)
    ensembles: list[EnsembleSpec] = Field(default_factory=list)
    ensemble_files: list[Path] = Field(default_factory=list, description="extra ensemble spec files (ensembles/*.yaml)")
    endpoints: list[EndpointSpec] = Field(default_factory=list)
    deploy: DeploySpec | None = Field(default=None, description="SageMaker deployment (tritonctl deploy sagemaker)")

    @model_validator(mode="after")
    def _unique(self) -> Manifest:
        names = [m.name for m in self.models] + [e.name for e in self.ensembles]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate model/ensemble names: {', '.join(dupes)}")
        return self

    def model(self, name: str) -> ModelSpec:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)
