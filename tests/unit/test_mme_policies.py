"""Eviction policies and the trace simulator (pure Python, no Triton)."""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Collection
from pathlib import Path

import pytest

from toolkit.errors import TritonctlError
from toolkit.mme.policies import EvictionPolicy, GDSFPolicy, LRUPolicy, PolicyError, make_policy
from toolkit.mme.simulate import (
    SimulationError,
    belady,
    format_table,
    load_trace,
    run_simulation,
    simulate,
    zipf_trace,
)

# Budget 2 resident models, unit sizes, load cost 1.0 for every model.
#  idx:   0    1    2    3    4    5    6    7    8
HAND = ["A", "B", "A", "C", "A", "B", "C", "A", "B"]
# LRU (by hand):
#   0 A miss {A} | 1 B miss {A,B} | 2 A hit (order B,A) | 3 C miss, evict B {A,C} | 4 A hit (order C,A)
#   5 B miss, evict C {A,B} | 6 C miss, evict A {B,C} | 7 A miss, evict B {C,A} | 8 B miss, evict C {A,B}
#   -> hits 2 (idx 2, 4), misses 7, evictions 5
# Belady (by hand; next use in brackets):
#   0 A miss | 1 B miss | 2 A hit | 3 C miss: A[4] B[5] -> evict B | 4 A hit | 5 B miss: A[7] C[6] -> evict A
#   6 C hit | 7 A miss: C[never] B[8] -> evict C | 8 B hit  -> hits 4 (idx 2, 4, 6, 8), evictions 3
# GDSF with admission (H = L + freq; probation H = L when freq <= freq of the model just evicted):
#   0 A load f=1 H=1 | 1 B load f=1 H=1 | 2 A hit f=2 H=2 | 3 C: evict B(H1) L=1 vf=1, C f=1<=1 probation H=1
#   4 A hit f=3 H=1+3=4 | 5 B: evict C(H1) L=1 vf=1, B f=2>1 H=1+2=3 | 6 C: evict B(H3) L=3 vf=2, C f=2 probation H=3
#   7 A hit f=4 H=3+4=7 | 8 B: evict C(H3) L=3 vf=2, B f=3>2 H=6  -> hits 3 (idx 2, 4, 7), evictions 4


class Watched:
    """Wraps a policy as the simulator drives it: keeps the resident set the calls imply (a load adds, an eviction
    removes), its peak size against the budget, and every victim in order."""

    def __init__(self, policy: EvictionPolicy, budget: int, sizes: dict[str, int] | None = None) -> None:
        self.policy, self.budget, self.sizes = policy, budget, sizes
        self.name = policy.name
        self.resident: set[str] = set()
        self.victims: list[str] = []
        self.peak = 0

    def _used(self) -> int:
        return sum(self.sizes[n] for n in self.resident) if self.sizes else len(self.resident)

    def on_hit(self, name: str, now: float) -> None:
        assert name in self.resident, f"hit on {name!r}, which is not resident"
        self.policy.on_hit(name, now)

    def on_load(self, name: str, now: float, size_bytes: int, load_seconds: float) -> None:
        assert name not in self.resident, f"{name!r} loaded twice"
        self.resident.add(name)
        self.peak = max(self.peak, self._used())
        assert self._used() <= self.budget, f"{sorted(self.resident)} exceed the budget {self.budget}"
        self.policy.on_load(name, now, size_bytes, load_seconds)

    def on_evict(self, name: str) -> None:
        self.resident.remove(name)
        self.victims.append(name)
        self.policy.on_evict(name)

    def choose_victim(self, candidates: Collection[str], now: float) -> str:
        return self.policy.choose_victim(candidates, now)


def test_hand_trace_exact_counts() -> None:
    lru = Watched(LRUPolicy(), 2)
    res = simulate(HAND, 2, lru)
    assert (res.hits, res.misses, res.evictions) == (2, 7, 5)
    assert lru.victims == ["B", "C", "A", "B", "C"]  # idx 3, 5, 6, 7, 8 (see the trace above)
    gdsf = Watched(GDSFPolicy(), 2)
    res = simulate(HAND, 2, gdsf)
    assert (res.hits, res.misses, res.evictions) == (3, 6, 4)
    # The lowest H goes: B(1) at idx 3, the probationer C(1) at 5, B(3) against A(4) at 6, C(3) against A(7) at 8.
    # A policy that evicted the highest H instead would throw A out, the most frequent model, every time.
    assert gdsf.victims == ["B", "C", "B", "C"]
    assert lru.peak == gdsf.peak == 2
    opt = belady(HAND, 2)
    assert (opt.hits, opt.misses, opt.evictions) == (4, 5, 3)
    assert opt.hit_ratio == pytest.approx(4 / 9)


