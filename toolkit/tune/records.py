"""What a search records: each config with its measurements (``Evaluation``), the path the search took, the ties it
could not break, and the outcome. Plain data, apart from the search so that the result, the report and the benchmark
read it without importing the strategies."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from toolkit.tune.measure import Measurement
from toolkit.tune.space import Point

Assignment = tuple[Point, ...]  # one point per tuned model, in ``Target.models`` order


@dataclass
class Evaluation:
    """One config and every measurement of it (repeats at one concurrency are merged by their median)."""

    assignment: Assignment
    label: str
    order: int
    measurements: list[Measurement] = field(default_factory=list)
    error: str | None = None

    def levels(self) -> dict[int, Measurement]:
        by: dict[int, list[Measurement]] = {}
        for m in self.measurements:
            by.setdefault(m.concurrency, []).append(m)
        return {
            c: Measurement(
                c,
                statistics.median(m.throughput for m in ms),
                statistics.median(m.p50_ms for m in ms),
                statistics.median(m.p99_ms for m in ms),
            )
            for c, ms in sorted(by.items())
        }

    def best(self, p99_ms: float) -> Measurement | None:
        """The highest-throughput concurrency whose p99 meets the bound (None: no concurrency does)."""
        ok = [m for m in self.levels().values() if m.p99_ms <= p99_ms]
        return max(ok, key=lambda m: m.throughput, default=None)

    def lowest_p99(self) -> float | None:
        return min((m.p99_ms for m in self.levels().values()), default=None)

    def weight(self) -> tuple[int, ...]:
        return tuple(sum(w) for w in zip(*(p.weight() for p in self.assignment), strict=True))


@dataclass(frozen=True)
class PathStep:
    """One entry of the search path: a config measured and what the search made of it."""

    t_s: float
    label: str
    verdict: str  # start, better, closer, worse, tie, tie-lighter, infeasible, failed, settle, refine
    throughput: float | None
    p99_ms: float | None
    concurrency: int | None


@dataclass(frozen=True)
class Tie:
    """Two configs still within the noise after repeated measurement: they cannot be told apart."""

    a: str
    b: str
    difference: float  # a's throughput / b's - 1


@dataclass
class Outcome:
    evaluations: list[Evaluation]
    best: Evaluation | None
    path: list[PathStep]
    ties: list[Tie]
    noise: float
    measurements: int
    elapsed_s: float
    out_of_time: bool
