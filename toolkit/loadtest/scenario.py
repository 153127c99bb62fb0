"""Load-test scenarios: what to call (targets and their inputs), how (protocol, encoding) and how hard (shape).

Scenarios live as YAML files in ``load/scenarios/`` (``tritonctl loadtest NAME`` finds ``load/scenarios/NAME.yaml``)
so that users can copy one and describe their own representative traffic without writing Python.
"""

from __future__ import annotations

import itertools
import random
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from toolkit.errors import TritonctlError

SCENARIO_DIR = Path(__file__).resolve().parents[2] / "load" / "scenarios"
Protocol = Literal["http", "grpc", "sagemaker"]
DTYPES = {"FP32", "FP64", "FP16", "INT64", "INT32", "INT16", "INT8", "UINT8", "BOOL", "BYTES"}


class LoadTestError(TritonctlError):
    """A scenario or load-test invocation is invalid, or the run could not be carried out."""


def parse_duration(text: str | float | int) -> float:
    """``90``, ``"90s"``, ``"1m30s"``, ``"2m"``, ``"500ms"`` -> seconds."""
    if isinstance(text, int | float):
        return float(text)
    s = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", s)
    if not parts or "".join(n + u for n, u in parts) != s:
        raise LoadTestError(f"bad duration {text!r}: use e.g. 30s, 2m, 1m30s, 500ms")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


class TensorSpec(BaseModel):
    """One input tensor, per sample (the batch dimension is prepended when the model batches)."""

    model_config = ConfigDict(extra="forbid")
    dtype: str = "FP32"
    shape: list[int]
    # how to fill it: random uniform in [low, high) (ints: integers), or a constant
    low: float = 0.0
    high: float = 1.0
    value: float | None = None
    data: list[float] | None = None  # one sample's values (flattened), repeated for every row
    choices: list[str] | None = None  # BYTES: one of these per row (picked at random)

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str) -> str:
        v = v.upper().removeprefix("TYPE_")
        v = "BYTES" if v == "STRING" else v
        if v not in DTYPES:
            raise ValueError(f"unknown dtype {v!r}; one of {sorted(DTYPES)}")
        return v


class Target(BaseModel):
    """One model (or ensemble, or MME target model) and its share of the traffic."""

    model_config = ConfigDict(extra="forbid")
    model: str
    weight: float = Field(1.0, gt=0)
    batch: int = Field(1, ge=1)  # rows per request (models with max_batch_size 0 get no batch dimension)
    batched: bool | None = None  # None: ask the server's metadata (or assume True when it cannot be asked)
    inputs: dict[str, TensorSpec] | None = None  # None: derived from the model's metadata
    outputs: list[str] | None = None  # None: all outputs
    parameters: dict[str, str | int | bool] | None = None  # KServe request parameters (e.g. a routing key)
    endpoint: str | None = None  # SageMaker endpoint name (sagemaker protocol)
    target_model: str | None = None  # SageMaker MME X-Amzn-SageMaker-Target-Model
    name: str | None = None  # label in the report (default: target_model or model)

    @property
    def label(self) -> str:
        return self.name or self.target_model or self.model


