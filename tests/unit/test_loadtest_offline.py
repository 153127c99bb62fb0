"""The load tester without a server: latency histograms against numpy, scenario parsing, the Zipf traffic mix, a gRPC
user without a host, and the server-statistics arithmetic (the real runs are tests/integration/test_loadtest.py)."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from toolkit.loadtest.hist import LatencyHistogram
from toolkit.loadtest.recorder import Recorder
from toolkit.loadtest.scenario import (
    LoadTestError,
    TargetMix,
    load_scenario,
    parse_duration,
    parse_scenario,
    zipf_weights,
)
from toolkit.loadtest.serverstats import diff_stats, mme_metrics, parse_prometheus

MODEL = "digits_logreg"
ROOT = Path(__file__).resolve().parents[2]


def _direct(samples: np.ndarray) -> LatencyHistogram:
    h = LatencyHistogram()
    for s in samples:
        h.record(float(s))
    return h


def test_histogram_percentiles_match_numpy_within_one_percent() -> None:
    rng = np.random.default_rng(1)
    samples = np.concatenate([rng.lognormal(-0.5, 0.4, 20000), rng.uniform(0.05, 0.2, 500)])  # ms, sub-ms heavy
    parts = [LatencyHistogram(), LatencyHistogram()]
    for i, s in enumerate(samples):
        parts[i % 2].record(float(s))
    h = LatencyHistogram.from_dict(json.loads(json.dumps(parts[0].to_dict()))).merge(parts[1])
    assert h.count == len(samples)
    assert math.isclose(h.mean_ms, float(samples.mean()), rel_tol=1e-9)
    for q in (50, 90, 95, 99):
        exact = float(np.percentile(samples, q, method="inverted_cdf"))
        assert abs(h.percentile(q) - exact) / exact < 0.01, (q, h.percentile(q), exact)
    assert h.percentile(100) == pytest.approx(samples.max())
    assert h.percentile(50) < 1.0  # sub-millisecond values are kept as such (Locust would say 1 ms)
    # the workers' hot path (raw appends, vectorised at hand-off) gives the same histograms and time series
    rec = Recorder(t0=1000.0, warmup=1.0)
    for i, s in enumerate(samples):
        rec.add("m", float(s), 1000.0 + 2.0 * i / len(samples), None)
    d = rec.to_dict()
    assert (
        LatencyHistogram.from_dict(d["series"]["0"]).count + LatencyHistogram.from_dict(d["series"]["1"]).count
        == h.count
    )
    window = LatencyHistogram.from_dict(d["per_target"]["m"])
    tail = samples[len(samples) // 2 :]
    assert window.count == len(tail) and window.buckets == _direct(tail).buckets


def test_scenarios_parse_and_bad_ones_are_rejected_clearly() -> None:
    assert parse_duration("1m30s") == 90 and parse_duration("500ms") == 0.5 and parse_duration(7) == 7
    with pytest.raises(LoadTestError, match="bad duration"):
        parse_duration("10 parsecs")
    sc = load_scenario("single_model")
    assert sc.targets[0].model == MODEL
    with pytest.raises(LoadTestError, match="targets or mme"):
        parse_scenario({"name": "x"})
    with pytest.raises(LoadTestError, match=r"shape.*rps"):
        parse_scenario({"name": "x", "targets": [{"model": "m"}], "shape": {"kind": "rate"}})
    with pytest.raises(LoadTestError, match="no scenario"):
        load_scenario("no_such_scenario")
    w = zipf_weights(4, 1.0)
    assert sum(w) == pytest.approx(1.0) and w[0] == pytest.approx(2 * w[1]) and w[0] == pytest.approx(4 * w[3])


def test_mme_traffic_mix_follows_zipf_weights() -> None:
    """Scenario -> expanded targets -> the run's TargetMix sends each model its Zipf share (seeded draws)."""
    sc = parse_scenario({
        "name": "mix", "protocol": "sagemaker",
        "mme": {"endpoint": "mme", "models": "m{i}.tar.gz", "n": 5, "alpha": 1.2,
                "template": {"model": "m0", "batched": False, "inputs": {"X": {"shape": [2]}}}},
    })  # fmt: skip
    targets = sc.expanded_targets()
    assert [t.target_model for t in targets] == [f"m{i}.tar.gz" for i in range(5)]
    mix = TargetMix([t.weight for t in targets], rng=random.Random(1234))
    n = 50_000
    counts = np.bincount([mix.pick() for _ in range(n)], minlength=len(targets))
    np.testing.assert_allclose(counts / n, zipf_weights(5, 1.2), atol=0.01)  # 0.01 is > 4 standard errors each
    assert TargetMix([3.0]).pick() == 0
    assert {TargetMix([0.0, 1.0]).pick() for _ in range(100)} == {1}
    with pytest.raises(LoadTestError, match="weights"):
        TargetMix([0.0, 0.0])


