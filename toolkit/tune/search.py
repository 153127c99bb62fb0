"""The search: coordinate ascent over the configs (the fast strategy) or every config (``brute``, the reference).

Each config is measured over a concurrency sweep (perf_analyzer at powers of two): upward until p99 passes the bound
or throughput stops growing, starting near the concurrency where the current best config peaked (a neighbour config
peaks near it too), so most configs cost two or three measurements instead of Model Analyzer's five plus a restart.
A config's value is its highest throughput at any concurrency whose p99 meets the bound.

Coordinate ascent: from the original config, for each dimension (instance count, dynamic batching on/off, max batch
size, max queue delay; for an ensemble, each of those per step model) step to the neighbouring value in one direction
and keep stepping while the config gets better; try the other direction when the first did not help; repeat the
round until no dimension helps or the time budget is spent. Why not Bayesian optimisation: with four small ordinal
dimensions and measurements this noisy, a model of the surface needs more measurements to fit than the climb needs
to finish.

Noise. On a shared 2-core machine two runs of the same config differ by several percent. When a candidate and the
incumbent are closer than the noise, both are measured again at their best concurrency (``repeats`` times) and
compared on medians; if they are still within the noise they are recorded as a tie ("cannot be told apart") and the
incumbent stays -- or, with the cost objective, the lighter config (fewer instances, smaller batches) wins. The noise
is the median relative spread of every repeated pair so far, and never below ``noise_floor``.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from toolkit.errors import TritonctlError
from toolkit.tune.measure import Measurement, PerfAnalyzer
from toolkit.tune.records import Assignment, Evaluation, Outcome, PathStep, Tie
from toolkit.tune.space import Point, Space
from toolkit.tune.target import Target

DIMENSIONS = ("instances", "dynamic", "max_batch", "delay")
MOVES = ("better", "tie-lighter", "closer")  # verdicts that make the candidate the incumbent


class _OutOfTime(Exception):
    """The time budget ran out before the next measurement."""


@dataclass
class SearchOptions:
    p99_ms: float
    budget_s: float = 180.0
    strategy: str = "climb"  # or "brute"
    objective: str = "throughput"  # or "cost": ties go to the lighter config
    repeats: int = 1
    noise_floor: float = 0.03
    plateau: float = 0.0  # stop the sweep when doubling concurrency gains less than this (0: once it falls)
    refine: int = 2  # bisections of the winner's concurrency between its best level and the first one over the bound
    settle_top: int = 3  # with time left: the best configs measured again in turn ...
    settle_rounds: int = 2  # ... this many times each, the winner then chosen on medians


class Search:
    """One tuning run against one target; ``run`` returns the outcome (the target is left loaded with some config:
    the caller restores it)."""

    def __init__(
        self,
        target: Target,
        analyzer: PerfAnalyzer,
        spaces: list[Space],
        options: SearchOptions,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.target = target
        self.analyzer = analyzer
        self.spaces = spaces
        self.options = options
        self.progress = progress
        self.concurrency = sorted(set(spaces[0].concurrency))
        self.evals: dict[Assignment, Evaluation] = {}
        self.best: Evaluation | None = None
        self.path: list[PathStep] = []
        self.ties: list[Tie] = []
        self.spreads: list[float] = []
        self.count = 0
        self._t0 = 0.0

    # -- bookkeeping ------------------------------------------------------------------------------------------------
    @property
    def noise(self) -> float:
        return max(self.options.noise_floor, statistics.median(self.spreads) if self.spreads else 0.0)

    def _elapsed(self) -> float:
        return time.monotonic() - self._t0

    def _say(self, text: str) -> None:
        if self.progress:
            self.progress(f"[{self._elapsed():5.1f}s] {text}")

    def label(self, assignment: Assignment) -> str:
        if not self.target.is_ensemble:
            return assignment[0].label()
        return "; ".join(f"{n}: {p.label()}" for n, p in zip(self.target.models, assignment, strict=True))

    def _record(self, ev: Evaluation, verdict: str) -> None:
        b = ev.best(self.options.p99_ms)
        self.path.append(
            PathStep(
                self._elapsed(), ev.label, verdict, b.throughput if b else None, b.p99_ms if b else None,
                b.concurrency if b else None,
            )
        )  # fmt: skip
        got = f"{b.throughput:.0f}/s p99 {b.p99_ms:.2f} ms at c={b.concurrency}" if b else (ev.error or "no point")
        self._say(f"{verdict:<11} {ev.label}: {got}")

    def _feasible(self, m: Measurement | None) -> bool:
        return m is not None and m.p99_ms <= self.options.p99_ms

    # -- measuring --------------------------------------------------------------------------------------------------
    def _measure(self, ev: Evaluation, concurrency: int) -> Measurement | None:
        if self._elapsed() >= self.options.budget_s:
            raise _OutOfTime
        try:
            m = self.analyzer.measure(self.target.model, concurrency)
        except TritonctlError as exc:
            ev.error = str(exc)
            return None
        self.count += 1
        ev.measurements.append(m)
        return m

    def evaluate(self, assignment: Assignment, start_c: int) -> Evaluation:
        """Load the config and sweep concurrency from ``start_c`` (see the module docstring)."""
        ev = Evaluation(assignment, self.label(assignment), len(self.evals))
        self.evals[assignment] = ev
        if self._elapsed() >= self.options.budget_s:
            raise _OutOfTime
        try:
            self.target.load(assignment)
        except TritonctlError as exc:
            ev.error = f"Triton refused the config: {exc}"
            return ev
        levels = self.concurrency
        i = max((j for j, c in enumerate(levels) if c <= start_c), default=0)
        first = self._measure(ev, levels[i])
        if not self._feasible(first):
            for j in range(i - 1, -1, -1):
                if self._feasible(self._measure(ev, levels[j])):
                    break
            return ev
        self._sweep_up(ev, i, first)
        return ev

    def _sweep_up(self, ev: Evaluation, i: int, prev: Measurement | None) -> None:
        plateau = None if self.options.strategy == "brute" else self.options.plateau
        for c in self.concurrency[i + 1 :]:
            m = self._measure(ev, c)
            if m is None or not self._feasible(m):
                return
            if plateau is not None and prev is not None and m.throughput < prev.throughput * (1 + plateau):
                return
            prev = m

    def _repeat(self, ev: Evaluation, concurrency: int) -> None:
        """Measure ``ev`` again at ``concurrency``; its spread against the first measurement feeds the noise."""
        self.target.load(ev.assignment)
        before = [m.throughput for m in ev.measurements if m.concurrency == concurrency]
        m = self._measure(ev, concurrency)
        if m is not None and before:
            mean = (before[0] + m.throughput) / 2
            self.spreads.append(abs(before[0] - m.throughput) / mean if mean else 0.0)

    # -- deciding ---------------------------------------------------------------------------------------------------
    def compare(self, cand: Evaluation, inc: Evaluation) -> str:
        """better / worse / tie / tie-lighter / infeasible / failed, with repeats when within the noise; ``closer``
        when neither meets the bound but the candidate's lowest p99 is clearly lower."""
        p99 = self.options.p99_ms
        a, b = cand.best(p99), inc.best(p99)
        if a is None and b is None:  # neither meets the bound yet: a clearly lower p99 is a step towards it
            pa, pb = cand.lowest_p99(), inc.lowest_p99()
            if pa is not None and (pb is None or pa < pb * (1 - self.noise)):
                return "closer"
        if a is None:
            return "failed" if cand.error and not cand.measurements else "infeasible"
        if b is None:
            return "better"
        if abs(a.throughput / b.throughput - 1) < self.noise:
            for _ in range(self.options.repeats):
                self._repeat(inc, b.concurrency)
                self._repeat(cand, a.concurrency)
            a, b = cand.best(p99), inc.best(p99)
            if a is None or b is None:
                return "infeasible" if a is None else "better"
            diff = a.throughput / b.throughput - 1
            if abs(diff) < self.noise:
                self.ties.append(Tie(cand.label, inc.label, diff))
                lighter = self.options.objective == "cost" and cand.weight() < inc.weight()
                return "tie-lighter" if lighter else "tie"
        return "better" if a.throughput > b.throughput else "worse"

    # -- strategies -------------------------------------------------------------------------------------------------
    def run(self) -> Outcome:
        self._t0 = time.monotonic()
        out_of_time = False
        try:
            if self.options.strategy == "brute":
                self._brute()
            else:
                self._climb()
            self._settle()
            self._refine()
        except _OutOfTime:
            out_of_time = True
            self._say("time budget spent: the best config so far is the answer")
        return Outcome(
            list(self.evals.values()), self.best, self.path, self.ties, self.noise, self.count, self._elapsed(),
            out_of_time,
        )  # fmt: skip

    def _start(self) -> Evaluation:
        ev = self.evaluate(self.target.start(), self.concurrency[0])
        self.best = ev
        self._record(ev, "start")
        b = ev.best(self.options.p99_ms)
        again = b.concurrency if b else (ev.measurements[0].concurrency if ev.measurements else None)
        if again is not None:  # a first noise sample: the start config again (at its best concurrency)
            self._repeat(ev, again)
        return ev

    def _climb(self) -> None:
        self._start()
        improved = True
        while improved:
            improved = False
            for i in range(len(self.spaces)):
                for dim in DIMENSIONS:
                    improved |= self._line(i, dim)

    def _line(self, i: int, dim: str) -> bool:
        """Step along one dimension of model ``i`` while it helps; True when the incumbent changed."""
        for direction in (1,) if dim == "dynamic" else (1, -1):
            moved = False
            while self.best is not None:
                nb = self._neighbour(self.best.assignment, i, dim, direction)
                if nb is None or nb in self.evals:
                    break
                best = self.best.best(self.options.p99_ms)
                ev = self.evaluate(nb, best.concurrency if best else self.concurrency[0])
                verdict = self.compare(ev, self.best)
                self._record(ev, verdict)
                if verdict not in MOVES:
                    break
                self.best, moved = ev, True
            if moved:
                return True
        return False

    def _neighbour(self, assignment: Assignment, i: int, dim: str, direction: int) -> Assignment | None:
        p, sp = assignment[i], self.spaces[i]
        q: Point | None = None
        if dim == "instances":
            v = _step(sp.instances, p.instances, direction)
            q = None if v is None else replace(p, instances=v)
        elif dim == "max_batch":
            v = _step(sp.max_batch, p.max_batch, direction)
            q = None if v is None else replace(p, max_batch=v)
        elif dim == "dynamic" and len(sp.dynamic) > 1:
            delay = p.delay_us if p.dynamic else next((d for d in sp.delays_us if d > 0), 0)
            q = replace(p, dynamic=not p.dynamic, delay_us=0 if p.dynamic else delay)
        elif dim == "delay" and p.dynamic:
            v = _step(sp.delays_us, p.delay_us, direction)
            q = None if v is None else replace(p, delay_us=v)
        return None if q is None else (*assignment[:i], q, *assignment[i + 1 :])

    def _brute(self) -> None:
        self._start()
        for assignment in itertools.product(*(list(sp.points()) for sp in self.spaces)):
            if assignment in self.evals or self.best is None:
                continue
            ev = self.evaluate(assignment, self.concurrency[0])
            verdict = self.compare(ev, self.best)
            self._record(ev, verdict)
            if verdict in MOVES:
                self.best = ev

    def _settle(self) -> None:
        """With time left, measure the best few configs again, in turn, at their best concurrency, and keep the best
        on medians: a single lucky measurement must not decide the answer on a noisy machine. Those still within the
        noise of the winner afterwards are recorded as ties."""
        p99 = self.options.p99_ms
        ranked = sorted(
            (e for e in self.evals.values() if e.best(p99) is not None),
            key=lambda e: -(e.best(p99) or Measurement(0, 0.0, 0.0, 0.0)).throughput,
        )
        top = ranked[: self.options.settle_top]
        if len(top) < 2:
            return
        for _ in range(self.options.settle_rounds):
            for ev in top:
                b = ev.best(p99)
                if b is not None:
                    self._repeat(ev, b.concurrency)
        value = {id(e): (e.best(p99) or Measurement(0, 0.0, 0.0, 0.0)).throughput for e in top}
        winner = max(top, key=lambda e: value[id(e)])
        for ev in top:
            diff = value[id(ev)] / value[id(winner)] - 1 if value[id(winner)] else 0.0
            if ev is not winner and abs(diff) < self.noise:
                self.ties.append(Tie(ev.label, winner.label, diff))
        self.best = winner
        self._record(winner, "settle")

    def _refine(self) -> None:
        """Bisect the winner's concurrency between its best level and the first level over the bound; a bisected
        level that wins is measured a second time (the answer is its median)."""
        ev = self.best
        b = ev.best(self.options.p99_ms) if ev else None
        if ev is None or b is None:
            return
        over = [c for c, m in ev.levels().items() if c > b.concurrency and m.p99_ms > self.options.p99_ms]
        lo, hi = b.concurrency, min(over, default=0)
        if not hi:
            return
        self.target.load(ev.assignment)
        for _ in range(self.options.refine):
            if hi - lo <= 1:
                break
            mid = (lo + hi) // 2
            m = self._measure(ev, mid)
            lo, hi = (mid, hi) if self._feasible(m) else (lo, mid)
        now = ev.best(self.options.p99_ms)
        if now is not None and now.concurrency != b.concurrency:  # a bisected level won: once more, not on one run
            self._repeat(ev, now.concurrency)
        self._record(ev, "refine")


def _step(values: tuple[int, ...], current: int, direction: int) -> int | None:
    """The neighbouring value in a sorted tuple (None at either end or when ``current`` is not in it)."""
    if current not in values:
        return None
    j = values.index(current) + direction
    return values[j] if 0 <= j < len(values) else None
