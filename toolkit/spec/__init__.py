"""Manifest models (pydantic) and the YAML loader that reports errors by YAML path and line."""

from toolkit.spec.loader import load_manifest, manifest_json_schema
from toolkit.spec.models import EndpointSpec, EnsembleSpec, Manifest, ModelSpec, TensorSpec

__all__ = [
    "EndpointSpec",
    "EnsembleSpec",
    "Manifest",
    "ModelSpec",
    "TensorSpec",
    "load_manifest",
    "manifest_json_schema",
]
