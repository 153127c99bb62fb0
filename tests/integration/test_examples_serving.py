"""Every example model loads into the real embedded Triton and answers correctly."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from examples.digits import load_split
from examples.housing import CITIES4, generate
from toolkit.server import EmbeddedTriton, TritonAdmin

ROOT = Path(__file__).resolve().parents[2]
ART = ROOT / "examples" / "artifacts"


def infer(client: httpclient.InferenceServerClient, model: str, name: str, x: np.ndarray) -> httpclient.InferResult:
    inp = httpclient.InferInput(name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    return client.infer(model, [inp])


@pytest.fixture(scope="module")
def client(triton: EmbeddedTriton, admin: TritonAdmin, example_manifest):  # type: ignore[no-untyped-def]
    for m in example_manifest.models:
        admin.load(m.name)
    c = httpclient.InferenceServerClient(triton.endpoint.http)
    yield c
    c.close()


@pytest.mark.parametrize("model", ["digits_logreg", "digits_mlp", "digits_forest"])
def test_digits_classifiers_accuracy(client, model: str) -> None:  # type: ignore[no-untyped-def]
    _, x_test, _, y_test = load_split()
    labels, probs = [], []
    for lo in range(0, len(x_test), 64):  # max_batch_size is 64
        r = infer(client, model, "X", x_test[lo : lo + 64])
        labels.append(r.as_numpy("label"))
        probs.append(r.as_numpy("probabilities"))
    label = np.concatenate(labels).ravel()
    prob = np.concatenate(probs)
    assert label.dtype == np.int64 and prob.shape == (len(x_test), 10)
    np.testing.assert_allclose(prob.sum(axis=1), 1.0, atol=1e-4)
    assert (prob.argmax(axis=1) == label).mean() > 0.99
    accuracy = float((label == y_test).mean())
    expected = json.loads((ART / "metrics.json").read_text())["digits_accuracy"][model]
    assert accuracy >= 0.90
    assert accuracy == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("city", CITIES4)
def test_housing_equals_sklearn_in_process(client, city: str) -> None:  # type: ignore[no-untyped-def]
    x, _ = generate(city, 32, seed=123)
    pre = joblib.load(ART / "housing_preprocess.joblib")
    reg = joblib.load(ART / f"housing_{city}.joblib")
    feats = infer(client, "housing_preprocess", "raw", x).as_numpy("features")
    np.testing.assert_allclose(feats, pre.transform(x), rtol=1e-5, atol=1e-4)
    price = infer(client, f"housing_{city}", "features", feats).as_numpy("price")
    assert price.shape == (32, 1)
    np.testing.assert_allclose(price.ravel(), reg.predict(pre.transform(x)), rtol=1e-4, atol=1e-4)


def test_housing_onnx_twins_equal_sklearn_in_process(client) -> None:  # type: ignore[no-untyped-def]
    """The skl2onnx-compiled preprocessor and Chicago model, served by onnxruntime, match sklearn run in-process."""
    x, _ = generate("Chicago_IL", 32, seed=123)
    pre = joblib.load(ART / "housing_preprocess.joblib")
    reg = joblib.load(ART / "housing_Chicago_IL.joblib")
    feats = infer(client, "housing_preprocess_onnx", "raw", x).as_numpy("features")
    assert feats.shape == (32, 10) and feats.dtype == np.float32
    np.testing.assert_allclose(feats, pre.transform(x), rtol=1e-4, atol=1e-4)
    price = infer(client, "housing_Chicago_IL_onnx", "features", feats).as_numpy("price")
    assert price.shape == (32, 1) and price.dtype == np.float32
    # The graph computes in float32, sklearn in float64: prices (~$500k) agree to 1e-4 relative, not absolute.
    np.testing.assert_allclose(price.ravel(), reg.predict(pre.transform(x)), rtol=1e-4)


def test_housing_onnx_pipeline_returns_the_sklearn_pipelines_dollars(  # type: ignore[no-untyped-def]
    client, admin: TritonAdmin
) -> None:
    """Both serial ensembles round the same price to whole dollars.

    The ONNX city model computes in float32 and sklearn's in float64, so a price that lands within float32 rounding
    (~$0.03 at $500k) of a .5 boundary may round one dollar apart: +-1 dollar is allowed, and no more.
    """
    for name in ("housing_pipeline_Chicago_IL", "housing_pipeline_onnx_Chicago_IL"):
        admin.load(name)  # the steps are already loaded by the fixture: this only adds the ensembles
    x, _ = generate("Chicago_IL", 32, seed=321)
    sk = infer(client, "housing_pipeline_Chicago_IL", "raw", x).as_numpy("price_dollars")
    onx = infer(client, "housing_pipeline_onnx_Chicago_IL", "raw", x).as_numpy("price_dollars")
    assert sk.shape == onx.shape == (32, 1) and onx.dtype == np.int64
    assert int(np.abs(sk - onx).max()) <= 1
    assert np.mean(sk == onx) >= 0.5  # almost all rows are identical; a systematic offset would fail here
    assert float(np.abs(sk).min()) > 10_000.0  # real prices, not an all-zero answer that would match trivially


def _requests_and_executions(admin: TritonAdmin, model: str) -> tuple[int, int]:
    stats = admin.stats(model)["model_stats"][0]
    return int(stats["inference_stats"]["success"]["count"]), int(stats["execution_count"])


def test_grpc_and_dynamic_batching_agree(client, triton: EmbeddedTriton, admin: TritonAdmin) -> None:  # type: ignore[no-untyped-def]
    """gRPC answers what HTTP answers; concurrent one-row requests are batched by Triton's dynamic batcher (fewer
    executions than requests, as the model statistics count them) and each caller still gets its own row's answer."""
    _, x_test, _, _ = load_split()
    g = grpcclient.InferenceServerClient(triton.endpoint.grpc)
    try:
        inp = grpcclient.InferInput("X", [4, 64], "FP32")
        inp.set_data_from_numpy(x_test[:4])
        via_grpc = g.infer("digits_mlp", [inp]).as_numpy("probabilities")
        via_http = infer(client, "digits_mlp", "X", x_test[:4]).as_numpy("probabilities")
        np.testing.assert_allclose(via_grpc, via_http, rtol=1e-6)

        n = 128  # enough that some always meet in the queue, even when a busy machine sends them slowly
        rows = x_test[:n]
        batched = np.concatenate(  # the same rows, 64 to a request (max_batch_size)
            [infer(client, "digits_mlp", "X", rows[lo : lo + 64]).as_numpy("probabilities") for lo in range(0, n, 64)]
        )
        requests0, executions0 = _requests_and_executions(admin, "digits_mlp")
        answers: dict[int, tuple[Any, Any]] = {}
        all_back = threading.Event()

        def on_answer(i: int) -> Callable[[Any, Any], None]:
            def done(result: Any, error: Any) -> None:
                answers[i] = (result, error)
                if len(answers) == n:
                    all_back.set()

            return done

        for i in range(n):  # all in flight at once: they meet in the batcher's queue
            one = grpcclient.InferInput("X", [1, 64], "FP32")
            one.set_data_from_numpy(rows[i : i + 1])
            g.async_infer("digits_mlp", [one], on_answer(i))
        assert all_back.wait(60), f"{len(answers)} of {n} answers"
        for i, (result, error) in sorted(answers.items()):
            assert error is None, error
            np.testing.assert_allclose(result.as_numpy("probabilities")[0], batched[i], rtol=1e-5, atol=1e-7)
        deadline = time.monotonic() + 10  # Triton records a request's statistics as it releases it, after answering
        while (requests := _requests_and_executions(admin, "digits_mlp")[0] - requests0) < n:
            assert time.monotonic() < deadline, f"statistics count {requests} of {n} requests"
            time.sleep(0.01)
        executions = _requests_and_executions(admin, "digits_mlp")[1] - executions0
        assert requests == n and 1 <= executions < n, (requests, executions)
    finally:
        g.close()


