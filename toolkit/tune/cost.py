"""Cost per million inferences at the target latency, from an instance's price per hour.

The price comes from ``--price-per-hour`` or the manifest's ``deploy.prices`` table for ``deploy.instance_type`` (or
``--instance-type``). The throughput is the one measured here, so the figure is what the chosen config costs on an
instance like this machine: a table of other instance types prices them, it does not measure them.
"""

from __future__ import annotations

from dataclasses import dataclass

from toolkit.spec.models import Manifest
from toolkit.tune.space import TuneError


@dataclass(frozen=True)
class Price:
    per_hour: float
    instance_type: str | None
    source: str  # "--price-per-hour" or "manifest deploy.prices"

    def per_million(self, throughput: float) -> float:
        """Price of a million inferences at ``throughput`` inferences/s on one instance kept busy."""
        if throughput <= 0:
            return float("inf")
        return self.per_hour / (throughput * 3600.0) * 1e6


def resolve_price(per_hour: float | None, manifest: Manifest | None, instance_type: str | None = None) -> Price | None:
    """The explicit price, else the manifest's price for the instance type (``instance_type`` or the deploy
    section's), else None."""
    if per_hour is not None:
        if per_hour <= 0:
            raise TuneError(f"--price-per-hour must be positive, got {per_hour}")
        return Price(per_hour, instance_type, "--price-per-hour")
    deploy = manifest.deploy if manifest is not None else None
    if deploy is None or not deploy.prices:
        return None
    kind = instance_type or deploy.instance_type
    if kind not in deploy.prices:
        raise TuneError(f"deploy.prices has no price for {kind} (it has: {', '.join(sorted(deploy.prices))})")
    return Price(deploy.prices[kind], kind, "manifest deploy.prices")
