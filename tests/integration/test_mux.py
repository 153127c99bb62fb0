"""Multiplexed hosting (issue #17) through the real front door: an embedded Triton, the gateway, boto3 and
tritonclient, a store of housing city models; no mocks.

What is checked: predictions through the host equal sklearn's; a TargetModel is authorized before the host sees it
(a denied one is 403 and never loaded); a client cannot pick another model through the host's parameter, nor name a
host (over gRPC too: test_mux_grpc); eviction, single flight and in-flight pins inside the host; a model
that raises (at load or at inference) fails alone; a killed host comes back and reloads its models lazily; SageMaker's
metrics and ``mme list`` show multiplexed models like the others.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from botocore.config import Config
from botocore.exceptions import ClientError
from tritonclient.utils import InferenceServerException

from examples.housing import generate
from examples.mme import _tar_dir, build_city_store, city_spec, expected_prices
from tests.waiting import wait_until
from toolkit import ServeConfig, Serving, start
from toolkit.loadtest.serverstats import parse_prometheus
from toolkit.mme.muxfiles import PREPARED
from toolkit.mme.muxspec import HOST_PREFIX
from toolkit.mme.muxstats import LOADS, MISSES, read_states
from toolkit.repository.generate import render_model_dir

FREE = {"http_port": 0, "grpc_port": 0, "metrics_port": 0, "gateway_port": 0, "gateway_grpc_port": 0}
OPS = "ops-key-mux"
AUTH = """
region: us-east-1
account: "123456789012"
principals:
  - name: alice
    access_keys: [{id: AKIDMUXALICE, secret: alice-mux-secret}]
    api_keys: [alice-mux-key]
    policy:
      - {Effect: Allow, Action: invoke, Resource: "*",
         Condition: {StringLike: {"sagemaker:TargetModel": ["housing_*"]}}}
      - {Effect: Deny, Action: invoke, Resource: "*",
         Condition: {StringLike: {"sagemaker:TargetModel": ["housing_Houston*"]}}}
  - name: ops
    api_keys: [ops-key-mux]
    policy: [{Effect: Allow, Action: [invoke, admin, metrics], Resource: "*"}]
"""
BOOM = """import numpy as np
def predict(inputs):
    raise RuntimeError("boom in predict")
"""
BROKEN = 'raise ImportError("broken at load")\n'
PLACEHOLDER = (
    "  - {name: placeholder, framework: numpy, artifact: %s, inputs: [{name: X, dtype: FP32, dims: [64]}],"
    " outputs: [{name: label, dtype: INT64, dims: [1]}]}\n"
)


def _numpy_artifact(src: str, name: str, store: Path, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    py = work / f"{name}.py"
    py.write_text(src)
    _tar_dir(
        render_model_dir(city_spec("X", py).model_copy(update={"name": name}), work / "m"), store / f"{name}.tar.gz"
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    """Six cities, nine renamed copies of NewYork's model, a model that raises, one that fails to
    load; a host holding 4 models; alice may invoke housing_* except Houston."""
    tmp = tmp_path_factory.mktemp("mux")
    store = tmp / "store"
    arts = build_city_store(store, n=6)
    for i in range(9):
        shutil.copy(arts["housing_NewYork_NY"], store / f"housing_copy_{i}.tar.gz")
    for name in ("housing_shm_a", "housing_shm_b", "housing_shm_c"):  # the tmpfs test's: prepared by nothing before
        shutil.copy(arts["housing_NewYork_NY"], store / f"{name}.tar.gz")
    _numpy_artifact(BOOM, "housing_boom", store, tmp / "w1")
    _numpy_artifact(BROKEN, "housing_broken", store, tmp / "w2")
    _numpy_artifact(BROKEN, "housing_flaky", store, tmp / "w3")  # fixed by test_a_failed_load_backs_off
    (tmp / "auth.yaml").write_text(AUTH)
    root = Path(__file__).resolve().parents[2]
    manifest = tmp / "m.yaml"
    manifest.write_text(
        "models:\n"
        + PLACEHOLDER % (root / "examples/artifacts/digits_mlp.py")
        + f"endpoints:\n  - {{name: cities, mode: multi-model, store: {store}, multiplex: true}}\n"
    )
    repo = tmp / "repo"
    repo.mkdir()
    cfg = ServeConfig(
        repository=repo,
        manifest=manifest,
        store=str(store),
        auth=tmp / "auth.yaml",
        multiplex_max_models=4,
        **FREE,
    )
    with start(cfg) as s:
        yield s


def _body(x: np.ndarray, params: dict[str, Any] | None = None) -> bytes:
    doc: dict[str, Any] = {
        "inputs": [{"name": "raw", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]
    }
    if params:
        doc["parameters"] = params
    return json.dumps(doc).encode()


def _runtime(s: Serving, key: str = "AKIDMUXALICE", secret: str = "alice-mux-secret") -> Any:
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=s.url,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 0}),
    )


def _invoke(rt: Any, target: str, x: np.ndarray) -> np.ndarray:
    r = rt.invoke_endpoint(EndpointName="cities", TargetModel=target, Body=_body(x), ContentType="application/json")
    out = json.loads(r["Body"].read())
    assert out["model_name"] == target.removesuffix(".tar.gz")  # the host is never shown
    return np.asarray(out["outputs"][0]["data"], dtype=np.float64)


def _host_doc(s: Serving) -> dict[str, Any]:
    """The host's state file, once it reflects the current process (written within ~1 s of a change)."""
    assert s.repository is not None
    docs = read_states(s.repository.parent / f".{s.repository.name}.tritonctl-mux")
    assert len(docs) == 1, docs
    return next(iter(docs.values()))


