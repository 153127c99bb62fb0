"""The options and the result of one tuning run: what ``tritonctl tune`` was asked, what it found, and the views of
it (summary line, JSON) the CLI, the report and --apply read. Kept apart from ``run`` so that the report can name
these types without importing the runner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.tune.cost import Price
from toolkit.tune.records import Evaluation, Outcome
from toolkit.tune.space import Point, Space, TuneError

OBJECTIVES = ("throughput", "cost")
STRATEGIES = ("climb", "brute")


@dataclass
class TuneOptions:
    """Everything ``tritonctl tune`` takes (the CLI's flags, parsed)."""

    model: str
    p99_ms: float
    manifest: Path | None = Path("tritonctl.yaml")
    url: str | None = None
    grpc_url: str | None = None  # with url: Triton's gRPC host:port when it is not the HTTP port + 1
    objective: str = "throughput"
    strategy: str = "climb"
    budget_s: float = 180.0
    space: Space = field(default_factory=Space)
    price_per_hour: float | None = None
    instance_type: str | None = None
    perf_analyzer: Path | None = None
    protocol: str = "grpc"
    window_ms: int = 500
    repeats: int = 1
    noise_floor: float = 0.03
    report_dir: Path | None = None
    apply: bool = False

    def check(self) -> None:
        if self.objective not in OBJECTIVES:
            raise TuneError(f"--objective {self.objective!r}: choose {' or '.join(OBJECTIVES)}")
        if self.strategy not in STRATEGIES:
            raise TuneError(f"--strategy {self.strategy!r}: choose {' or '.join(STRATEGIES)}")
        if self.p99_ms <= 0 or self.budget_s <= 0:
            raise TuneError("--p99 and --budget-time must be positive")
        if self.protocol not in ("grpc", "http"):
            raise TuneError(f"--protocol {self.protocol!r}: grpc or http")
        if self.apply and self.manifest is None:
            raise TuneError("--apply needs --manifest (the file the settings are written into)")


@dataclass
class TuneResult:
    options: TuneOptions
    models: list[str]
    ensemble: bool
    outcome: Outcome
    start_label: str
    start_points: tuple[Point, ...]
    price: Price | None
    restore_problems: list[str]
    wall_s: float
    applied: bool = False

    @property
    def best(self) -> Evaluation | None:
        return self.outcome.best

    @property
    def found(self) -> bool:
        """A config met the bound (without one, --apply writes nothing and the CLI exits 1)."""
        return self.best is not None and self.best.best(self.options.p99_ms) is not None

    def settings(self) -> dict[str, Point]:
        """The winning point per tuned model (what --apply writes)."""
        return dict(zip(self.models, self.best.assignment, strict=True)) if self.best else {}

    def changed_settings(self) -> dict[str, Point]:
        """The winning points that differ from the original configs (--apply writes only these)."""
        start = dict(zip(self.models, self.start_points, strict=True))
        return {name: p for name, p in self.settings().items() if start.get(name) != p}

    def cost(self, ev: Evaluation) -> float | None:
        b = ev.best(self.options.p99_ms)
        return self.price.per_million(b.throughput) if self.price and b else None

    def close_to_best(self) -> list[Evaluation]:
        """Configs whose value is within the noise of the winner's: the search cannot tell them from it."""
        best = self.best.best(self.options.p99_ms) if self.best else None
        if best is None:
            return []
        out = []
        for ev in self.outcome.evaluations:
            b = ev.best(self.options.p99_ms)
            if ev is not self.best and b and abs(b.throughput / best.throughput - 1) < self.outcome.noise:
                out.append(ev)
        return out

    def summary(self) -> str:
        o, p99 = self.outcome, self.options.p99_ms
        b = self.best.best(p99) if self.best else None
        if self.best is None or b is None:
            errors = [e.error for e in o.evaluations if e.error]
            why = f"; first error: {errors[0]}" if errors else ""
            return f"{self.options.model}: no config meets p99 <= {p99:g} ms ({o.measurements} measurements){why}"
        cost = self.cost(self.best)
        priced = self.price.instance_type if self.price and self.price.instance_type else "given price"
        lines = [
            f"{self.options.model}: {self.best.label} at concurrency {b.concurrency}: {b.throughput:.0f} infer/s, "
            f"p99 {b.p99_ms:.2f} ms (bound {p99:g} ms)"
            + (f", {cost:.4f} per million inferences ({priced})" if cost else ""),
            f"search: {self.options.strategy}, {len(o.evaluations)} configs, {o.measurements} measurements, "
            f"{o.elapsed_s:.0f} s of search, {self.wall_s:.0f} s in all; noise {o.noise:.1%}"
            + ("; time budget spent" if o.out_of_time else ""),
        ]
        close = self.close_to_best()
        if close:
            lines.append("cannot be told apart from it (within the noise): " + " | ".join(e.label for e in close))
        if self.restore_problems:
            lines.append("NOT restored: " + "; ".join(self.restore_problems))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        p99 = self.options.p99_ms

        def ev_dict(ev: Evaluation) -> dict[str, Any]:
            b = ev.best(p99)
            return {
                "label": ev.label,
                "order": ev.order,
                "points": [vars(p) for p in ev.assignment],
                "best": vars(b) if b else None,
                "cost_per_million": self.cost(ev),
                "levels": [vars(m) for m in ev.levels().values()],
                "measurements": len(ev.measurements),
                "error": ev.error,
            }

        o = self.outcome
        return {
            "model": self.options.model,
            "tuned_models": self.models,
            "ensemble": self.ensemble,
            "p99_ms": p99,
            "objective": self.options.objective,
            "strategy": self.options.strategy,
            "budget_s": self.options.budget_s,
            "start": self.start_label,
            "best": ev_dict(self.best) if self.best else None,
            "close_to_best": [e.label for e in self.close_to_best()],
            "evaluations": [ev_dict(e) for e in o.evaluations],
            "path": [vars(s) for s in o.path],
            "ties": [vars(t) for t in o.ties],
            "noise": o.noise,
            "measurements": o.measurements,
            "search_s": o.elapsed_s,
            "wall_s": self.wall_s,
            "out_of_time": o.out_of_time,
            "price": vars(self.price) if self.price else None,
            "restore_problems": self.restore_problems,
            "applied": self.applied,
        }
