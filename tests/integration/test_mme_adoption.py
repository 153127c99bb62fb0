"""Every model Triton holds counts against the manager's budgets, however it was loaded: a generated router loads
its targets itself (pb_utils.load_model), behind the manager's back. The review saw Triton hold 7 models while the
manager, with --max-models 3, reported 3."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from waiting import wait_until

from toolkit.gateway.core import GatewayOptions
from toolkit.gateway.server import Gateway, GatewayThread
from toolkit.mme.manager import ModelManager
from toolkit.server import EmbeddedTriton, ServerOptions, TritonAdmin
from toolkit.server.client import names_in_state

CITIES = ["Chicago_IL", "Houston_TX", "LosAngeles_CA", "NewYork_NY"]


@pytest.fixture(scope="module")
def stack(
    example_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, ModelManager, TritonAdmin]]:
    work = tmp_path_factory.mktemp("adopt")
    triton = EmbeddedTriton(ServerOptions(repository=example_repo, workdir=work, log_file=work / "t.log"))
    triton.start(timeout=90)
    manager = ModelManager(triton.endpoint, repository=example_repo, max_models=3, index_sync_s=0.3)
    runner = GatewayThread(Gateway(GatewayOptions(http_port=0), triton.endpoint, models=manager))
    admin = TritonAdmin(triton.endpoint)
    try:
        yield runner.start().http_url, manager, admin
    finally:
        runner.stop()
        admin.close()
        triton.stop()


def test_models_a_router_loads_itself_count_against_the_budget(stack: tuple[str, ModelManager, TritonAdmin]) -> None:
    url, manager, admin = stack
    x = np.random.default_rng(0).random((1, 10), dtype=np.float32)
    for city in CITIES:  # each call makes the router load one more city model itself
        body = {"inputs": [{"name": "features", "shape": [1, 10], "datatype": "FP32", "data": x.ravel().tolist()}],
                "parameters": {"city": city}}  # fmt: skip
        req = urllib.request.Request(f"{url}/v2/models/housing_by_city/infer", data=json.dumps(body).encode())
        with urllib.request.urlopen(req, timeout=60) as r:
            out = {o["name"]: o["data"] for o in json.loads(r.read())["outputs"]}
        assert out["model"] == [f"housing_{city}"]

    def settled() -> bool:
        in_triton = names_in_state(admin.index())
        resident = {s.name for s in manager.states() if s.state == "READY"}
        return len(in_triton) <= 3 and resident == in_triton

    wait_until(settled, 20, "Triton's loaded models within the budget of 3 and known to the manager")
    assert len(names_in_state(admin.index())) <= 3