def _counts(s: Serving, name: str) -> list[float]:
    return list(_host_doc(s)["counts"].get(name, [0, 0, 0, 0, 0.0]))


def _metrics(s: Serving) -> dict[str, float]:
    """The gateway's /metrics as {'name{labels}': value} (ops may read them), read by prometheus_client's parser."""
    req = urllib.request.Request(s.url + "/metrics", headers={"x-api-key": OPS})
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read().decode()
    return {name + labels: v for (name, labels), v in parse_prometheus(text).items()}


def _triton_loaded(s: Serving) -> set[str]:
    assert s.triton is not None
    with httpclient.InferenceServerClient(s.triton.http) as c:
        return {m["name"] for m in c.get_model_repository_index() if m.get("state") == "READY"}


def test_boto3_and_tritonclient_are_served_by_one_host_with_sklearns_predictions(served: Serving) -> None:
    rt = _runtime(served)
    for city in ("NewYork_NY", "Chicago_IL"):
        x, _ = generate(city, 4, seed=3)
        want = expected_prices(city, x)
        assert np.allclose(_invoke(rt, f"housing_{city}.tar.gz", x), want, rtol=1e-4)
        inp = httpclient.InferInput("raw", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        with httpclient.InferenceServerClient(served.http) as c:
            res = c.infer(f"housing_{city}", [inp], headers={"x-api-key": "alice-mux-key"})
        assert np.allclose(res.as_numpy("price").reshape(-1), want, rtol=1e-4)
        assert res.get_response()["model_name"] == f"housing_{city}"
    loaded = _triton_loaded(served)
    assert not any(n.startswith("housing_") for n in loaded), loaded  # no stub of their own
    assert len([n for n in loaded if n.startswith(HOST_PREFIX)]) == 1


def test_a_store_tarball_is_prepared_as_one_file_the_host_loads(served: Serving) -> None:
    """Read in memory, not extracted (``toolkit.mme.muxfiles``): a renamed copy is one file, the gateway's
    descriptor then the artifact; no config to rename, no adapter ``model.py``; the host serves from it."""
    x, _ = generate("NewYork_NY", 2, seed=5)
    assert np.allclose(_invoke(_runtime(served), "housing_copy_8", x), expected_prices("NewYork_NY", x), rtol=1e-4)
    assert served.repository is not None
    root = served.repository.parent / f".{served.repository.name}.tritonctl-mux"
    head, _, artifact = (root / PREPARED / "housing_copy_8").read_bytes().partition(b"\n")
    assert json.loads(head)["artifact"] == "housing_NewYork_NY.py" and artifact.startswith(b'"""Housing price')
    assert not (root / "housing_copy_8").exists()
    with httpclient.InferenceServerClient(served.http) as c:  # the admin unload drops it; the next request prepares it
        c.unload_model("housing_copy_8", headers={"x-api-key": OPS})
    assert not (root / PREPARED / "housing_copy_8").exists()
    assert np.allclose(_invoke(_runtime(served), "housing_copy_8", x), expected_prices("NewYork_NY", x), rtol=1e-4)
    assert (root / PREPARED / "housing_copy_8").is_file()


def test_a_denied_target_model_is_403_through_the_host_and_never_loaded(served: Serving) -> None:
    x, _ = generate("Houston_TX", 2, seed=1)
    with pytest.raises(ClientError) as err:
        _invoke(_runtime(served), "housing_Houston_TX.tar.gz", x)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with httpclient.InferenceServerClient(served.http) as c, pytest.raises(InferenceServerException) as kerr:
        inp = httpclient.InferInput("raw", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        c.infer("housing_Houston_TX", [inp], headers={"x-api-key": "alice-mux-key"})
    assert kerr.value.status() == "403"
    _invoke(_runtime(served), "housing_Phoenix_AZ", x)  # something else, so the state file is rewritten
    wait_until(lambda: "housing_Phoenix_AZ" in _host_doc(served)["counts"], 10, "the host's state written")
    assert "housing_Houston_TX" not in _host_doc(served)["counts"]  # the host never heard of it


def test_a_client_cannot_pick_another_model_nor_name_the_host(served: Serving) -> None:
    """alice may run Chicago, not Houston: a parameter naming Houston is overwritten with the authorized name."""
    x, _ = generate("Chicago_IL", 3, seed=5)
    with httpclient.InferenceServerClient(served.http) as c:  # ops runs Houston: it is prepared and resident
        inp = httpclient.InferInput("raw", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        houston = c.infer("housing_Houston_TX", [inp], headers={"x-api-key": OPS}).as_numpy("price").reshape(-1)
    assert np.allclose(houston, expected_prices("Houston_TX", x), rtol=1e-4)
    rt = _runtime(served)
    body = _body(x, {"tritonctl_mux_model": "housing_Houston_TX"})
    r = rt.invoke_endpoint(
        EndpointName="cities", TargetModel="housing_Chicago_IL", Body=body, ContentType="application/json"
    )
    got = np.asarray(json.loads(r["Body"].read())["outputs"][0]["data"])
    assert np.allclose(got, expected_prices("Chicago_IL", x), rtol=1e-4)
    assert not np.allclose(got, expected_prices("Houston_TX", x), rtol=1e-2)
    host = next(n for n in _triton_loaded(served) if n.startswith(HOST_PREFIX))
    with httpclient.InferenceServerClient(served.http) as c:
        inp = httpclient.InferInput("raw", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        with pytest.raises(InferenceServerException) as err:  # even ops, who may invoke everything
            c.infer(host, [inp], headers={"x-api-key": OPS}, parameters={"tritonctl_mux_model": "housing_Chicago_IL"})
        assert err.value.status() == "404"
    for action in ("", "/ready", "/stats", "/config"):  # not even its readiness or statistics
        req = urllib.request.Request(f"{served.url}/v2/models/{host}{action}", headers={"x-api-key": OPS})
        with pytest.raises(urllib.error.HTTPError) as herr_http:
            urllib.request.urlopen(req, timeout=10)
        assert herr_http.value.code == 404, action
    assert served.grpc is not None
    with grpcclient.InferenceServerClient(served.grpc) as g:
        ginp = grpcclient.InferInput("raw", list(x.shape), "FP32")
        ginp.set_data_from_numpy(x)
        md = {"x-api-key": OPS}
        got = g.infer("housing_Chicago_IL", [ginp], headers=md).as_numpy("price")  # retargeted at the host
        assert got is not None and np.allclose(got.reshape(-1), expected_prices("Chicago_IL", x), rtol=1e-4)
        with pytest.raises(InferenceServerException) as herr:
            g.infer(host, [ginp], headers=md, parameters={"tritonctl_mux_model": "housing_Chicago_IL"})
        assert "NOT_FOUND" in str(herr.value.status())
        with pytest.raises(InferenceServerException) as rerr:
            g.is_model_ready(host, headers=md)
        assert "NOT_FOUND" in str(rerr.value.status())


def test_eviction_inside_the_host_then_a_reload_is_a_miss(served: Serving) -> None:
    rt = _runtime(served)
    x, _ = generate("NewYork_NY", 2, seed=9)
    want = expected_prices("NewYork_NY", x)
    for i in range(6):  # 6 copies through a host that holds 4
        assert np.allclose(_invoke(rt, f"housing_copy_{i}.tar.gz", x), want, rtol=1e-4)
    doc = wait_until(lambda: (d := _host_doc(served)) and "housing_copy_5" in d["resident"] and d, 10, "state")
    assert len(doc["resident"]) <= 4 and doc["evictions"] >= 2
    assert "housing_copy_0" not in doc["resident"]
    before = _counts(served, "housing_copy_0")
    assert np.allclose(_invoke(rt, "housing_copy_0", x), want, rtol=1e-4)
    wait_until(lambda: _counts(served, "housing_copy_0")[LOADS] == before[LOADS] + 1, 10, "copy_0 reloaded")
    assert _counts(served, "housing_copy_0")[MISSES] == before[MISSES] + 1


def test_a_burst_for_a_cold_model_loads_it_once(served: Serving) -> None:
    x, _ = generate("NewYork_NY", 1, seed=11)
    want = expected_prices("NewYork_NY", x)
    results: list[np.ndarray] = []
    errors: list[BaseException] = []
    go = threading.Barrier(16)

    def one() -> None:
        go.wait()
        try:
            results.append(_invoke(_runtime(served), "housing_copy_7", x))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 16
    assert all(np.allclose(r, want, rtol=1e-4) for r in results)
    c = wait_until(lambda: (c := _counts(served, "housing_copy_7")) and c[0] + c[1] == 16 and c, 10, "counted")
    assert c[LOADS] == 1


def test_a_model_that_raises_fails_alone(served: Serving) -> None:
    rt = _runtime(served)
    x, _ = generate("Chicago_IL", 2, seed=2)
    for target, text in (("housing_boom", "boom in predict"), ("housing_broken", "broken at load")):
        with pytest.raises(ClientError) as err:
            _invoke(rt, target, x)
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 424
        assert text in str(err.value)
        assert np.allclose(_invoke(rt, "housing_Chicago_IL", x), expected_prices("Chicago_IL", x), rtol=1e-4)


def test_metrics_and_mme_list_show_multiplexed_models(served: Serving) -> None:
    from typer.testing import CliRunner

    from toolkit.cli.mme import mme_app

    x, _ = generate("LosAngeles_CA", 1, seed=4)
    rt = _runtime(served)
    _invoke(rt, "housing_LosAngeles_CA", x)
    _invoke(rt, "housing_LosAngeles_CA", x)

    def scrape() -> str:
        req = urllib.request.Request(served.url + "/metrics", headers={"x-api-key": OPS})
        with urllib.request.urlopen(req, timeout=10) as r:
            return str(r.read().decode())

    text = wait_until(
        lambda: (t := scrape()) and 'model_cache_hits_total{model="housing_LosAngeles_CA"}' in t and t, 10, "hit"
    )
    lines = {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln and ln[0] != "#"}
    assert lines['tritonctl_mme_model_cache_hits_total{model="housing_LosAngeles_CA"}'] >= 1
    assert lines['tritonctl_mme_model_cache_misses_total{model="housing_LosAngeles_CA"}'] >= 1
    assert 0 < lines['tritonctl_mme_model_memory_bytes{model="housing_LosAngeles_CA"}'] <= 100_000
    assert 1 <= lines["tritonctl_mme_loaded_models"] <= 4  # the models inside the host (it holds 4), not the host
    assert lines["tritonctl_mme_model_loading_seconds_count"] >= 2
    assert served.repository is not None and served.triton is not None
    res = CliRunner().invoke(mme_app, ["list", "--url", served.triton.http_url, "-r", str(served.repository)])
    assert res.exit_code == 0, res.output
    row = next(ln for ln in res.output.splitlines() if ln.startswith("housing_LosAngeles_CA "))
    assert HOST_PREFIX in row and ("READY" in row or "UNLOADED" in row)
    host_row = next(ln for ln in res.output.splitlines() if ln.startswith(HOST_PREFIX))
    assert "READY" in host_row and host_row.split()[3] == "stub"


def test_a_scrape_counts_every_answer_already_given(served: Serving) -> None:
    """No waiting between the answers and the scrape: /metrics and ``mme list`` right after count each request
    (the host writes its counts once a second unasked; a scrape asks for them and waits for them)."""
    from typer.testing import CliRunner

    from toolkit.cli.mme import mme_app

    rt = _runtime(served)
    x, _ = generate("NewYork_NY", 1, seed=12)
    hits = 'tritonctl_mme_model_cache_hits_total{model="housing_copy_6"}'
    misses = 'tritonctl_mme_model_cache_misses_total{model="housing_copy_6"}'
    for round_ in range(3):
        before = _metrics(served)
        for _ in range(3):
            _invoke(rt, "housing_copy_6", x)
        after = _metrics(served)
        got = (after.get(hits, 0) - before.get(hits, 0), after.get(misses, 0) - before.get(misses, 0))
        assert got == ((2, 1) if round_ == 0 else (3, 0)), (round_, got)
    _invoke(rt, "housing_copy_6", x)
    assert served.repository is not None and served.triton is not None
    args = ["list", "--url", served.triton.http_url, "-r", str(served.repository), "--json"]
    res = CliRunner().invoke(mme_app, args)
    assert res.exit_code == 0, res.output
    row = next(r for r in json.loads(res.stdout) if r["name"] == "housing_copy_6")
    assert (row["state"], row["loads"], row["hits"]) == ("READY", 1, 9)


def test_a_failed_load_backs_off_until_its_files_change(served: Serving) -> None:
    """A model that raises at load is not loaded again by every request: for 1 s (then 2 s ...) the host answers
    its error at once; once the store has a working artifact and the model's files are prepared anew (unloaded
    through the repository API), the next request loads it, backoff or not."""
    rt = _runtime(served)
    x, _ = generate("NewYork_NY", 2, seed=13)
    failed = 'tritonctl_mme_model_load_failures_total{model="housing_flaky"}'

    def fails(note: str = "") -> None:
        with pytest.raises(ClientError) as err:
            _invoke(rt, "housing_flaky", x)
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 424
        assert "broken at load" in str(err.value) and note in str(err.value)

    fails()
    for _ in range(2):
        fails("not tried again")
    assert _metrics(served)[failed] == 1  # one load for three requests
    time.sleep(1.1)  # past the first backoff (1 s): tried again, then backing off for 2 s
    fails()
    fails("not tried again")
    assert _metrics(served)[failed] == 2
    assert served.config.store is not None
    store = Path(served.config.store)
    shutil.copy(store / "housing_NewYork_NY.tar.gz", store / "housing_flaky.tar.gz")
    req = urllib.request.Request(
        f"{served.url}/v2/repository/models/housing_flaky/unload", data=b"{}", headers={"x-api-key": OPS}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
    assert np.allclose(_invoke(rt, "housing_flaky", x), expected_prices("NewYork_NY", x), rtol=1e-4)
    assert _metrics(served)[failed] == 2


def test_a_killed_host_comes_back_and_reloads_lazily(served: Serving) -> None:
    rt = _runtime(served)
    x, _ = generate("Philadelphia_PA", 2, seed=6)
    want = expected_prices("Philadelphia_PA", x)
    assert np.allclose(_invoke(rt, "housing_Philadelphia_PA", x), want, rtol=1e-4)
    pid = int(_host_doc(served)["pid"])
    assert b"triton_python_backend_stub" in Path(f"/proc/{pid}/cmdline").read_bytes()
    os.kill(pid, signal.SIGKILL)

    def answers() -> bool:
        try:
            return bool(np.allclose(_invoke(rt, "housing_Philadelphia_PA", x), want, rtol=1e-4))
        except ClientError:
            return False

    wait_until(answers, 30, "the host serving again after kill -9", interval=0.2)
    doc = wait_until(
        lambda: (d := _host_doc(served)) and d["pid"] != pid and "housing_Philadelphia_PA" in d["counts"] and d,
        10,
        "a new host process that served the model",
    )
    assert doc["counts"]["housing_Philadelphia_PA"][LOADS] == 1  # loaded again, lazily, by the new host
    assert "housing_Chicago_IL" not in doc["resident"]  # nothing else was reloaded eagerly


def test_endpoint_multiplex_is_for_multi_model_endpoints() -> None:
    from toolkit.spec.models import EndpointSpec

    with pytest.raises(ValueError, match="multiplex: true is for multi-model endpoints"):
        EndpointSpec(name="e", mode="single", model="m", multiplex=True)
    with pytest.raises(ValueError, match="whose model cache is enabled"):
        EndpointSpec(name="e", mode="multi-model", store="/s", multiplex=True, model_cache_setting="Disabled")
    assert EndpointSpec(name="e", mode="multi-model", store="/s", multiplex=True).multiplex


def test_cost_aware_eviction_keeps_the_frequent_model(served: Serving, tmp_path: Path) -> None:
    """``--multiplex-policy gdsf`` in a host holding 2: a model asked 50 times outlives one asked once, though the
    latter was used more recently (LRU would evict the frequent one). ``--multiplex`` alone, over KServe."""
    assert served.config.store is not None
    repo = tmp_path / "repo"
    repo.mkdir()
    cfg = ServeConfig(
        repository=repo,
        store=served.config.store,
        multiplex=True,
        multiplex_max_models=2,
        multiplex_policy="gdsf",
        **FREE,
    )
    x, _ = generate("NewYork_NY", 1, seed=8)
    inp = httpclient.InferInput("raw", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    with start(cfg) as s, httpclient.InferenceServerClient(s.http) as c:
        for name in ["housing_copy_0"] * 50 + ["housing_copy_1", "housing_copy_2"]:
            got = c.infer(name, [inp]).as_numpy("price").reshape(-1)
            assert np.allclose(got, expected_prices("NewYork_NY", x), rtol=1e-4)
        doc = wait_until(lambda: (d := _host_doc(s)) and "housing_copy_2" in d["resident"] and d, 10, "state")
        assert set(doc["resident"]) == {"housing_copy_0", "housing_copy_2"} and doc["evictions"] == 1


def test_one_file_preparations_live_on_tmpfs_and_fall_back_to_disk_past_its_budget(
    served: Serving, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``.prepared`` is a link to this run's folder in /dev/shm (memory: bounded by its budget); once the budget
    is spent a model is prepared as a folder on disk, and the host serves it all the same. Last in the module: its
    loads evict models of the small host that earlier tests count on."""
    from toolkit.mme import mux

    assert served.repository is not None
    root = served.repository.parent / f".{served.repository.name}.tritonctl-mux"
    shm = (root / PREPARED).resolve()
    assert (root / PREPARED).is_symlink() and shm.parent == Path("/dev/shm") and shm.name.startswith("tritonctl-mux-")
    x, _ = generate("NewYork_NY", 2, seed=6)
    want = expected_prices("NewYork_NY", x)
    assert np.allclose(_invoke(_runtime(served), "housing_shm_a", x), want, rtol=1e-4)
    assert (shm / "housing_shm_a").is_file() and not (root / "housing_shm_a").exists()
    models = served.models
    assert isinstance(models, mux.MuxModels)
    assert models._one_file_bytes >= 4096 * len(models._one_file) > 0  # a page at least per file
    assert 0 < models._shm_budget <= mux.SHM_BUDGET  # at most half of what /dev/shm had free
    monkeypatch.setattr(models, "_shm_budget", models._one_file_bytes)  # spent
    assert np.allclose(_invoke(_runtime(served), "housing_shm_b", x), want, rtol=1e-4)
    assert not (shm / "housing_shm_b").exists()
    assert sorted(os.listdir(root / "housing_shm_b")) == sorted(["mux.json", "housing_NewYork_NY.py"])
    # /dev/shm smaller than it looked (a container's 64 MB, shared): ENOSPC on the one file, then disk for good
    monkeypatch.setattr(models, "_shm_budget", 1 << 30)
    real = mux.write_prepared

    def full(*args: object, **kw: object) -> tuple[str, int]:
        if args[-1] is True:  # one_file
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kw)

    monkeypatch.setattr(mux, "write_prepared", full)
    assert np.allclose(_invoke(_runtime(served), "housing_shm_c", x), want, rtol=1e-4)
    assert (root / "housing_shm_c" / "mux.json").is_file() and models._shm_budget == 0
