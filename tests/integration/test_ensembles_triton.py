"""Ensemble patterns end to end on a real embedded Triton, and the offline DAG rules next to Triton's own verdict.

One Triton for the module, over a repository generated from the example manifest (plus a weighted-mean ensemble built
from an inline spec and a toy identity model); broken ensembles are written into the same repository by each test and
loaded through the repository API, so every offline rule is shown against what Triton itself does.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from examples.digits import accuracy, load_split
from toolkit.ensembles import check_ensemble_configs
from toolkit.ensembles.build import VERSION_KEEP
from toolkit.errors import InferenceError
from toolkit.repository.generate import GeneratedModel, generate_repository, generated_models, write_model
from toolkit.server import EmbeddedTriton, ServerOptions, TritonAdmin
from toolkit.spec import load_manifest
from toolkit.spec.models import EnsembleSpec

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ["digits_logreg", "digits_mlp", "digits_forest"]
CITIES = ["NewYork_NY", "LosAngeles_CA", "Chicago_IL", "Houston_TX"]
RAW = np.array(
    [
        [2001, 2100, 3, 2, 0.4, 1, 1, 0],
        [1975, 3400, 5, 3, 1.2, 2, 0, 1],
        [2015, 1200, 2, 1, 0.1, 0, 1, 1],
        [1960, 4200, 6, 4, 1.9, 3, 0, 0],
        [1999, 2600, 4, 2, 0.7, 2, 1, 0],
    ],
    dtype=np.float32,
)
IDENTITY = b"""import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy())])
            for r in requests
        ]
