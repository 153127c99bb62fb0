"""tritonctl mme plan: the smallest resident-model budget for a hit ratio, from replays of the trace through the
eviction policies (toolkit.mme.simulate), and the memory and instances it takes."""

from __future__ import annotations

import pytest

from toolkit.mme.simulate import simulate, zipf_trace
from toolkit.tune.mme_plan import plan_mme, smallest_budget
from toolkit.tune.space import TuneError


@pytest.mark.parametrize("policy", ["lru", "gdsf"])
@pytest.mark.parametrize("target", [0.5, 0.8, 0.9])
def test_smallest_budget_is_the_smallest(policy: str, target: float) -> None:
    trace = zipf_trace(100, 1.0, 5000, seed=3)
    k, hit, curve = smallest_budget(trace, target, policy)
    assert hit >= target and simulate(trace, k, policy).hit_ratio == hit
    assert k == 1 or simulate(trace, k - 1, policy).hit_ratio < target  # one fewer model misses the target
    assert dict(curve)[k] == hit


def test_unreachable_target_says_why() -> None:
    trace = ["a", "b", "c", "a"]  # 3 compulsory misses in 4 requests: at most 0.25
    with pytest.raises(TuneError, match=r"out of reach.*0\.250"):
        smallest_budget(trace, 0.5, "lru")


def test_plan_memory_and_instances() -> None:
    plan = plan_mme(target_hit_ratio=0.8, footprint_bytes=100 * 2**20, load_s=0.2, models=200, alpha=1.0,
                    requests=20_000, instance_memory_bytes=4 * 2**30, headroom=0.5)  # fmt: skip
    assert plan.memory_budget_bytes == plan.resident_models * 100 * 2**20
    assert plan.models_per_instance == 20  # 2 GiB for models / 100 MiB
    assert plan.instances == -(-plan.resident_models // 20)
    assert plan.cold_starts_per_1k == pytest.approx((1 - plan.hit_ratio) * 1000)
    assert plan.cold_seconds_per_1k == pytest.approx(plan.cold_starts_per_1k * 0.2)
    assert "resident models (lru)" in plan.summary() and "instances:" in plan.summary()
    higher = plan_mme(target_hit_ratio=0.9, footprint_bytes=100 * 2**20, load_s=0.2)
    assert higher.resident_models > plan.resident_models
    with pytest.raises(TuneError, match="does not fit"):
        plan_mme(target_hit_ratio=0.8, footprint_bytes=2**30, load_s=0.1, instance_memory_bytes=2**30)
    with pytest.raises(TuneError, match="between 0 and 1"):
        plan_mme(target_hit_ratio=1.0, footprint_bytes=1, load_s=0.1)
