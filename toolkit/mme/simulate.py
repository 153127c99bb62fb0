"""Offline replay of a request trace against an MME eviction policy, with Belady's optimum as the yardstick.

Answers "how many models should stay resident, and which policy" before any GPU is involved: replay a real trace
(``load_trace``) or a synthetic Zipf one (``zipf_trace``) with a budget of N resident models (or a byte budget with
per-model sizes), through the very ``EvictionPolicy`` objects the live manager uses.
"""

from __future__ import annotations

import bisect
import csv
import heapq
import itertools
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from toolkit.errors import TritonctlError
from toolkit.mme.policies import EvictionPolicy, make_policy


class SimulationError(TritonctlError):
    """Bad simulator input (empty trace, unreadable file, model larger than the budget...)."""


@dataclass(frozen=True)
class SimResult:
    hits: int
    misses: int
    hit_ratio: float
    evictions: int
    load_seconds: float = 0.0  # total time spent loading (misses weighted by per-model load time)


def _check(trace: Sequence[str], budget: int, sizes: Mapping[str, int] | None) -> None:
    if budget <= 0:
        raise SimulationError(f"budget must be positive, got {budget}")
    if sizes is not None:
        for name in set(trace):
            if name not in sizes:
                raise SimulationError(f"no size given for model {name!r}")
            if sizes[name] > budget:
                raise SimulationError(f"model {name!r} ({sizes[name]} bytes) is larger than the budget ({budget})")


def _result(hits: int, n: int, evictions: int, load_seconds: float) -> SimResult:
    return SimResult(hits, n - hits, hits / n if n else 0.0, evictions, load_seconds)


def simulate(
    trace: Sequence[str],
    budget: int,
    policy: EvictionPolicy | str,
    *,
    sizes: Mapping[str, int] | None = None,
    load_seconds: Mapping[str, float] | None = None,
) -> SimResult:
    """Replay ``trace``. Without ``sizes`` the budget is a count of resident models; with it, a byte budget.

    Every miss loads the model (a request must be served), evicting policy-chosen victims until it fits.
    ``load_seconds`` gives per-model load cost (default 1.0), which cost-aware policies see in ``on_load``.
    """
    _check(trace, budget, sizes)
    pol = make_policy(policy) if isinstance(policy, str) else policy
    resident: set[str] = set()
    used = 0
    hits = evictions = 0
    spent = 0.0
    for now, name in enumerate(trace):
        if name in resident:
            hits += 1
            pol.on_hit(name, now)
            continue
        size = sizes[name] if sizes is not None else 1
        while resident and used + size > budget:
            victim = pol.choose_victim(resident, now)
            if victim not in resident:
                raise SimulationError(f"policy {pol.name!r} chose {victim!r}, which is not resident")
            resident.remove(victim)
            used -= sizes[victim] if sizes is not None else 1
            pol.on_evict(victim)
            evictions += 1
        cost = load_seconds.get(name, 1.0) if load_seconds is not None else 1.0
        spent += cost
        resident.add(name)
        used += size
        pol.on_load(name, now, size, cost)
    return _result(hits, len(trace), evictions, spent)


def belady(
    trace: Sequence[str],
    budget: int,
    *,
    sizes: Mapping[str, int] | None = None,
    load_seconds: Mapping[str, float] | None = None,
) -> SimResult:
    """Belady's MIN: on a miss evict the resident model whose next use is farthest in the future.

    Optimal for a count budget (demand loading, every request served). With a byte budget it is the usual
    farthest-next-use heuristic, not a proven optimum (variable sizes make the exact problem NP-hard).
    O(n log n): next uses are precomputed and residents kept in a max-heap with lazy invalidation.
    """
    _check(trace, budget, sizes)
    n = len(trace)
    inf = n + 1
    next_use = [inf] * n
    seen: dict[str, int] = {}
    for i in range(n - 1, -1, -1):
        next_use[i] = seen.get(trace[i], inf)
        seen[trace[i]] = i
    resident: dict[str, int] = {}  # name -> its next use
    heap: list[tuple[int, str]] = []  # (-next_use, name), stale entries skipped
    used = hits = evictions = 0
    spent = 0.0
    for i, name in enumerate(trace):
        nu = next_use[i]
        if name in resident:
            hits += 1
        else:
            size = sizes[name] if sizes is not None else 1
            while resident and used + size > budget:
                neg, victim = heapq.heappop(heap)
                if resident.get(victim) != -neg:
                    continue  # stale
                del resident[victim]
                used -= sizes[victim] if sizes is not None else 1
                evictions += 1
            used += size
            spent += load_seconds.get(name, 1.0) if load_seconds is not None else 1.0
        resident[name] = nu
        heapq.heappush(heap, (-nu, name))
    return _result(hits, n, evictions, spent)