class Stage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    duration: float  # seconds this stage lasts
    users: int = Field(ge=0)
    spawn_rate: float = Field(10.0, gt=0)

    @field_validator("duration", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> float:
        return parse_duration(v)


class Shape(BaseModel):
    """constant: N users back to back (closed loop); rate: N users paced to a total request rate;
    step: +step_users every step_time up to users; ramp: explicit stages (linear spawn between them)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["constant", "rate", "step", "ramp"] = "constant"
    rps: float | None = Field(None, gt=0)
    step_users: int = Field(1, ge=1)
    step_time: float = 10.0
    stages: list[Stage] = Field(default_factory=list)

    @field_validator("step_time", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> float:
        return parse_duration(v)

    @model_validator(mode="after")
    def _check(self) -> Shape:
        if self.kind == "rate" and self.rps is None:
            raise ValueError("shape kind 'rate' needs rps")
        if self.kind == "ramp" and not self.stages:
            raise ValueError("shape kind 'ramp' needs stages")
        return self


class MMETraffic(BaseModel):
    """Zipf(alpha) popularity over N target models of one SageMaker multi-model endpoint.

    ``models`` is a list of target models (most popular first), or a format string with ``{i}`` (0-based rank) and
    ``n``, e.g. ``"model_{i:03d}.tar.gz"``. Every generated target copies ``template`` (inputs, batch) with its own
    target_model.
    """

    model_config = ConfigDict(extra="forbid")
    endpoint: str
    models: str | list[str]
    n: int | None = Field(None, ge=1)
    alpha: float = Field(1.0, ge=0)
    template: Target
    cold_threshold_ms: float = 50.0  # client-side estimate: a slower request probably waited for a model load

    @model_validator(mode="after")
    def _check(self) -> MMETraffic:
        if isinstance(self.models, str) and (self.n is None or "{i" not in self.models):
            raise ValueError("mme.models as a format string needs {i} and n")
        if isinstance(self.models, list) and not self.models:
            raise ValueError("mme.models is empty")
        return self

    def names(self) -> list[str]:
        if isinstance(self.models, list):
            return list(self.models[: self.n] if self.n else self.models)
        return [self.models.format(i=i) for i in range(self.n or 0)]


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    protocol: Protocol = "http"
    encoding: Literal["json", "binary"] = "binary"
    users: int = Field(1, ge=1)
    spawn_rate: float = Field(100.0, gt=0)
    duration: float = 30.0
    warmup: float = 0.0  # seconds at the start excluded from the summary (the time series keeps them)
    shape: Shape = Field(default_factory=Shape)
    targets: list[Target] = Field(default_factory=list)
    mme: MMETraffic | None = None
    requires: list[str] = Field(default_factory=list)  # models to load before the run when tritonctl starts Triton
    timeout: float = 60.0  # per-request timeout, seconds

    @field_validator("duration", "warmup", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> float:
        return parse_duration(v)

    @model_validator(mode="after")
    def _check(self) -> Scenario:
        if not self.targets and self.mme is None:
            raise ValueError("a scenario needs targets or mme")
        return self

    def expanded_targets(self) -> list[Target]:
        """The explicit targets plus the MME's Zipf-weighted ones."""
        out = list(self.targets)
        if self.mme is not None:
            names = self.mme.names()
            for name, w in zip(names, zipf_weights(len(names), self.mme.alpha), strict=True):
                t = self.mme.template.model_copy(deep=True)
                t.target_model = name
                t.endpoint = self.mme.endpoint
                t.weight = w
                out.append(t)
        return out


def zipf_weights(n: int, alpha: float) -> list[float]:
    """P(rank k) ∝ 1 / (k+1)^alpha, normalised."""
    raw = [1.0 / (k + 1) ** alpha for k in range(n)]
    total = sum(raw)
    return [r / total for r in raw]


class TargetMix:
    """Weighted random choice of a request's target, shared by every simulated user of a run.

    Plain Python (no Locust import) so the traffic mix can be checked with many seeded draws outside the worker's
    gevent-patched process; ``rng`` defaults to the ``random`` module's shared generator.
    """

    def __init__(self, weights: list[float], rng: random.Random | None = None) -> None:
        if not weights or min(weights) < 0 or sum(weights) <= 0:
            raise LoadTestError(f"target weights must be >= 0 with a positive sum, got {weights}")
        self._cum = list(itertools.accumulate(weights))
        self._choose = rng.choices if rng is not None else random.choices
        self._population = range(len(weights))

    def pick(self) -> int:
        """Index of the next request's target."""
        if len(self._cum) == 1:
            return 0
        return self._choose(self._population, cum_weights=self._cum)[0]


def find_scenario(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    cand = SCENARIO_DIR / f"{name_or_path}.yaml"
    if cand.is_file():
        return cand
    known = ", ".join(sorted(x.stem for x in SCENARIO_DIR.glob("*.yaml")))
    raise LoadTestError(f"no scenario {name_or_path!r}: give a YAML path or one of: {known}")


def load_scenario(name_or_path: str) -> Scenario:
    path = find_scenario(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise LoadTestError(f"{path}: not valid YAML: {exc}") from None
    return parse_scenario(data, str(path))


def parse_scenario(data: Any, source: str = "<scenario>") -> Scenario:
    if not isinstance(data, dict):
        raise LoadTestError(f"{source}: a scenario is a mapping")
    data = {k: v for k, v in data.items() if not str(k).startswith("x-")}  # YAML anchors' home, as in the manifest
    data.setdefault("name", Path(source).stem)
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise LoadTestError(f"{source}: invalid scenario\n" + "\n".join(lines)) from None


def list_scenarios() -> list[str]:
    return sorted(x.stem for x in SCENARIO_DIR.glob("*.yaml"))