def test_wrong_shape_and_dtype_are_rejected_with_tritons_message(client) -> None:  # type: ignore[no-untyped-def]
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match=r"unexpected shape|expected"):
        infer(client, "digits_logreg", "X", np.zeros((1, 63), np.float32))
    bad = httpclient.InferInput("X", [1, 64], "FP64")
    bad.set_data_from_numpy(np.zeros((1, 64), np.float64))
    with pytest.raises(InferenceServerException, match=r"FP64|datatype"):
        client.infer("digits_logreg", [bad])
    # the model keeps serving after bad requests
    assert infer(client, "digits_logreg", "X", np.zeros((1, 64), np.float32)).as_numpy("label").shape == (1, 1)


def test_request_parameters_reach_a_router_inside_a_pipeline(client, admin) -> None:  # type: ignore[no-untyped-def]
    """Triton 2.51 passes an ensemble request's parameters to its steps: routing by `city` works mid-pipeline and
    equals preprocess -> router -> postprocess called by hand."""
    admin.load("housing_city_param_pipeline")
    x, _ = generate("Chicago_IL", 3, seed=11)
    feats = infer(client, "housing_preprocess", "raw", x).as_numpy("features")
    for city in ("Houston_TX", "NewYork_NY"):
        inp = httpclient.InferInput("raw", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        r = client.infer("housing_city_param_pipeline", [inp], parameters={"city": city})
        assert [m.decode() for m in r.as_numpy("model").ravel()] == [f"housing_{city}"] * 3
        f = httpclient.InferInput("features", list(feats.shape), "FP32")
        f.set_data_from_numpy(feats, binary_data=True)
        by_hand = client.infer("housing_by_city", [f], parameters={"city": city}).as_numpy("price").ravel()
        np.testing.assert_array_equal(r.as_numpy("price_dollars").ravel(), np.round(by_hand).astype(np.int64))