"""


def _identity_config() -> mc.ModelConfig:
    cfg = mc.ModelConfig(name="toy_identity", backend="python", max_batch_size=8)
    cfg.input.add(name="x", data_type=mc.TYPE_FP32, dims=[4])
    cfg.output.add(name="y", data_type=mc.TYPE_FP32, dims=[4])
    return cfg


@pytest.fixture(scope="module")
def manifest():  # type: ignore[no-untyped-def]
    m = load_manifest(ROOT / "tritonctl.yaml")
    m.ensembles.append(
        EnsembleSpec(
            name="digits_weighted",
            pattern="aggregate",
            models=DIGITS,
            options={"method": "weighted_mean", "weights": [3, 2, 1]},
        )
    )
    routes = {c: f"housing_{c}" for c in CITIES}  # a parameter router that waits 100 ms to batch requests
    m.ensembles.append(
        EnsembleSpec(
            name="housing_by_city_batched",
            pattern="dynamic",
            options={"by": "parameter", "key": "city", "routes": routes, "batch_delay_us": 100_000},
        )
    )
    return m


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, manifest) -> Path:  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("ensemble_repo")
    generate_repository(manifest, out)
    write_model(GeneratedModel("toy_identity", _identity_config(), {"1/model.py": IDENTITY}), out)
    return out


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedTriton]:
    work = tmp_path_factory.mktemp("ensemble_triton")
    srv = EmbeddedTriton(ServerOptions(repository=repo, workdir=work, log_file=work / "triton.log"))
    srv.start(timeout=90)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def admin(server: EmbeddedTriton) -> Iterator[TritonAdmin]:
    a = TritonAdmin(server.endpoint)
    yield a
    a.close()


@pytest.fixture(scope="module")
def client(server: EmbeddedTriton) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(server.endpoint.http, network_timeout=120)
    yield c
    c.close()


def infer(
    client: httpclient.InferenceServerClient, model: str, arrays: dict[str, np.ndarray], **params: Any
) -> dict[str, np.ndarray]:
    inputs = []
    for name, arr in arrays.items():
        dtype = "BYTES" if arr.dtype == np.object_ else {np.float32: "FP32", np.int64: "INT64"}[arr.dtype.type]
        i = httpclient.InferInput(name, list(arr.shape), dtype)
        i.set_data_from_numpy(arr)
        inputs.append(i)
    res = client.infer(model, inputs, parameters=params or None)
    return {o["name"]: res.as_numpy(o["name"]) for o in res.get_response()["outputs"]}


def cities(*names: str) -> np.ndarray:
    return np.array([[n.encode()] for n in names], dtype=np.object_)


# ------------------------------------------------------------------------------------------------ digits ----------
def test_digits_scatter_gather_and_aggregates_beat_best_single(
    admin: TritonAdmin, client: httpclient.InferenceServerClient
) -> None:
    for name in ["digits_scatter_gather", "digits_vote", "digits_mean", "digits_weighted"]:
        admin.load(name)  # explicit mode loads the composing models too
    _, x_test, _, y_test = load_split()
    got: dict[str, list[np.ndarray]] = {}
    probs: dict[str, list[np.ndarray]] = {m: [] for m in DIGITS}
    for lo in range(0, len(x_test), 64):
        x = x_test[lo : lo + 64]
        for m in DIGITS:
            single = infer(client, m, {"X": x})
            got.setdefault(m, []).append(single["label"].reshape(-1))
            probs[m].append(single["probabilities"])
        sg = infer(client, "digits_scatter_gather", {"X": x})
        for m in DIGITS:  # every model's output, namespaced, equals calling the model itself
            np.testing.assert_allclose(sg[f"{m}__probabilities"], probs[m][-1], rtol=1e-6)
        stacked = np.stack([probs[m][-1] for m in DIGITS])
        winner = np.argmax(stacked.max(axis=2), axis=0)
        assert [s.decode() for s in sg["model"].reshape(-1)] == [DIGITS[k] for k in winner]
        np.testing.assert_allclose(sg["confidence"].reshape(-1), stacked.max(axis=2).max(axis=0), rtol=1e-6)
        got.setdefault("digits_scatter_gather", []).append(sg["label"].reshape(-1))
        for ens in ["digits_vote", "digits_mean", "digits_weighted"]:
            got.setdefault(ens, []).append(infer(client, ens, {"X": x})["label"].reshape(-1))
        mean = infer(client, "digits_mean", {"X": x})["probabilities"]
        np.testing.assert_allclose(mean, stacked.mean(axis=0), rtol=1e-5, atol=1e-6)
        weighted = infer(client, "digits_weighted", {"X": x})["probabilities"]
        np.testing.assert_allclose(weighted, np.tensordot([0.5, 1 / 3, 1 / 6], stacked, axes=1), rtol=1e-5, atol=1e-6)
    acc = {name: accuracy(np.concatenate(parts), y_test) for name, parts in got.items()}
    print("held-out accuracy:", {k: round(v, 4) for k, v in sorted(acc.items())})
    best = max(acc[m] for m in DIGITS)
    for ens in ["digits_scatter_gather", "digits_vote", "digits_mean", "digits_weighted"]:
        assert acc[ens] >= best - 0.01, (ens, acc)


def test_majority_vote_tie_break_is_the_earliest_model(
    admin: TritonAdmin, client: httpclient.InferenceServerClient
) -> None:
    admin.load("digits_vote_aggregator")
    labels = {"in_0": [[1], [2], [5]], "in_1": [[2], [3], [6]], "in_2": [[3], [3], [5]]}
    out = infer(client, "digits_vote_aggregator", {k: np.array(v, dtype=np.int64) for k, v in labels.items()})
    assert out["label"].reshape(-1).tolist() == [1, 3, 5]  # all differ -> model 0; else the majority
    assert out["votes"].reshape(-1).tolist() == [1, 2, 2]


# ------------------------------------------------------------------------------------------------ housing ---------
def _by_hand(client: httpclient.InferenceServerClient, city: str, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    feats = infer(client, "housing_preprocess", {"raw": raw})["features"]
    price = infer(client, f"housing_{city}", {"features": feats})["price"]
    dollars = infer(client, "housing_postprocess", {"price": price})["price_dollars"]
    return price, dollars


def test_housing_pipeline_equals_models_called_in_turn(
    admin: TritonAdmin, client: httpclient.InferenceServerClient
) -> None:
    admin.load("housing_pipeline_Chicago_IL")
    out = infer(client, "housing_pipeline_Chicago_IL", {"raw": RAW})
    price, dollars = _by_hand(client, "Chicago_IL", RAW)
    assert out["price_dollars"].dtype == np.int64
    np.testing.assert_array_equal(out["price_dollars"], dollars)
    np.testing.assert_array_equal(out["price_dollars"], np.rint(price.astype(np.float64)).astype(np.int64))


def test_dynamic_by_parameter_loads_lazily_and_rejects_unknown_city(
    admin: TritonAdmin, client: httpclient.InferenceServerClient
) -> None:
    admin.load("housing_preprocess")
    admin.load("housing_by_city")
    for c in CITIES:
        if admin.model_ready(f"housing_{c}"):
            admin.unload(f"housing_{c}")
    feats = infer(client, "housing_preprocess", {"raw": RAW})["features"]
    for city in CITIES:
        out = infer(client, "housing_by_city", {"features": feats}, city=city)
        assert admin.model_ready(f"housing_{city}")  # loaded by the router (pb_utils.load_model)
        np.testing.assert_array_equal(out["price"], infer(client, f"housing_{city}", {"features": feats})["price"])
        assert {s.decode() for s in out["model"].reshape(-1)} == {f"housing_{city}"}
    with pytest.raises(InferenceServerException) as exc:
        infer(client, "housing_by_city", {"features": feats}, city="Paris_FR")
    msg = str(exc.value)
    assert "unknown route 'Paris_FR'" in msg and all(c in msg for c in CITIES)
    with pytest.raises(InferenceServerException, match="missing request parameter 'city'"):
        infer(client, "housing_by_city", {"features": feats})


def test_dynamic_by_field_splits_a_mixed_batch_and_merges_in_order(
    admin: TritonAdmin, client: httpclient.InferenceServerClient
) -> None:
    admin.load("housing_city_pipeline")
    admin.load("housing_by_city_field")
    rows = ["Houston_TX", "NewYork_NY", "Houston_TX", "Chicago_IL", "LosAngeles_CA"]
    feats = infer(client, "housing_preprocess", {"raw": RAW})["features"]
    routed = infer(client, "housing_by_city_field", {"features": feats, "city": cities(*rows)})
    piped = infer(client, "housing_city_pipeline", {"raw": RAW, "city": cities(*rows)})
    for city in set(rows):  # by hand: each city's rows, in order, through its model (as the router groups them)
        idx = [i for i, c in enumerate(rows) if c == city]
        price = infer(client, f"housing_{city}", {"features": feats[idx]})["price"]
        dollars = infer(client, "housing_postprocess", {"price": price})["price_dollars"]
        np.testing.assert_array_equal(routed["price"][idx], price)
        np.testing.assert_array_equal(piped["price_dollars"][idx], dollars)
        assert {m.decode() for m in routed["model"][idx, 0]} == {m.decode() for m in piped["model"][idx, 0]}
        assert {m.decode() for m in routed["model"][idx, 0]} == {f"housing_{city}"}
    with pytest.raises(InferenceServerException, match="unknown route 'Atlantis'"):
        infer(client, "housing_by_city_field", {"features": feats[:2], "city": cities("Chicago_IL", "Atlantis")})


def test_concurrent_requests_batched_across_routes_come_back_to_their_callers(
    admin: TritonAdmin, server: EmbeddedTriton
) -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    for name in ["housing_by_city_batched", "housing_preprocess", *(f"housing_{c}" for c in CITIES)]:
        admin.load(name)
    with httpclient.InferenceServerClient(server.endpoint.http) as c:
        feats = infer(c, "housing_preprocess", {"raw": RAW})["features"]
        direct = {city: infer(c, f"housing_{city}", {"features": feats[i : i + 1]})["price"] for i, city in
                  enumerate(CITIES)}  # fmt: skip
        infer(c, "housing_by_city_batched", {"features": feats[:1]}, city=CITIES[0])  # targets loaded

    gate = threading.Barrier(12)  # all callers send at once, so requests meet in the router's queue

    def one(k: int) -> tuple[str, np.ndarray]:
        i = k % len(CITIES)
        with httpclient.InferenceServerClient(server.endpoint.http) as cl:
            if k < 12:
                gate.wait(timeout=30)
            out = infer(cl, "housing_by_city_batched", {"features": feats[i : i + 1]}, city=CITIES[i])
        return CITIES[i], out["price"]

    before = admin.stats("housing_by_city_batched")["model_stats"][0]
    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(one, range(24)))
    after = admin.stats("housing_by_city_batched")["model_stats"][0]
    for city, price in results:  # each caller gets its own city's price, though requests shared batches
        np.testing.assert_allclose(price, direct[city], rtol=1e-6)
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == 24 and executions < inferences, (inferences, executions)


def test_rules_router_first_match_then_default(admin: TritonAdmin, client: httpclient.InferenceServerClient) -> None:
    admin.load("housing_rules")
    feats = infer(client, "housing_preprocess", {"raw": RAW})["features"]
    out = infer(client, "housing_rules", {"features": feats, "city": cities("NewYork_NY", *["Nowhere"] * 4)})
    expected = ["housing_NewYork_NY"] + [
        "housing_LosAngeles_CA" if f[1] > 1.0 else "housing_Chicago_IL" for f in feats[1:]
    ]
    assert [s.decode() for s in out["model"].reshape(-1)] == expected
    assert "housing_LosAngeles_CA" in expected and "housing_Chicago_IL" in expected  # both rules exercised
    for model in set(expected):  # rows routed to one model are sent to it together, in order
        idx = [i for i, m in enumerate(expected) if m == model]
        np.testing.assert_array_equal(out["price"][idx], infer(client, model, {"features": feats[idx]})["price"])


def test_ab_split_is_weighted_sticky_and_says_which_variant(
    admin: TritonAdmin, client: httpclient.InferenceServerClient
) -> None:
    admin.load("housing_ab")
    feats = infer(client, "housing_preprocess", {"raw": RAW[:1]})["features"]
    variant_model = {"A": "housing_Chicago_IL", "B": "housing_Houston_TX"}
    expected = {v: infer(client, m, {"features": feats})["price"] for v, m in variant_model.items()}
    seen = []
    for _ in range(200):
        out = infer(client, "housing_ab", {"features": feats})
        v = out["variant"].reshape(-1)[0].decode()
        np.testing.assert_array_equal(out["price"], expected[v])
        seen.append(v)
    share_a = seen.count("A") / len(seen)
    assert 0.65 <= share_a <= 0.93, share_a  # 80/20 split; binomial sd at n=200 is 0.028
    for user in ["alice", "bob", "carol", "dave"]:
        first = {infer(client, "housing_ab", {"features": feats}, user=user)["variant"][0, 0] for _ in range(5)}
        assert len(first) == 1, (user, first)


# ------------------------------------------------------------------------------------------------ DAG rules -------
def _base(manifest) -> dict[str, mc.ModelConfig]:  # type: ignore[no-untyped-def]
    configs = {g.name: g.config for g in generated_models(manifest)}
    configs["toy_identity"] = _identity_config()
    return configs


def _cycle() -> mc.ModelConfig:
    c = mc.ModelConfig(name="x", platform="ensemble", max_batch_size=8)
    c.input.add(name="in", data_type=mc.TYPE_FP32, dims=[4])
    c.output.add(name="out", data_type=mc.TYPE_FP32, dims=[4])
    for x, y in [("t1", "t0"), ("t0", "t1"), ("in", "out")]:
        s = c.ensemble_scheduling.step.add(model_name="toy_identity", model_version=-1)
        s.input_map["x"], s.output_map["y"] = x, y
    return c


def _mutate(base: mc.ModelConfig, rule: str) -> mc.ModelConfig:
    c = copy.deepcopy(base)
    steps = c.ensemble_scheduling.step
    if rule == "unproduced":
        steps[1].input_map["features"] = "nope"
    elif rule == "output":
        c.output.add(name="extra", data_type=mc.TYPE_FP32, dims=[1])
    elif rule == "dtype":
        c.input[0].data_type = mc.TYPE_INT32
    elif rule == "shape":
        c.input[0].dims[0] = 7
    elif rule == "max_batch":
        c.max_batch_size = 64
    elif rule == "dynamic_batching":
        c.dynamic_batching.SetInParent()  # a oneof with ensemble_scheduling: the steps are gone
    elif rule == "missing":
        steps[1].model_name = "housing_nowhere"
    elif rule == "unused_tensor":
        s = steps.add(model_name="housing_NewYork_NY", model_version=-1)
        s.input_map["features"], s.output_map["price"] = "housing_preprocess__features", "ny_price"
    elif rule == "bad_key":  # a step input name the model does not have (its real input left unmapped)
        del steps[1].input_map["features"]
        steps[1].input_map["nofeat"] = "housing_preprocess__features"
    elif rule == "unused_step":
        s = steps.add(model_name="housing_NewYork_NY", model_version=-1)
        s.input_map["features"] = "housing_preprocess__features"
    return c


# rule -> (substrings of our finding, Triton's rejection: the API message, or the poll error its log gives)
CASES = {
    "cycle": (["cycle", "step 0 (toy_identity) -> step 1 (toy_identity)"], "ensemble tensor 't1' is unused"),
    "unproduced": (["step 1 (housing_Chicago_IL)", "'features'", "'nope'", "no step"], "'nope', is not connected"),
    "output": (["declared output 'extra'", "produced by no step"], "ensemble output 'extra'"),
    "dtype": (["step 0 (housing_preprocess)", "'raw'", "FP32[-1, 8]", "INT32[-1, 8]"], "inconsistent data type"),
    "shape": (["step 0 (housing_preprocess)", "'raw'", "FP32[-1, 7]"], "inconsistent shape"),
    "max_batch": (["max_batch_size 64", "step 0 (housing_preprocess)", "32"], "maximum batch size"),
    "dynamic_batching": (["dynamic_batching"], "ensemble scheduling must be set"),
    "missing": (["step 1 (housing_nowhere)", "not in the repository"], "not available"),
    "bad_key": (["step 1 (housing_Chicago_IL)", "'nofeat' is not an input"], "mapping to non-existing input nofeat"),
    "unused_tensor": (["step 3 (housing_NewYork_NY)", "'ny_price'", "consumed by no step"], "'ny_price' is unused"),
    # Triton requires an output_map in every step and rejects unused tensors, so an unused step never loads.
    "unused_step": (["step 3 (housing_NewYork_NY)", "contributes to no ensemble output"], "must specify 'output_map'"),
}


@pytest.mark.parametrize("rule", sorted(CASES))
def test_dag_rule_offline_and_in_triton(
    rule: str, manifest, repo: Path, server: EmbeddedTriton, admin: TritonAdmin
) -> None:  # type: ignore[no-untyped-def]
    configs = _base(manifest)
    broken = _cycle() if rule == "cycle" else _mutate(configs["housing_pipeline_Chicago_IL"], rule)
    name = f"broken_{rule}"
    broken.name = name
    configs[name] = broken
    findings = [f for f in check_ensemble_configs(configs, {name: f"{name}/config.pbtxt"}) if f.file.startswith(name)]
    want, triton_says = CASES[rule]
    severity = "warning" if rule == "unused_step" else "error"
    hits = [f for f in findings if f.severity == severity and all(w in f.message for w in want)]
    assert hits, findings
    assert all(f"ensemble '{name}'" in f.message for f in findings)
    if rule == "unused_step":  # the warning the issue asks for, plus the error that makes Triton reject it
        assert any("has no output_map" in f.message and f.severity == "error" for f in findings), findings
    write_model(GeneratedModel(name, broken, dict(VERSION_KEEP)), repo)
    with pytest.raises(InferenceError) as exc:
        admin.load(name)
    # Errors found while polling the directory reach the API only as "failed to poll"; the reason is in the log.
    said = str(exc.value) + "\n".join(ln for ln in server.log_tail(400).splitlines() if name in ln)
    assert name in said and triton_says in said, said


def test_example_ensembles_pass_the_dag_checks(manifest) -> None:  # type: ignore[no-untyped-def]
    assert check_ensemble_configs(_base(manifest), {}) == []