def _brute_force_best(trace: list[str], budget: int) -> int:
    """Max hits over every possible eviction choice (demand loading), by exhaustive search."""
    best = 0

    def go(i: int, resident: frozenset[str], hits: int) -> None:
        nonlocal best
        if hits + (len(trace) - i) <= best:
            return
        if i == len(trace):
            best = max(best, hits)
            return
        name = trace[i]
        if name in resident:
            go(i + 1, resident, hits + 1)
        elif len(resident) < budget:
            go(i + 1, resident | {name}, hits)
        else:
            for victim in resident:
                go(i + 1, (resident - {victim}) | {name}, hits)

    go(0, frozenset(), 0)
    return best


def test_belady_matches_brute_force_optimum() -> None:
    rng = random.Random(7)
    for _ in range(30):
        trace = [rng.choice("ABCDE") for _ in range(12)]
        for budget in (1, 2, 3):
            assert belady(trace, budget).hits == _brute_force_best(trace, budget), (trace, budget)


def test_belady_beats_every_policy_on_random_traces() -> None:
    rng = random.Random(3)
    for trial in range(20):
        n_models = rng.randint(3, 40)
        trace = zipf_trace(n_models, rng.uniform(0.0, 1.5), 500, seed=trial)
        budget = rng.randint(1, n_models)
        opt = belady(trace, budget).hits
        for name in ("lru", "gdsf"):
            assert simulate(trace, budget, make_policy(name)).hits <= opt


def test_zipf_case_cost_aware_beats_lru() -> None:
    start = time.perf_counter()
    result = run_simulation(models=200, alpha=1.0, budget=60, requests=20_000, seed=0)
    elapsed = time.perf_counter() - start
    r = result["results"]
    lru, gdsf, opt = r["lru"]["hit_ratio"], r["gdsf"]["hit_ratio"], r["belady"]["hit_ratio"]
    assert gdsf >= lru + 0.05, (lru, gdsf)
    assert lru <= opt and gdsf <= opt
    assert elapsed < 5.0
    table = format_table(result)
    assert "belady" in table and "gdsf" in table and f"{lru:.4f}" in table


def test_gdsf_is_cost_and_size_aware() -> None:
    pol = GDSFPolicy()
    pol.on_load("slow", 0, 1, 10.0)  # least recently used, but expensive to reload
    pol.on_load("fast", 1, 1, 0.1)
    assert pol.choose_victim({"slow", "fast"}, 2) == "fast"
    lru = LRUPolicy()
    lru.on_load("slow", 0, 1, 10.0)
    lru.on_load("fast", 1, 1, 0.1)
    assert lru.choose_victim({"slow", "fast"}, 2) == "slow"
    sized = GDSFPolicy(cost=1.0)  # constant cost: the bigger model goes first
    sized.on_load("big", 0, 1_000_000, 5.0)
    sized.on_load("small", 1, 1_000, 5.0)
    assert sized.choose_victim(["big", "small"], 2) == "big"


def test_policy_respects_candidates_and_errors() -> None:
    pol = LRUPolicy()
    for t, n in enumerate("ABC"):
        pol.on_load(n, t, 1, 1.0)
    assert pol.choose_victim({"B", "C"}, 3) == "B"  # A pinned: not a candidate
    assert pol.choose_victim({"B", "Z"}, 3) == "Z"  # never reported (loaded before the policy): oldest
    with pytest.raises(PolicyError, match="no eviction candidates"):
        pol.choose_victim(set(), 3)
    with pytest.raises(PolicyError, match="unknown eviction policy"):
        make_policy("fifo")
    assert isinstance(make_policy("cost-aware"), GDSFPolicy)
    assert issubclass(PolicyError, TritonctlError)


