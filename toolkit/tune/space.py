"""The search space of ``tritonctl tune``: what one serving configuration is, and how it becomes a Triton config.

A point sets, for one model, the instance count, the max batch size, dynamic batching on or off and its max queue
delay. Client concurrency is not part of a point: every point is measured over a concurrency sweep, because the best
concurrency depends on the config and is what a deployment provisions for.

Why preferred batch sizes are rescaled, not searched: Triton refuses a config whose ``preferred_batch_size`` exceeds
``max_batch_size``. Model Analyzer 1.58 copied ``preferred_batch_size: [8, 16]`` into every config it generated, so
every config with a smaller max batch size failed to load and its search stopped after one config. Here a preferred
size above the new max batch size is dropped and the max batch size itself takes its place, so a point never makes an
illegal config and the intent "form batches as large as allowed" is kept.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from toolkit.errors import TritonctlError


class TuneError(TritonctlError):
    """A tuning run cannot start or go on (bad space, model not tunable, perf_analyzer missing...)."""


@dataclass(frozen=True, order=True)
class Point:
    """One serving configuration of one model (``max_batch == 0``: the model does not batch)."""

    instances: int
    max_batch: int
    dynamic: bool
    delay_us: int = 0

    def label(self) -> str:
        batching = f"dyn {self.delay_us}us" if self.dynamic else "no dyn"
        return f"{self.instances} inst, max batch {self.max_batch}, {batching}"

    def weight(self) -> tuple[int, int, int]:
        """Resource order for breaking ties: fewer instances (memory), then smaller batches, then less delay."""
        return (self.instances, self.max_batch, self.delay_us)


def rescale_preferred(sizes: Sequence[int], max_batch: int) -> list[int]:
    """Preferred batch sizes legal under ``max_batch``: sizes above it are dropped and ``max_batch`` is added in
    their place (sorted, without duplicates); no sizes stay no sizes (Triton then batches up to the max)."""
    if max_batch <= 0:
        return []
    kept = sorted({s for s in sizes if 0 < s <= max_batch})
    if len(kept) < len(set(sizes)):
        kept = sorted({*kept, max_batch})
    return kept


def parse_range(text: str, what: str) -> list[int]:
    """``"1-16"`` -> powers of two from 1 to 16 (and 16); ``"1,3,8"`` -> those values; ``"4"`` -> [4]."""
    try:
        if "-" in text:
            lo_s, hi_s = text.split("-", 1)
            lo, hi = int(lo_s), int(hi_s)
            if lo < 0 or hi < lo:
                raise ValueError
            values = sorted({v for v in (2**k for k in range(0, 31)) if lo <= v <= hi} | {lo, hi})
        else:
            values = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise TuneError(f"bad {what} {text!r}: give LO-HI (powers of two between) or a list like 1,2,4") from None
    if not values or min(values) < 0:
        raise TuneError(f"bad {what} {text!r}: values must be non-negative integers")
    return values


@dataclass(frozen=True)
class Space:
    """The values each dimension may take; ``dynamic`` lists the batching modes tried (True = dynamic batching)."""

    instances: tuple[int, ...] = (1, 2, 3, 4)
    max_batch: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    dynamic: tuple[bool, ...] = (True, False)
    delays_us: tuple[int, ...] = (0, 100, 200, 500, 1000)
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16)

    def __post_init__(self) -> None:
        for name in ("instances", "max_batch", "dynamic", "delays_us", "concurrency"):
            if not getattr(self, name):
                raise TuneError(f"the search space has no {name} value")
        if min(self.instances) < 1 or min(self.concurrency) < 1:
            raise TuneError("instance counts and concurrencies must be at least 1")

    def including(self, start: Point) -> Space:
        """This space with the start point's own values added: the original config is always a candidate (it is
        what Model Analyzer calls the default config, and a tuner must never recommend something worse)."""
        return replace(
            self,
            instances=tuple(sorted({*self.instances, start.instances})),
            max_batch=tuple(sorted({*self.max_batch, start.max_batch})),
            dynamic=tuple(sorted({*self.dynamic, start.dynamic}, reverse=True)),
            delays_us=tuple(sorted({*self.delays_us, start.delay_us})),
        )

    def for_model(self, batching: bool) -> Space:
        """A model with ``max_batch_size: 0`` cannot batch: only its instance count is searched."""
        if batching:
            return replace(self, max_batch=tuple(b for b in self.max_batch if b > 0) or (1,))
        return replace(self, max_batch=(0,), dynamic=(False,), delays_us=(0,))

    def points(self) -> Iterator[Point]:
        """Every point (the brute-force strategy's list); the delay only varies when dynamic batching is on."""
        for inst, mb, dyn in itertools.product(self.instances, self.max_batch, self.dynamic):
            for delay in self.delays_us if dyn else (0,):
                yield Point(inst, mb, dyn, delay)


@dataclass
class ModelSettings:
    """A model's config as Triton reports it (``GET /v2/models/M/config``), and what a point changes in it."""

    name: str
    original: dict[str, Any]
    preferred: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        db = self.original.get("dynamic_batching") or {}
        self.preferred = [int(s) for s in db.get("preferred_batch_size", [])]

    @property
    def batching(self) -> bool:
        return int(self.original.get("max_batch_size", 0)) > 0

    def start(self) -> Point:
        """The point the original config is."""
        groups = self.original.get("instance_group") or [{}]
        db = self.original.get("dynamic_batching")
        return Point(
            instances=int(groups[0].get("count", 1)),
            max_batch=int(self.original.get("max_batch_size", 0)),
            dynamic=db is not None,
            delay_us=int(db.get("max_queue_delay_microseconds", 0)) if db is not None else 0,
        )

    def config_for(self, p: Point) -> dict[str, Any]:
        """The original config with the point's settings: the first instance group's count (others kept), the max
        batch size, and dynamic batching (its other fields, e.g. queue policy, kept) with rescaled preferred sizes."""
        cfg = copy.deepcopy(self.original)
        groups = cfg.get("instance_group") or [{"kind": "KIND_CPU"}]
        groups[0]["count"] = p.instances
        cfg["instance_group"] = groups
        cfg["max_batch_size"] = p.max_batch
        if p.dynamic and p.max_batch > 0:
            db = dict(cfg.get("dynamic_batching") or {})
            db["preferred_batch_size"] = rescale_preferred(self.preferred, p.max_batch)
            db["max_queue_delay_microseconds"] = p.delay_us
            cfg["dynamic_batching"] = db
        else:
            cfg.pop("dynamic_batching", None)
        return cfg


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_time(text: str, default_unit: str) -> float:
    """``"5ms"``, ``"0.5s"``, ``"3m"``, ``"250us"`` -> seconds; a bare number is in ``default_unit``."""
    t = text.strip().lower()
    unit = next((u for u in sorted(_UNITS, key=len, reverse=True) if t.endswith(u) and t[: -len(u)]), default_unit)
    number = t[: -len(unit)] if t.endswith(unit) else t
    try:
        value = float(number) * _UNITS[unit]
    except ValueError:
        raise TuneError(f"bad duration {text!r}: e.g. 5ms, 0.5s, 3m") from None
    if value <= 0:
        raise TuneError(f"bad duration {text!r}: must be positive")
    return value
