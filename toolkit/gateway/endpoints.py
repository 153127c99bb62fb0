"""Endpoint modes from the manifest: which Triton model(s) one SageMaker ``invoke_endpoint`` call reaches.

The rules follow SageMaker's: a multi-model endpoint needs ``TargetModel`` (canonicalised once by
``toolkit.names.canonical_target``: the route carries that name, and the policy context its one readable spelling,
``target_path``: ``team-a/cities/Chicago_IL`` for the model ``team-a..cities..Chicago_IL``, the name itself for a flat
one; never the header's spelling); a direct
multi-container endpoint needs ``TargetContainerHostname`` naming one of its containers (missing or unknown = 400
ValidationError); production variants are drawn by weight unless ``TargetVariant`` picks one; a serial endpoint
feeds each step's outputs to the next step as inputs of the same names.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from toolkit.gateway.errors import ValidationError
from toolkit.names import canonical_target, target_path
from toolkit.spec.models import EndpointSpec, VariantSpec

DEFAULT_VARIANT = "AllTraffic"


@dataclass(frozen=True)
class Route:
    """What to call: ``chain`` has one model, or several for a serial endpoint."""

    endpoint: str
    chain: tuple[str, ...]
    variant: str
    context: dict[str, str] = field(default_factory=dict)  # IAM condition keys for the policy check

    @property
    def model(self) -> str:
        return self.chain[-1]


class EndpointRouter:
    """Resolves (endpoint, target headers) to a ``Route``; ``knows`` says whether a store holds a model."""

    def __init__(
        self, specs: Sequence[EndpointSpec], knows: Callable[[str], bool], rng: random.Random | None = None
    ) -> None:
        self.specs = {s.name: s for s in specs}
        self.knows = knows
        self.rng = rng or random.Random()

    def names(self) -> list[str]:
        return sorted(self.specs)

    def resolve(
        self,
        endpoint: str,
        target_model: str | None = None,
        container: str | None = None,
        variant: str | None = None,
    ) -> Route:
        spec = self.specs.get(endpoint)
        if spec is None:
            raise ValidationError(f"Endpoint {endpoint} not found (known: {', '.join(self.names()) or 'none'}).")
        ctx: dict[str, str] = {"sagemaker:EndpointName": endpoint}
        if target_model is not None and spec.mode != "multi-model":
            raise ValidationError(f"TargetModel is only valid for multi-model endpoints; {endpoint} is {spec.mode}.")
        if container is not None and spec.mode != "multi-container":
            raise ValidationError(
                f"TargetContainerHostname is only valid for multi-container endpoints; {endpoint} is {spec.mode}."
            )
        if spec.mode == "multi-model":
            if not target_model:
                raise ValidationError(f"Endpoint {endpoint} is a multi-model endpoint: TargetModel is required.")
            model = canonical_target(target_model)  # the one name the policy, the manager and Triton all see
            allowed = model in spec.models if spec.models else self.knows(model)
            if not allowed:
                raise ValidationError(f"Model {target_model} is not found in the model store of endpoint {endpoint}.")
            ctx["sagemaker:TargetModel"] = target_path(model)  # what policies match (toolkit.names: why the path)
            return self._with_variant(spec, (model,), variant, ctx)
        if spec.mode == "multi-container":
            if not container:
                raise ValidationError(
                    f"Endpoint {endpoint} is a direct multi-container endpoint: TargetContainerHostname is required."
                )
            if container not in spec.models:
                raise ValidationError(
                    f"Inference request for container {container} is invalid: endpoint {endpoint} has containers "
                    f"{', '.join(spec.models)}."
                )
            ctx["sagemaker:TargetContainerHostname"] = container
            return self._with_variant(spec, (container,), variant, ctx)
        if spec.variants:
            chosen = self._draw(spec, variant)
            ctx["sagemaker:TargetVariant"] = chosen.name
            return Route(endpoint, (chosen.model,), chosen.name, ctx)
        chain = tuple(spec.models) if spec.mode == "serial" and spec.models else (spec.model or "",)
        return self._with_variant(spec, chain, variant, ctx)

    def _with_variant(
        self, spec: EndpointSpec, chain: tuple[str, ...], variant: str | None, ctx: dict[str, str]
    ) -> Route:
        if variant is not None and variant != DEFAULT_VARIANT:
            raise ValidationError(f"Variant {variant} not found for endpoint {spec.name} (it has {DEFAULT_VARIANT}).")
        ctx["sagemaker:TargetVariant"] = DEFAULT_VARIANT
        return Route(spec.name, chain, DEFAULT_VARIANT, ctx)

    def _draw(self, spec: EndpointSpec, variant: str | None) -> VariantSpec:
        if variant is not None:
            for v in spec.variants:
                if v.name == variant:
                    return v
            names = ", ".join(v.name for v in spec.variants)
            raise ValidationError(f"Variant {variant} not found for endpoint {spec.name} (variants: {names}).")
        weights = [v.weight for v in spec.variants]
        if sum(weights) <= 0:
            raise ValidationError(f"Endpoint {spec.name} has no variant with a positive weight.")
        return self.rng.choices(spec.variants, weights=weights, k=1)[0]