def test_byte_budget() -> None:
    sizes = {"A": 2, "B": 1, "C": 1}
    # A(2) B(1) -> used 3; C: evict LRU A -> {B,C}; A: need 2, used 2+2>3 -> evict B -> {C,A}
    watched = Watched(LRUPolicy(), 3, sizes)
    res = simulate(["A", "B", "C", "A"], 3, watched, sizes=sizes)
    assert (res.hits, res.evictions) == (0, 2)
    assert watched.victims == ["A", "B"] and watched.resident == {"C", "A"} and watched.peak == 3
    res = simulate(["A", "B", "A", "C", "A"], 3, "lru", sizes=sizes)
    assert res.hits == 2  # idx 2 and 4: C evicts B (LRU), A stays
    assert belady(["A", "B", "C", "A"], 3, sizes=sizes).hits == 1  # evict B or C, keep A
    with pytest.raises(SimulationError, match="larger than the budget"):
        simulate(["A"], 1, "lru", sizes=sizes)
    with pytest.raises(SimulationError, match="no size"):
        simulate(["Z"], 3, "lru", sizes=sizes)


def test_zipf_trace_is_skewed_and_reproducible() -> None:
    t1, t2 = zipf_trace(50, 1.0, 5000, seed=1), zipf_trace(50, 1.0, 5000, seed=1)
    assert t1 == t2 and t1 != zipf_trace(50, 1.0, 5000, seed=2)
    counts = {n: t1.count(n) for n in set(t1)}
    assert counts["model_000"] > 5 * counts.get("model_049", 0)
    with pytest.raises(SimulationError):
        zipf_trace(0, 1.0, 10, 0)


def test_load_trace_formats(tmp_path: Path) -> None:
    plain = tmp_path / "t.txt"
    plain.write_text("# comment\na\n\nb\na\n")
    assert load_trace(plain) == ["a", "b", "a"]
    csv_file = tmp_path / "t.csv"
    csv_file.write_text("ts,model\n1,a\n2,b\n")
    assert load_trace(csv_file) == ["a", "b"]
    bad = tmp_path / "bad.csv"
    bad.write_text("ts,name\n1,a\n")
    with pytest.raises(SimulationError, match="no 'model' column"):
        load_trace(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    with pytest.raises(SimulationError, match="no requests"):
        load_trace(empty)
    with pytest.raises(SimulationError, match="cannot read"):
        load_trace(tmp_path / "missing.txt")
    result = run_simulation(trace=plain, budget=1)
    assert result["trace"]["requests"] == 3 and result["results"]["belady"]["hits"] == 0


def test_all_pairs_small_budgets_never_exceed_budget() -> None:
    """Every 3-letter trace of length 6 and every 4-letter trace of length 5 (exhaustive, small), both policies, count
    budgets 1 to 3: the resident set never exceeds the budget (checked at every load), fills it when the trace has
    enough distinct models, and evicts only when it must (a miss with the budget full)."""
    for letters, length in (("ABC", 6), ("ABCD", 5)):
        for trace in itertools.product(letters, repeat=length):
            distinct = len(set(trace))
            for budget in (1, 2, 3):
                opt = belady(list(trace), budget).hits
                for name in ("lru", "gdsf"):
                    watched = Watched(make_policy(name), budget)
                    res = simulate(list(trace), budget, watched)
                    assert res.hits + res.misses == length and res.hits <= opt
                    assert watched.peak == min(budget, distinct), (trace, budget, name, watched.peak)
                    assert res.evictions == res.misses - watched.peak == len(watched.victims), (trace, budget, name)


def test_the_cost_aware_policy_is_the_default_everywhere(tmp_path: Path) -> None:
    """GDSF is the default of the manager, ``ServeConfig`` and ``tritonctl serve`` (issue 13: it simulates ~6 points
    better than LRU); ``lru`` is the one to ask for, and only where a manager runs."""
    import inspect

    from toolkit.cli.serve import serve_command
    from toolkit.mme.manager import ModelManager
    from toolkit.serve_config import ServeConfig, ServeError
    from toolkit.server.endpoint import TritonEndpoint

    mgr = ModelManager(TritonEndpoint("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"), repository=tmp_path)
    assert isinstance(mgr.policy, GDSFPolicy) and mgr.policy.name == "gdsf"
    assert ServeConfig(repository=tmp_path).policy == "gdsf"
    assert inspect.signature(serve_command).parameters["policy"].default.default == "gdsf"
    assert ServeConfig(repository=tmp_path, gateway=False).policy == "gdsf"  # the default configures nothing
    with pytest.raises(ServeError, match=r"^--policy configure the MME manager"):
        ServeConfig(repository=tmp_path, gateway=False, policy="lru")
