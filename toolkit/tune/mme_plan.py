"""Sizing a multi-model endpoint (``tritonctl mme plan``): how many models must stay resident for a target hit ratio,
the memory that takes, and how many instances hold it.

The hit ratio for a given number of resident models comes from replaying the request trace (a recorded one, or a Zipf
draw over the model count) through the same eviction policies the live manager runs (``toolkit.mme.simulate``), so
the recommendation is the policy's, not a formula's. LRU is a stack algorithm (its hit ratio never falls when the
budget grows), which makes the smallest sufficient budget a binary search; for GDSF the result is checked once more.

Footprint and load time are measured when asked (``measure_model``: the model loaded into an embedded Triton a few
times, its python stubs' RSS read as the MME manager reads it) or given. Instances: a SageMaker multi-model endpoint
routes a model's requests to the instances that hold it, so the resident set is spread over them and the instance
count is the resident set's memory over what one instance has for models (after headroom).
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from toolkit.mme.simulate import simulate, zipf_trace
from toolkit.tune.space import TuneError


@dataclass(frozen=True)
class MmePlan:
    policy: str
    target_hit_ratio: float
    requests: int
    distinct_models: int
    resident_models: int  # the smallest budget (models resident at once) that reaches the target
    hit_ratio: float
    footprint_bytes: int
    memory_budget_bytes: int
    load_s: float
    cold_starts_per_1k: float
    cold_seconds_per_1k: float
    models_per_instance: int | None
    instances: int | None
    curve: tuple[tuple[int, float], ...]  # (resident models, hit ratio) points the search evaluated

    def summary(self) -> str:
        lines = [
            f"{self.resident_models} resident models ({self.policy}) reach hit ratio {self.hit_ratio:.3f} "
            f"(target {self.target_hit_ratio:g}; {self.distinct_models} distinct models, {self.requests} requests)",
            f"memory budget {_gib(self.memory_budget_bytes)} at {_mib(self.footprint_bytes)} per model "
            f"(--memory-budget / --max-models {self.resident_models})",
            f"cold starts: {self.cold_starts_per_1k:.0f} per 1000 requests, {self.cold_seconds_per_1k:.1f} s of "
            f"loading per 1000 requests at {self.load_s * 1000:.0f} ms per load",
        ]
        if self.instances is not None:
            lines.append(f"instances: {self.instances} ({self.models_per_instance} models fit on one)")
        return "\n".join(lines)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def smallest_budget(trace: Sequence[str], target: float, policy: str) -> tuple[int, float, list[tuple[int, float]]]:
    """The fewest resident models whose replay reaches ``target`` (binary search; see the module docstring)."""
    distinct = len(set(trace))
    curve: dict[int, float] = {}

    def hit(k: int) -> float:
        if k not in curve:
            curve[k] = simulate(trace, k, policy).hit_ratio
        return curve[k]

    if hit(distinct) < target:
        best = hit(distinct)
        raise TuneError(
            f"hit ratio {target:g} is out of reach: with every one of the {distinct} models resident it is {best:.3f} "
            "(each model's first request misses)"
        )
    lo, hi = 1, distinct
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if hit(mid) >= target else (mid + 1, hi)
    while lo < distinct and hit(lo) < target:  # non-stack policies (GDSF): step up until it holds
        lo += 1
    return lo, hit(lo), sorted(curve.items())


def plan_mme(
    *,
    target_hit_ratio: float,
    footprint_bytes: int,
    load_s: float,
    models: int = 200,
    alpha: float = 1.0,
    requests: int = 20_000,
    trace: Sequence[str] | None = None,
    policy: str = "lru",
    instance_memory_bytes: int | None = None,
    headroom: float = 0.8,
    seed: int = 0,
) -> MmePlan:
    if not 0 < target_hit_ratio < 1:
        raise TuneError(f"--hit-ratio must be between 0 and 1, got {target_hit_ratio}")
    if footprint_bytes <= 0 or load_s < 0:
        raise TuneError("the footprint must be positive and the load time not negative")
    reqs = list(trace) if trace is not None else zipf_trace(models, alpha, requests, seed)
    k, hit, curve = smallest_budget(reqs, target_hit_ratio, policy)
    per_instance = instances = None
    if instance_memory_bytes is not None:
        per_instance = int(instance_memory_bytes * headroom // footprint_bytes)
        if per_instance < 1:
            raise TuneError(f"one model ({_mib(footprint_bytes)}) does not fit an instance's {headroom:.0%} share")
        instances = math.ceil(k / per_instance)
    misses = (1 - hit) * 1000
    return MmePlan(
        policy, target_hit_ratio, len(reqs), len(set(reqs)), k, hit, footprint_bytes, k * footprint_bytes, load_s,
        misses, misses * load_s, per_instance, instances, tuple(curve),
    )  # fmt: skip


def measure_model(manifest: Path, model: str, loads: int = 3) -> tuple[int, float]:
    """(footprint bytes, median load seconds) of a manifest model on an embedded Triton: loaded and unloaded
    ``loads`` times; the footprint is its python stubs' RSS once loaded (how the MME manager measures it)."""
    from toolkit.mme.footprint import stub_rss
    from toolkit.repository.generate import generate_repository
    from toolkit.server import EmbeddedTriton, ServerOptions, TritonAdmin
    from toolkit.spec import load_manifest

    with tempfile.TemporaryDirectory(prefix="tritonctl-mme-plan-") as tmp:
        repo = Path(tmp) / "repo"
        generate_repository(load_manifest(manifest), repo)
        if not (repo / model).is_dir():
            raise TuneError(f"{model!r} is not a model of {manifest}")
        with EmbeddedTriton(ServerOptions(repository=repo, workdir=Path(tmp))) as server:
            admin = TritonAdmin(server.endpoint, timeout=120)
            times, sizes = [], []
            for _ in range(loads):
                t0 = time.monotonic()
                admin.load(model)
                times.append(time.monotonic() - t0)
                time.sleep(0.5)  # let the stub finish importing before its RSS is read
                sizes.append(stub_rss(repo, [model]).get(model, 0))
                admin.unload(model)
                while model in admin.loaded():
                    time.sleep(0.05)
    if not max(sizes):
        raise TuneError(f"no python stub found for {model}: cannot measure its footprint (give --footprint)")
    return int(statistics.median(sizes)), statistics.median(times)
