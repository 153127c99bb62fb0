"""A model host with several instances (``--multiplex-instances``): processes Triton hands requests to when idle.

Each instance keeps its own models and budgets (a model used through two instances is loaded in each), so the
SageMaker metrics must add the instances up: ModelCacheHit's hits and misses over all of them, LoadedModelCount as
distinct models, a model's memory as the sum of its copies, and ``mme list`` with each model's counts summed.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from examples.housing import generate
from examples.mme import build_city_store, expected_prices
from toolkit import ServeConfig, Serving, start
from toolkit.loadtest.serverstats import scrape
from toolkit.mme.muxstats import HITS, MISSES, read_states
from toolkit.serving import ServeError

FREE = {"http_port": 0, "grpc_port": 0, "metrics_port": 0, "gateway_port": 0, "gateway_grpc_port": 0}
CITIES = ["NewYork_NY", "Chicago_IL", "LosAngeles_CA", "Houston_TX"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    tmp = tmp_path_factory.mktemp("muxinst")
    store = tmp / "store"
    build_city_store(store, n=4)
    root = Path(__file__).resolve().parents[2]
    manifest = tmp / "m.yaml"
    manifest.write_text(
        "models:\n  - {name: placeholder, framework: numpy, artifact: %s, inputs: [{name: X, dtype: FP32, dims: [64]}],"
        " outputs: [{name: label, dtype: INT64, dims: [1]}]}\n"
        % (root / "examples/artifacts/digits_mlp.py")
        + f"endpoints:\n  - {{name: cities, mode: multi-model, store: {store}, multiplex: true}}\n"
    )
    (tmp / "repo").mkdir()
    cfg = ServeConfig(repository=tmp / "repo", manifest=manifest, store=str(store), multiplex_instances=2, **FREE)
    with start(cfg) as s:
        yield s


def _invoke(s: Serving, city: str, x: np.ndarray) -> np.ndarray:
    body = json.dumps({"inputs": [{"name": "raw", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()  # fmt: skip
    req = urllib.request.Request(
        f"{s.url}/endpoints/cities/invocations", body, headers={
            "Content-Type": "application/json", "X-Amzn-SageMaker-Target-Model": f"housing_{city}.tar.gz"},
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=60) as r:
        out = json.loads(r.read())
    assert out["model_name"] == f"housing_{city}"
    return np.asarray(out["outputs"][0]["data"], dtype=np.float64)


def _metrics(s: Serving) -> dict[tuple[str, str], float]:
    m = scrape(s.url + "/metrics")  # prometheus_client's parser, as the load-test report reads it
    assert m is not None
    return m


def test_two_instances_share_the_work_and_the_metrics_add_them_up(served: Serving) -> None:
    x = {c: generate(c, 3, seed=4)[0] for c in CITIES}
    errors: list[BaseException] = []
    per_thread = 25

    def client(k: int) -> None:
        try:
            for i in range(per_thread):
                city = CITIES[(k + i) % len(CITIES)]
                assert np.allclose(_invoke(served, city, x[city]), expected_prices(city, x[city]), rtol=1e-4)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:1]
    sent = 6 * per_thread

    m = _metrics(served)  # right after the answers: the scrape waits for every instance's counts
    counted = sum(
        m.get((f"tritonctl_mme_model_cache_{kind}_total", f'{{model="housing_{c}"}}'), 0.0)
        for c in CITIES
        for kind in ("hits", "misses")
    )
    assert counted == sent
    assert m[("tritonctl_mme_loaded_models", "")] == len(CITIES)  # distinct models, however many copies

    assert served.repository is not None
    docs = read_states(served.repository.parent / f".{served.repository.name}.tritonctl-mux")
    assert len(docs) == 2 and len({d["pid"] for d in docs.values()}) == 2, list(docs)  # two processes
    busy = [d for d in docs.values() if d["counts"]]
    assert len(busy) == 2, "Triton handed the concurrent requests to one instance only"
    per_doc: dict[str, list[Any]] = {}
    for d in docs.values():
        for name, c in d["counts"].items():
            per_doc.setdefault(name, []).append(c)
    for c in CITIES:  # a model's memory is what its copies in the instances hold together
        copies = sum(int(d["resident"].get(f"housing_{c}", 0)) for d in docs.values())
        assert m[("tritonctl_mme_model_memory_bytes", f'{{model="housing_{c}"}}')] == copies > 0
    rows = {r.name: r for r in served.models.states() if r.name.startswith("housing_")}  # type: ignore[union-attr]
    for name, cs in per_doc.items():  # mme list: each model's counts summed over the instances
        assert rows[name].hits == sum(int(c[HITS]) for c in cs)
        assert sum(int(c[HITS]) + int(c[MISSES]) for c in cs) > 0


def test_instances_are_bounded() -> None:
    for bad in (0, 65, True):
        with pytest.raises(ServeError, match="--multiplex-instances must be a whole number from 1 to 64"):
            ServeConfig(repository=Path("."), multiplex=True, multiplex_instances=bad)  # type: ignore[arg-type]