def zipf_trace(n_models: int, alpha: float, n_requests: int, seed: int = 0) -> list[str]:
    """``n_requests`` names drawn from ``n_models`` with P(rank k) proportional to 1 / k**alpha (rank 1 = model_000)."""
    if n_models <= 0 or n_requests <= 0:
        raise SimulationError("zipf_trace needs n_models > 0 and n_requests > 0")
    if alpha < 0:
        raise SimulationError(f"zipf alpha must be >= 0, got {alpha}")
    width = max(3, len(str(n_models - 1)))
    names = [f"model_{k:0{width}d}" for k in range(n_models)]
    cum = list(itertools.accumulate(1.0 / (k + 1) ** alpha for k in range(n_models)))
    rng = random.Random(seed)
    total = cum[-1]
    return [names[min(bisect.bisect_right(cum, rng.random() * total), n_models - 1)] for _ in range(n_requests)]


def load_trace(path: Path | str) -> list[str]:
    """One model name per line (blank lines and ``#`` comments skipped), or a CSV with a ``model`` column."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SimulationError(f"cannot read trace {path}: {exc}") from exc
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if lines and "," in lines[0]:
        rows = list(csv.DictReader(lines))
        header = [h.strip() for h in (csv.DictReader(lines).fieldnames or [])]
        if "model" not in header:
            raise SimulationError(f"trace {path}: CSV header {header} has no 'model' column")
        trace = [str(r.get("model") or "").strip() for r in rows]
        if any(not t for t in trace):
            raise SimulationError(f"trace {path}: a row has an empty 'model' value")
    else:
        trace = lines[1:] if lines[:1] == ["model"] else lines
    if not trace:
        raise SimulationError(f"trace {path} holds no requests")
    return trace


def run_simulation(
    *,
    models: int = 200,
    alpha: float = 1.0,
    budget: int = 60,
    requests: int = 20_000,
    seed: int = 0,
    trace: Sequence[str] | Path | str | None = None,
    policies: Sequence[str] = ("lru", "gdsf"),
    policy_factory: Callable[[str], EvictionPolicy] = make_policy,
) -> dict[str, Any]:
    """Replay a Zipf trace (or ``trace``: a path or a list of names) through each policy and Belady.

    Returns ``{"trace": {...description...}, "budget": N, "results": {policy: SimResult as dict, ..., "belady": ...}}``.
    """
    if trace is None:
        reqs = zipf_trace(models, alpha, requests, seed)
        desc: dict[str, Any] = {"source": "zipf", "models": models, "alpha": alpha, "requests": requests, "seed": seed}
    else:
        reqs = load_trace(trace) if isinstance(trace, str | Path) else list(trace)
        if not reqs:
            raise SimulationError("trace holds no requests")
        desc = {"source": str(trace) if isinstance(trace, str | Path) else "list", "requests": len(reqs)}
    desc["distinct_models"] = len(set(reqs))
    results: dict[str, dict[str, Any]] = {}
    for name in policies:
        results[name] = asdict(simulate(reqs, budget, policy_factory(name)))
    results["belady"] = asdict(belady(reqs, budget))
    return {"trace": desc, "budget": budget, "results": results}


def format_table(result: Mapping[str, Any]) -> str:
    """A plain-text table of ``run_simulation``'s output, one row per policy, Belady last."""
    desc = result["trace"]
    head = ", ".join(f"{k}={v}" for k, v in desc.items())
    rows = [("policy", "hit ratio", "hits", "misses", "evictions", "vs belady")]
    best = result["results"]["belady"]["hit_ratio"]
    for name, r in result["results"].items():
        gap = "" if name == "belady" else f"{(r['hit_ratio'] - best) * 100:+.1f} pts"
        rows.append((name, f"{r['hit_ratio']:.4f}", str(r["hits"]), str(r["misses"]), str(r["evictions"]), gap))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"trace: {head}; budget={result['budget']}"]
    for j, row in enumerate(rows):
        lines.append(
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=False)))
        )
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