def test_grpc_user_without_host_stops_the_test_with_a_message() -> None:
    """As Locust's HTTP users do; it used to die in on_start on None.split (locust patches gevent: a subprocess)."""
    code = (
        "from locust.env import Environment\n"
        "from locust.exception import StopTest\n"
        "from toolkit.loadtest.users import configure\n"
        "cls = configure('grpc', [], True, '', None, 1.0)\n"
        "try:\n"
        "    cls(Environment(user_classes=[cls])).on_start()\n"
        "except StopTest as e:\n"
        "    print('StopTest:', e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0 and "StopTest: the gRPC user needs a host" in r.stdout, r.stderr[-2000:]


def test_server_stats_diff_and_mme_metrics() -> None:
    before = {
        "m": {
            "inference_count": 10,
            "execution_count": 5,
            "success": [10, 10_000],
            "fail": [0, 0],
            "queue": [10, 1_000],
            "compute_input": [10, 0],
            "compute_infer": [10, 5_000],
            "compute_output": [10, 0],
        }
    }
    after = {
        "m": {
            "inference_count": 30,
            "execution_count": 10,
            "success": [30, 50_000],
            "fail": [1, 5],
            "queue": [30, 21_000],
            "compute_input": [30, 2_000],
            "compute_infer": [30, 45_000],
            "compute_output": [30, 4_000],
        },
        "idle": {"inference_count": 0, "execution_count": 0, "success": [0, 0], "fail": [0, 0]},
    }
    d = diff_stats(before, after)
    assert list(d) == ["m"]
    assert d["m"]["requests"] == 20 and d["m"]["failed"] == 1 and d["m"]["avg_batch"] == 4.0
    assert d["m"]["queue_us"] == pytest.approx(1.0) and d["m"]["compute_infer_us"] == pytest.approx(2.0)
    # an MME eviction + reload restarts Triton's counters: the window is then the new counters alone
    reloaded = {
        "m": {**after["m"], "success": [4, 8_000], "execution_count": 2, "inference_count": 4, "queue": [4, 4_000]}
    }
    d = diff_stats(before, reloaded)
    assert d["m"]["requests"] == 4 and d["m"]["avg_batch"] == 2.0 and d["m"]["queue_us"] == pytest.approx(1.0)
    # reloaded, and its new count happens to equal the old one: other time in it says so (not "no traffic")
    same_count = {"m": {**after["m"], "success": [before["m"]["success"][0], 9_000], "execution_count": 6}}
    d = diff_stats(before, same_count)
    assert d["m"]["requests"] == before["m"]["success"][0]
    text_a = 'tritonctl_mme_model_cache_hits_total{model="a"} 3\ntritonctl_mme_model_invocations_total{model="a"} 4\n'
    text_b = (  # as prometheus_client writes it: HELP/TYPE lines, counters with _total, label values escaped
        "# HELP tritonctl_mme_model_cache_hits_total Invocations whose model was already loaded\n"
        "# TYPE tritonctl_mme_model_cache_hits_total counter\n"
        'tritonctl_mme_model_cache_hits_total{model="a"} 10.0\ntritonctl_mme_model_cache_hits_total{model="b"} 5.0\n'
        'tritonctl_mme_model_invocations_total{model="a"} 12\ntritonctl_mme_model_invocations_total{model="b"} 7\n'
        'tritonctl_mme_model_invocations_total{model="q\\"x"} 1\n'
        "# TYPE tritonctl_mme_model_loading_seconds histogram\n"
        'tritonctl_mme_model_loading_seconds_bucket{le="+Inf"} 2.0\n'
        "tritonctl_mme_model_loading_seconds_count 2\ntritonctl_mme_model_loading_seconds_sum 0.4\n"
    )
    m = mme_metrics(parse_prometheus(text_a), parse_prometheus(text_b))
    assert m["hits"] == 12 and m["invocations"] == 16 and m["hit_ratio"] == pytest.approx(12 / 16)
    assert m["loads"] == 2 and m["avg_loading_time_ms"] == pytest.approx(200.0)
    assert parse_prometheus(text_b)[("tritonctl_mme_model_invocations_total", '{model="q"x"}')] == 1
    # text the parser rejects: what came before it is kept, nothing after
    broken = parse_prometheus('a_total 1\nb{model="unterminated} 2\nc 3\n')
    assert broken == {("a_total", ""): 1.0}
