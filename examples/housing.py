"""Per-city house price models (the SageMaker "inference pipeline + multi-model endpoint" example, on Triton).

One shared preprocessor (scaling + one-hot, fitted on data pooled from four cities) feeds one LinearRegression per city.
The data are synthetic and seeded; each city's price coefficients come from a *stable* hash of its name (crc32, not
Python's salted ``hash()``), so the same city always gets the same model on any machine and in any process, and
different cities get visibly different predictions (which the multi-model demo needs to show routing works).
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from toolkit.errors import TritonctlError

FEATURES = [
    "year_built",
    "square_feet",
    "num_bedrooms",
    "num_bathrooms",
    "lot_acres",
    "num_garages",
    "deck",
    "front_porch",
]
NUMERIC = FEATURES[:6]
CATEGORICAL = FEATURES[6:]
N_PREPROCESSED = len(NUMERIC) + 2 * len(CATEGORICAL)  # 6 scaled + 2 one-hot pairs = 10
CITIES4 = ["NewYork_NY", "LosAngeles_CA", "Chicago_IL", "Houston_TX"]
_MORE_CITIES = [
    "Phoenix_AZ", "Philadelphia_PA", "SanAntonio_TX", "SanDiego_CA", "Dallas_TX", "SanJose_CA", "Austin_TX",
    "Jacksonville_FL", "FortWorth_TX", "Columbus_OH", "Charlotte_NC", "Indianapolis_IN", "SanFrancisco_CA",
    "Seattle_WA", "Denver_CO", "Washington_DC", "Nashville_TN", "OklahomaCity_OK", "ElPaso_TX", "Boston_MA",
    "Portland_OR", "LasVegas_NV", "Detroit_MI", "Memphis_TN", "Louisville_KY", "Baltimore_MD", "Milwaukee_WI",
    "Albuquerque_NM", "Tucson_AZ", "Fresno_CA", "Sacramento_CA", "Mesa_AZ", "KansasCity_MO", "Atlanta_GA",
    "Omaha_NE", "ColoradoSprings_CO", "Raleigh_NC", "LongBeach_CA", "VirginiaBeach_VA", "Miami_FL", "Oakland_CA",
    "Minneapolis_MN", "Tulsa_OK", "Bakersfield_CA", "Wichita_KS", "Arlington_TX", "Aurora_CO", "Tampa_FL",
    "NewOrleans_LA", "Cleveland_OH", "Honolulu_HI", "Anaheim_CA", "Lexington_KY", "Stockton_CA", "Henderson_NV",
    "SaintPaul_MN", "Cincinnati_OH", "StLouis_MO", "Pittsburgh_PA", "Greensboro_NC",
]  # fmt: skip
ALL_CITIES = CITIES4 + _MORE_CITIES
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]*$")
PREPROCESS_NAME = "housing_preprocess"
ONNX_CITY = "Chicago_IL"  # the city whose model is also exported to ONNX (the serial-pipeline benchmark's city)
# Same pinned opset as the digits ONNX model, so the bytes do not depend on skl2onnx's default.
TARGET_OPSET = 17


class HousingError(TritonctlError):
    """Bad arguments to the housing example builders (unknown city, too many cities, bad sizes)."""


def cities(n: int) -> list[str]:
    """The first ``n`` city names (CITIES4 first); each is a valid Triton model name like ``Seattle_WA``."""
    if not 1 <= n <= len(ALL_CITIES):
        raise HousingError(f"cities(n) supports 1..{len(ALL_CITIES)} cities, got n={n}")
    return list(ALL_CITIES[:n])


def city_seed(city: str) -> int:
    """Stable per-city integer (crc32 of the UTF-8 name): identical across processes, unlike ``hash()``."""
    if not _MODEL_NAME.match(city):
        raise HousingError(f"city {city!r} is not a valid model name (letters, digits, underscore)")
    return zlib.crc32(city.encode("utf-8"))


def city_coefficients(city: str) -> tuple[NDArray[np.float64], float]:
    """Price weights per raw feature and the base price for ``city`` (deterministic in the city name)."""
    rng = np.random.default_rng(city_seed(city))
    # Dollars per unit of each feature; the per-city multipliers make e.g. square feet far pricier in some cities.
    base = np.array([300.0, 150.0, 8_000.0, 12_000.0, 40_000.0, 9_000.0, 6_000.0, 4_000.0])
    weights = base * rng.uniform(0.4, 2.5, size=len(FEATURES))
    intercept = float(rng.uniform(50_000.0, 150_000.0))
    return weights, intercept


def generate(city: str, n: int, seed: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Synthetic houses for ``city``: ``X`` float32 (n, 8) in FEATURES order and price ``y`` float32 (n,).

    ``seed`` picks the sample (mixed with the city seed so cities do not share rows); the city picks the coefficients.
    """
    if n < 1:
        raise HousingError(f"n must be >= 1, got {n}")
    weights, intercept = city_coefficients(city)
    rng = np.random.default_rng([seed, city_seed(city)])
    x = np.column_stack(
        [
            rng.integers(1950, 2021, n),
            rng.uniform(800.0, 4_500.0, n).round(),
            rng.integers(1, 7, n),
            rng.integers(1, 5, n),
            rng.uniform(0.05, 2.0, n).round(2),
            rng.integers(0, 4, n),
            rng.integers(0, 2, n),
            rng.integers(0, 2, n),
        ]
    ).astype(np.float64)
    age_adjusted = x.copy()
    age_adjusted[:, 0] -= 1950.0  # the year contributes through "newer than 1950", keeping prices realistic
    price = age_adjusted @ weights + intercept + rng.normal(0.0, 15_000.0, n)
    return x.astype(np.float32), price.astype(np.float32)


