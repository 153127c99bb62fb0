"""Small, complete sample models written through the normal generator (config from the protobuf, nothing templated).

Tests, benchmarks and install smoke checks need "a small python model" over and over; this is the one place that
defines it, so every caller measures and exercises the same thing.
"""

from __future__ import annotations

from pathlib import Path

from toolkit.repository.config import build_config
from toolkit.repository.generate import TEMPLATES, GeneratedModel, write_model
from toolkit.spec.models import ModelSpec, TensorSpec

SCALE_TEMPLATE = TEMPLATES / "scale_model.py"


def scale_model_spec(
    name: str,
    *,
    factor: float = 2.0,
    dims: tuple[int, ...] = (2,),
    max_batch_size: int = 0,
    fail_on_init: bool = False,
    init_sleep_ms: int = 0,
    sleep_ms: int = 0,
) -> ModelSpec:
    """The manifest entry of a python model computing Y = X * factor (FP32 tensors of ``dims``); ``init_sleep_ms`` and
    ``sleep_ms`` slow its load and each execution down (for wait-budget and timeout tests)."""
    params = {"factor": repr(float(factor))}
    if fail_on_init:
        params["fail_on_init"] = "true"
    if init_sleep_ms:
        params["init_sleep_ms"] = str(init_sleep_ms)
    if sleep_ms:
        params["sleep_ms"] = str(sleep_ms)
    return ModelSpec(
        name=name,
        framework="python",
        inputs=[TensorSpec(name="X", dtype="FP32", dims=list(dims))],
        outputs=[TensorSpec(name="Y", dtype="FP32", dims=list(dims))],
        max_batch_size=max_batch_size,
        parameters=params,
    )


def write_scale_model(root: Path, name: str, **kw: object) -> Path:
    """Write ``root/name`` (config.pbtxt + 1/model.py); keyword arguments as for ``scale_model_spec``."""
    spec = scale_model_spec(name, **kw)  # type: ignore[arg-type]
    write_model(GeneratedModel(name, build_config(spec), {"1/model.py": SCALE_TEMPLATE}), Path(root))
    return Path(root) / name
