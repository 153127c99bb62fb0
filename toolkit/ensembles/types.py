"""Types shared by the ensemble builders: tensor signatures of composed models and the options of each pattern.

Options (``spec.options``) are validated strictly so that a typo is an error naming the ensemble and the option,
never a silently ignored key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from toolkit.errors import GenerateError
from toolkit.repository.protos import model_config_pb2 as mc
from toolkit.spec.models import EnsembleSpec, ModelSpec, TensorSpec


class EnsembleError(GenerateError):
    """An ensemble spec cannot be turned into a valid Triton ensemble."""


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # KServe spelling; STRING is folded into BYTES
    dims: tuple[int, ...]
    optional: bool = False


@dataclass(frozen=True)
class Signature:
    """What an ensemble needs to know about a model it composes."""

    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    max_batch_size: int

    def input(self, name: str) -> Tensor | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> Tensor | None:
        return next((t for t in self.outputs if t.name == name), None)


def tensor_of(t: TensorSpec) -> Tensor:
    return Tensor(t.name, "BYTES" if t.dtype == "STRING" else t.dtype, tuple(t.dims), t.optional)


def signature_of(spec: ModelSpec) -> Signature:
    return Signature(
        tuple(tensor_of(t) for t in spec.inputs), tuple(tensor_of(t) for t in spec.outputs), spec.max_batch_size
    )


def signature_of_config(cfg: mc.ModelConfig) -> Signature:
    def conv(ts: Any) -> tuple[Tensor, ...]:
        out = []
        for t in ts:
            dt = mc.DataType.Name(t.data_type).removeprefix("TYPE_")
            out.append(Tensor(t.name, "BYTES" if dt == "STRING" else dt, tuple(t.dims), getattr(t, "optional", False)))
        return tuple(out)

    return Signature(conv(cfg.input), conv(cfg.output), cfg.max_batch_size)


# -- options of each pattern (spec.options), checked strictly so that typos are errors -------------------------------
class _Opts(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScatterOptions(_Opts):
    pick: Literal["most_probable"] | None = None
    score: str = "probabilities"


class AggregateOptions(_Opts):
    method: Literal["mean", "weighted_mean", "majority_vote"]
    weights: list[float] | None = None
    score: str = "probabilities"
    label: str = "label"


class Rule(_Opts):
    field: str
    op: Literal["eq", "ne", "lt", "le", "gt", "ge", "in"] = "eq"
    value: Any
    model: str
    index: int = Field(default=0, ge=0)
    name: str | None = None


class DynamicOptions(_Opts):
    by: Literal["parameter", "input", "rules"]
    key: str | None = None
    routes: dict[str, str] = Field(default_factory=dict)
    rules: list[Rule] = Field(default_factory=list)
    default: str | None = None
    served: str = "model"
    instances: int = Field(default=1, ge=1)
    batch_delay_us: int = Field(default=0, ge=0)  # router's dynamic_batching max_queue_delay_microseconds


class Variant(_Opts):
    name: str
    model: str
    weight: float = Field(default=1.0, ge=0)


class ABOptions(_Opts):
    variants: list[Variant] = Field(min_length=2)
    sticky: str | None = None
    seed: int | None = None
    served: str = "variant"
    instances: int = Field(default=1, ge=1)
    batch_delay_us: int = Field(default=0, ge=0)


def parse_options(spec: EnsembleSpec, cls: type[_Opts]) -> Any:
    try:
        return cls.model_validate(spec.options)
    except ValidationError as exc:
        lines = [
            f"ensemble {spec.name!r}: options.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        ]
        raise EnsembleError("\n".join(lines)) from None