def build_preprocessor(seed: int = 0, n_per_city: int = 500) -> object:
    """Fit the shared ColumnTransformer on data pooled from CITIES4 (declared output method: ``transform``).

    StandardScaler keeps float32 input as float32 and the encoder emits float32, so ``transform`` on the float32
    (N, 8) matrix the adapter passes yields float32 (N, 10) with no custom (unpicklable-elsewhere) code in the artifact.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    pooled = np.concatenate([generate(city, n_per_city, seed)[0] for city in CITIES4])
    pre = ColumnTransformer(
        [
            ("num", StandardScaler(), list(range(len(NUMERIC)))),
            (
                "cat",
                OneHotEncoder(
                    categories=[[0, 1], [0, 1]], handle_unknown="ignore", sparse_output=False, dtype=np.float32
                ),
                [len(NUMERIC), len(NUMERIC) + 1],
            ),
        ],
        remainder="drop",
        sparse_threshold=0.0,
    )
    pre.fit(pooled)
    return pre


def train_city_model(preprocessor: object, city: str, seed: int = 1, n: int = 400) -> object:
    """LinearRegression for one city on preprocessed features (declared output method: ``predict``, shape (N,))."""
    from sklearn.linear_model import LinearRegression

    x, y = generate(city, n, seed)
    feats = preprocessor.transform(x)  # type: ignore[attr-defined]
    return LinearRegression().fit(feats, y)


def save_preprocessor(out_dir: Path, seed: int = 0) -> tuple[Path, object]:
    """Fit and write ``housing_preprocess.joblib``; return its path and the fitted object."""
    import joblib

    out_dir.mkdir(parents=True, exist_ok=True)
    pre = build_preprocessor(seed)
    path = out_dir / f"{PREPROCESS_NAME}.joblib"
    joblib.dump(pre, path, compress=3)
    return path, pre


def build_city_models(out_dir: Path, city_names: list[str], preprocessor: object | None = None) -> dict[str, Path]:
    """Write ``housing_<city>.joblib`` for each city (e.g. the 50+ cities of the multi-model demo, built on demand).

    The preprocessor is refit deterministically when not given, so models built here match the committed one.
    """
    import joblib

    if preprocessor is None:
        preprocessor = build_preprocessor()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for city in city_names:
        path = out_dir / f"housing_{city}.joblib"
        joblib.dump(train_city_model(preprocessor, city), path, compress=3)
        paths[f"housing_{city}"] = path
    return paths


def export_onnx(out_dir: Path, preprocessor: object, city_model: object, city: str = ONNX_CITY) -> dict[str, Path]:
    """Compile the fitted preprocessor and one city model to ONNX (skl2onnx), for the onnx adapter (onnxruntime).

    Why: the sklearn adapter pays Python-level overhead per call (a ColumnTransformer on one row costs ~1.7 ms in
    Triton); the same math as an ONNX graph runs in onnxruntime's C++ kernels. Graph contracts:
    ``housing_preprocess.onnx``: ``raw`` FP32 [None, 8] -> ``features`` FP32 [None, 10];
    ``housing_<city>.onnx``: ``features`` FP32 [None, 10] -> ``price`` FP32 [None, 1] (LinearRegressor emits [N, 1]).
    The graphs compute in float32 (sklearn's LinearRegression in float64), so prices agree to ~1e-6 relative.
    With the opset pinned and the opset list sorted (see below), a rebuild gives the same bytes in any process.
    """
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    out_dir.mkdir(parents=True, exist_ok=True)
    graphs = {
        PREPROCESS_NAME: to_onnx(
            preprocessor,
            initial_types=[("raw", FloatTensorType([None, len(FEATURES)]))],
            final_types=[("features", FloatTensorType([None, N_PREPROCESSED]))],
            target_opset=TARGET_OPSET,
        ),
        f"housing_{city}": to_onnx(
            city_model,
            initial_types=[("features", FloatTensorType([None, N_PREPROCESSED]))],
            final_types=[("price", FloatTensorType([None, 1]))],
            target_opset=TARGET_OPSET,
        ),
    }
    paths: dict[str, Path] = {}
    for name, graph in graphs.items():
        # skl2onnx collects the opsets in a set, so their order follows the (salted) string hash: sort them, or the
        # bytes change with PYTHONHASHSEED although the graph does not.
        opsets = sorted((o.domain, o.version) for o in graph.opset_import)
        del graph.opset_import[:]
        for domain, version in opsets:
            graph.opset_import.add(domain=domain, version=version)
        path = out_dir / f"{name}.onnx"
        path.write_bytes(graph.SerializeToString())
        paths[f"{name}_onnx"] = path
    return paths


def build_housing(out_dir: Path) -> tuple[dict[str, Path], dict[str, float]]:
    """Preprocessor plus the CITIES4 models (joblib), and the ONNX twins of the preprocessor and the ONNX_CITY model.

    Returns paths (``{model_name: path}``; the ONNX twins are keyed ``<name>_onnx``, their manifest names) and each
    city's R^2 on a fresh held-out sample.
    """
    import joblib

    pre_path, pre = save_preprocessor(out_dir)
    paths = {PREPROCESS_NAME: pre_path, **build_city_models(out_dir, CITIES4, pre)}
    paths.update(export_onnx(out_dir, pre, joblib.load(paths[f"housing_{ONNX_CITY}"])))
    scores: dict[str, float] = {}
    for city in CITIES4:
        model = joblib.load(paths[f"housing_{city}"])
        x, y = generate(city, 200, seed=99)
        scores[f"housing_{city}"] = float(model.score(pre.transform(x), y))  # type: ignore[attr-defined]
    return paths, scores
