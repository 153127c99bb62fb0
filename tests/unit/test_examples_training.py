"""The committed example artifacts do what the serving examples promise, checked in-process (no Triton needed).

Each digits model is loaded the way its framework adapter loads it (onnxruntime, joblib, importlib by path) and scored
on the fixed held-out split; the housing artifacts are checked for shape, per-city difference and determinism.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import joblib
import numpy as np
import pytest

from examples import digits, housing
from examples.build import build_all

ARTIFACTS = Path(__file__).resolve().parents[2] / "examples" / "artifacts"


@pytest.fixture(scope="module")
def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return digits.load_split()


def test_split_is_fixed_and_scaled(split: tuple[np.ndarray, ...]) -> None:
    x_train, x_test, _y_train, y_test = split
    assert x_train.dtype == np.float32 and x_test.shape == (450, 64)
    assert float(x_train.min()) >= 0.0 and float(x_train.max()) <= 1.0
    again = digits.load_split()
    np.testing.assert_array_equal(again[3], y_test)


def test_onnx_logreg_accuracy_and_contract(split: tuple[np.ndarray, ...]) -> None:
    import onnxruntime as ort

    path = ARTIFACTS / "digits_logreg.onnx"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["X"]
    assert sess.get_inputs()[0].type == "tensor(float)"
    outs = {o.name: o.type for o in sess.get_outputs()}
    assert outs == {"label": "tensor(int64)", "probabilities": "tensor(float)"}
    _, x_test, _, y_test = split
    label, probs = sess.run(["label", "probabilities"], {"X": x_test})
    assert probs.shape == (len(x_test), 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert digits.accuracy(label, y_test) >= 0.90


def test_sklearn_forest_accuracy(split: tuple[np.ndarray, ...]) -> None:
    path = ARTIFACTS / "digits_forest.joblib"
    assert path.stat().st_size < 1_000_000
    model = joblib.load(path)
    _, x_test, _, y_test = split
    assert digits.accuracy(model.predict(x_test), y_test) >= 0.90
    assert model.predict_proba(x_test).shape == (len(x_test), 10)


def test_numpy_mlp_accuracy_and_contract(split: tuple[np.ndarray, ...]) -> None:
    module = digits.load_numpy_module(ARTIFACTS / "digits_mlp.py")
    _, x_test, _, y_test = split
    out = module.predict({"X": x_test})  # type: ignore[attr-defined]
    assert out["probabilities"].dtype == np.float32 and out["probabilities"].shape == (len(x_test), 10)
    assert out["label"].dtype == np.int64 and out["label"].shape == (len(x_test),)
    assert digits.accuracy(out["label"], y_test) >= 0.90
    with pytest.raises(KeyError, match="expects input 'X'"):
        module.predict({"pixels": x_test})  # type: ignore[attr-defined]


def test_numpy_mlp_imports_only_numpy_and_stdlib() -> None:
    source = (ARTIFACTS / "digits_mlp.py").read_text()
    imports = {line.split()[1] for line in source.splitlines() if line.startswith(("import ", "from "))}
    assert imports <= {"__future__", "os", "numpy"}


def test_housing_preprocessor_shape_and_dtype() -> None:
    pre = joblib.load(ARTIFACTS / "housing_preprocess.joblib")
    x, _ = housing.generate("Seattle_WA", 7, seed=5)
    feats = pre.transform(x)
    assert feats.shape == (7, housing.N_PREPROCESSED) == (7, 10)
    assert feats.dtype == np.float32
    # The last four columns are the deck / front_porch one-hot pairs: exactly one 1 per pair.
    np.testing.assert_array_equal(feats[:, 6] + feats[:, 7], 1.0)
    np.testing.assert_array_equal(feats[:, 8] + feats[:, 9], 1.0)


def test_city_models_differ_and_fit() -> None:
    pre = joblib.load(ARTIFACTS / "housing_preprocess.joblib")
    x, _ = housing.generate("Chicago_IL", 50, seed=11)
    feats = pre.transform(x)
    preds = {}
    for city in housing.CITIES4:
        model = joblib.load(ARTIFACTS / f"housing_{city}.joblib")
        preds[city] = model.predict(feats)
        assert preds[city].shape == (50,)
        x_c, y_c = housing.generate(city, 200, seed=123)
        assert model.score(pre.transform(x_c), y_c) > 0.9
    cities = list(preds)
    for i, a in enumerate(cities):
        for b in cities[i + 1 :]:
            assert np.mean(np.abs(preds[a] - preds[b])) > 10_000.0, (a, b)


def test_generation_is_deterministic() -> None:
    x1, y1 = housing.generate("Houston_TX", 30, seed=4)
    x2, y2 = housing.generate("Houston_TX", 30, seed=4)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    x3, _ = housing.generate("Houston_TX", 30, seed=5)
    assert not np.array_equal(x1, x3)
    assert x1.shape == (30, 8) and x1.dtype == np.float32 and y1.dtype == np.float32
    assert set(np.unique(x1[:, 6])) <= {0.0, 1.0}
    # crc32, not hash(): the coefficient vector is a fixed function of the name.
    assert housing.city_seed("Houston_TX") == zlib.crc32(b"Houston_TX")
    w_h, _ = housing.city_coefficients("Houston_TX")
    w_n, _ = housing.city_coefficients("NewYork_NY")
    assert not np.allclose(w_h, w_n)


def test_cities_list() -> None:
    names = housing.cities(50)
    assert names[:4] == housing.CITIES4 and len(set(names)) == 50
    assert all(n.replace("_", "").isalnum() for n in names)
    with pytest.raises(housing.HousingError):
        housing.cities(10_000)
    with pytest.raises(housing.HousingError):
        housing.generate("not a model name", 3, seed=0)


def test_rebuild_matches_committed(tmp_path: Path) -> None:
    """A rebuild gives the same predictions as the committed artifacts (and fits the size budget)."""
    paths = build_all(tmp_path)
    metrics = json.loads(paths["metrics"].read_text())
    committed = json.loads((ARTIFACTS / "metrics.json").read_text())
    assert metrics["digits_accuracy"] == committed["digits_accuracy"]
    assert metrics["total_bytes"] < 1_000_000
    _, x_test, _, _ = digits.load_split()
    fresh = joblib.load(paths["digits_forest"]).predict(x_test)
    np.testing.assert_array_equal(fresh, joblib.load(ARTIFACTS / "digits_forest.joblib").predict(x_test))
    import onnxruntime as ort

    x_raw, _ = housing.generate("Chicago_IL", 16, seed=3)
    feats = None
    for name in ("housing_preprocess_onnx", "housing_Chicago_IL_onnx"):  # skl2onnx output: the same predictions
        # (not the same bytes: skl2onnx and onnx versions change the serialization, not what the graph computes)
        got = []
        for path in (paths[name], ARTIFACTS / paths[name].name):
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            feed = x_raw if feats is None else feats
            got.append(sess.run(None, {sess.get_inputs()[0].name: feed.astype(np.float32)})[0])
        np.testing.assert_allclose(got[0], got[1], rtol=1e-5, atol=1e-5, err_msg=name)
        feats = got[1]
    new_city = housing.build_city_models(tmp_path / "mme", ["NewYork_NY", "Seattle_WA"])
    x, _ = housing.generate("NewYork_NY", 10, seed=2)
    pre = joblib.load(ARTIFACTS / "housing_preprocess.joblib")
    np.testing.assert_allclose(
        joblib.load(new_city["housing_NewYork_NY"]).predict(pre.transform(x)),
        joblib.load(ARTIFACTS / "housing_NewYork_NY.joblib").predict(pre.transform(x)),
        rtol=1e-6,
    )
