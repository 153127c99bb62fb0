"""The MME Zipf scenario through the real gateway (SageMaker runtime API, SigV4 verified) and the real MME manager.

Its own Triton over an empty repository; a LocalStore of 6 tiny python models; the manager keeps at most 3 loaded, so
Zipf traffic causes misses, loads and evictions. The report's MME section comes from the manager's Prometheus text
(the gateway admin /metrics); it must agree with the manager's own per-model state and with what the client sent.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from typing import Any

import pytest

from toolkit.gateway.auth import AuthConfig, Principal
from toolkit.gateway.core import GatewayOptions
from toolkit.gateway.server import Gateway, GatewayThread
from toolkit.loadtest.runner import RunOptions, run_loadtest
from toolkit.loadtest.scenario import parse_scenario, zipf_weights
from toolkit.mme.manager import ModelManager
from toolkit.mme.stores import LocalStore
from toolkit.repository.samples import write_scale_model
from toolkit.server import EmbeddedTriton, ServerOptions
from toolkit.spec.models import EndpointSpec

N_MODELS = 6
KEY_ID, SECRET = "AKIDLOADTEST", "loadtest-secret"
API_KEY = "loadtest-api-key"


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


@pytest.fixture(scope="module")
def mme_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("lt_mme")
    store, repo = base / "store", base / "repo"
    repo.mkdir()
    for i in range(N_MODELS):
        write_scale_model(store, f"m{i:02d}")
    server = EmbeddedTriton(ServerOptions(repository=repo, workdir=base, log_file=base / "triton.log"))
    server.start(timeout=90)
    manager = ModelManager(server.endpoint, repository=repo, store=LocalStore(store), max_models=3)
    auth = AuthConfig(
        principals=[Principal("loadtester")],
        access_keys={KEY_ID: ("loadtester", SECRET)},
        api_keys={hashlib.sha256(API_KEY.encode()).hexdigest(): "loadtester"},
    )
    opts = GatewayOptions(http_port=0, admin_port=0, repository=repo, auth=auth,
                          endpoints=[EndpointSpec(name="mme", mode="multi-model", store=str(store))])  # fmt: skip
    gw = GatewayThread(Gateway(opts, server.endpoint, models=manager))
    addrs = gw.start()
    yield {"server": server, "manager": manager, "gateway": addrs}
    gw.stop()
    server.stop()


def test_zipf_hit_ratio_agrees_with_manager_metrics(
    mme_gateway: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)  # the workers sign with these (the gateway verifies SigV4)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("TRITONCTL_API_KEY", API_KEY)  # the runner scrapes the gateway's /metrics with it
    sc = parse_scenario({
        "name": "mme_zipf_test",
        "protocol": "sagemaker",
        "encoding": "json",
        "mme": {"endpoint": "mme", "models": "m{i:02d}.tar.gz", "n": N_MODELS, "alpha": 1.3, "cold_threshold_ms": 60,
                "template": {"model": "m00", "batched": False, "inputs": {"X": {"shape": [2]}}}},
    })  # fmt: skip
    gw, manager = mme_gateway["gateway"], mme_gateway["manager"]
    triton_url = mme_gateway["server"].endpoint.http_url
    opts = RunOptions(scenario=sc, target=gw.http_url, triton_url=triton_url, mme_metrics_url=f"{gw.admin_url}/metrics",
                      users=2, duration=4.0)  # fmt: skip
    report = run_loadtest(opts)
    client = report["client"]
    assert client["total"]["errors"] == 0, client["errors"]
    sent = client["total"]["count"]
    assert sent > 10
    per = client["per_target"]
    # Zipf: the most popular model carries p0 of the traffic. The draws are random, so "m00 got the most" is not
    # guaranteed (it failed ~3 % of runs at ~25 requests); a count below the 1e-6 binomial tail is a wrong mix. The
    # exact mix is checked with many seeded draws in test_loadtest.py.
    p0 = zipf_weights(N_MODELS, 1.3)[0]
    got = per["m00.tar.gz"]["count"]
    assert binomial_tail(got, sent, p0) > 1e-6, (got, sent, p0)
    mme = report["mme"]
    states = {s.name: s for s in manager.states()}
    hits = sum(s.hits for s in states.values())
    loads = sum(s.loads for s in states.values())
    # the manager was fresh: its lifetime counters are the window's, and every client request went through it
    assert abs(mme["invocations"] - sent) <= 2
    assert mme["hits"] == hits and mme["loads"] == loads
    assert mme["hit_ratio"] == pytest.approx(hits / (hits + mme["misses"]))
    assert 0 < mme["hit_ratio"] < 1 and mme["loads"] > 2 and mme["evictions"] > 0
    assert mme["avg_loading_wait_ms"] > 0 and mme["misses"] > 0
    # the client's latency-based estimate (> cold_threshold_ms = waited for a load) is in the same range
    assert abs(mme["client_hit_ratio_estimate"] - mme["hit_ratio"]) < 0.2, mme
    # the server side saw the same models
    assert set(report["server"]) <= {f"m{i:02d}" for i in range(N_MODELS)}
    # Triton keeps statistics only for loaded models: every model resident at the end is in the breakdown
    resident = {name for name, st in states.items() if manager.is_resident(name) and st.hits + st.loads > 0}
    assert resident and resident <= set(report["server"]), (resident, set(report["server"]))
