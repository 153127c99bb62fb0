"""The frameworks the adapters know, through model hosts: the example manifest served with ``multiplex=True`` on a
real embedded Triton and gateway, invoked with tritonclient (KServe v2 HTTP).

ONNX (onnxruntime session), sklearn (joblib) and numpy (a .py with its .npz sibling) each land in the host of their
tensor signature and answer what the artifact computes in-process; a large artifact (the 185 KB random forest, over
the 64 KiB default) keeps a stub of its own.
"""

from __future__ import annotations

import importlib.util
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import joblib
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient

from toolkit import ServeConfig, Serving, start
from toolkit.mme.muxspec import HOST_PREFIX

ROOT = Path(__file__).resolve().parents[2]
ART = ROOT / "examples" / "artifacts"
FREE = {"http_port": 0, "grpc_port": 0, "metrics_port": 0, "gateway_port": 0, "gateway_grpc_port": 0}


@pytest.fixture(scope="module")
def served() -> Iterator[Serving]:
    with start(ServeConfig(manifest=ROOT / "tritonctl.yaml", multiplex=True, **FREE)) as s:
        yield s


def _infer(s: Serving, model: str, name: str, x: np.ndarray, outputs: list[str]) -> dict[str, np.ndarray]:
    inp = httpclient.InferInput(name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    with httpclient.InferenceServerClient(s.http) as c:
        res = c.infer(model, [inp])
    assert res.get_response()["model_name"] == model
    return {o: np.asarray(res.as_numpy(o)) for o in outputs}


def _loaded(s: Serving) -> set[str]:
    assert s.triton is not None
    with httpclient.InferenceServerClient(s.triton.http) as c:
        return {m["name"] for m in c.get_model_repository_index() if m.get("state") == "READY"}


def test_onnx_sklearn_and_numpy_models_are_served_by_hosts(served: Serving) -> None:
    digits = np.load(ROOT / "examples" / "digits_samples.npy")[:3].astype(np.float32)
    opts = ort.SessionOptions()
    sess = ort.InferenceSession(str(ART / "digits_logreg.onnx"), sess_options=opts, providers=["CPUExecutionProvider"])
    probs = _infer(served, "digits_logreg", "X", digits, ["probabilities"])["probabilities"]
    assert np.allclose(probs, sess.run(["probabilities"], {"X": digits})[0], rtol=1e-5)

    spec = importlib.util.spec_from_file_location("digits_mlp_reference", ART / "digits_mlp.py")
    assert spec is not None and spec.loader is not None
    mlp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mlp)
    got = _infer(served, "digits_mlp", "X", digits, ["probabilities"])["probabilities"]
    assert np.allclose(got, mlp.predict({"X": digits})["probabilities"], rtol=1e-5)

    features = np.random.default_rng(0).random((4, 10), dtype=np.float32)
    price = _infer(served, "housing_Chicago_IL", "features", features, ["price"])["price"].reshape(-1)
    assert np.allclose(price, joblib.load(ART / "housing_Chicago_IL.joblib").predict(features), rtol=1e-4)

    loaded = _loaded(served)
    hosts = {n for n in loaded if n.startswith(HOST_PREFIX)}
    assert len(hosts) == 3, loaded  # three signatures: digits (logreg), digits (mlp), housing city
    assert not {"digits_logreg", "digits_mlp", "housing_Chicago_IL"} & loaded


def test_a_large_model_keeps_its_own_stub(served: Serving) -> None:
    digits = np.load(ROOT / "examples" / "digits_samples.npy")[:2].astype(np.float32)
    label = _infer(served, "digits_forest", "X", digits, ["label"])["label"].reshape(-1)
    forest = joblib.load(ART / "digits_forest.joblib")
    assert np.array_equal(label, forest.predict(digits))
    assert "digits_forest" in _loaded(served)  # 185 KB: its own stub


def test_a_native_onnx_artifact_is_adapted_then_multiplexed(tmp_path: Path) -> None:
    """Deploy's layout (``config.pbtxt`` for onnxruntime + ``1/model.onnx``), as an S3 prefix for SageMaker holds it:
    the store's fetch adapts it to the python adapter, which a host then serves."""
    from toolkit.repository.config import render_config
    from toolkit.repository.generate import model_files
    from toolkit.spec import load_manifest

    spec = next(m for m in load_manifest(ROOT / "tritonctl.yaml").models if m.name == "digits_logreg")
    gm = model_files(spec, "triton")
    assert gm.config.backend == "onnxruntime"
    store, repo = tmp_path / "store", tmp_path / "repo"
    store.mkdir()
    repo.mkdir()
    with tarfile.open(store / "logreg.tar.gz", "w:gz") as tf:
        files = {"config.pbtxt": render_config(gm.config).encode()}
        files.update({r: s if isinstance(s, bytes) else s.read_bytes() for r, s in gm.files.items()})
        for name, data in files.items():
            info = tarfile.TarInfo(f"digits_logreg/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    digits = np.load(ROOT / "examples" / "digits_samples.npy")[:3].astype(np.float32)
    sess = ort.InferenceSession(str(ART / "digits_logreg.onnx"), providers=["CPUExecutionProvider"])
    with start(ServeConfig(repository=repo, store=str(store), multiplex=True, **FREE)) as s:
        got = _infer(s, "logreg", "X", digits, ["probabilities"])["probabilities"]
        assert np.allclose(got, sess.run(["probabilities"], {"X": digits})[0], rtol=1e-5)
        loaded = _loaded(s)
        assert "logreg" not in loaded and any(n.startswith(HOST_PREFIX) for n in loaded), loaded


def test_store_tarballs_of_each_framework_are_served_from_what_the_host_loads(tmp_path: Path) -> None:
    """A local store's tarballs, read in memory (``toolkit.mme.muxfiles``): an ONNX and a sklearn artifact alone in
    their version folder become one file (the host loads them from bytes: an onnxruntime session, joblib from a
    buffer); the numpy MLP, whose ``.npz`` sibling it opens by path, keeps a folder."""
    from toolkit.mme.muxfiles import DESCRIPTOR, PREPARED
    from toolkit.mme.muxspec import mux_root
    from toolkit.repository.generate import render_model_dir
    from toolkit.spec import load_manifest

    store, repo = tmp_path / "store", tmp_path / "repo"
    store.mkdir()
    repo.mkdir()
    names = {"digits_logreg", "digits_mlp", "housing_Chicago_IL"}
    for spec in load_manifest(ROOT / "tritonctl.yaml").models:
        if spec.name in names:
            folder = render_model_dir(spec, tmp_path / "models")
            with tarfile.open(store / f"{spec.name}.tar.gz", "w:gz") as tf:
                tf.add(folder, arcname=spec.name)
    digits = np.load(ROOT / "examples" / "digits_samples.npy")[:3].astype(np.float32)
    features = np.random.default_rng(1).random((4, 10), dtype=np.float32)
    sess = ort.InferenceSession(str(ART / "digits_logreg.onnx"), providers=["CPUExecutionProvider"])
    spec_mlp = importlib.util.spec_from_file_location("digits_mlp_reference", ART / "digits_mlp.py")
    assert spec_mlp is not None and spec_mlp.loader is not None
    mlp = importlib.util.module_from_spec(spec_mlp)
    spec_mlp.loader.exec_module(mlp)
    with start(ServeConfig(repository=repo, store=str(store), multiplex=True, **FREE)) as s:
        got = _infer(s, "digits_logreg", "X", digits, ["probabilities"])["probabilities"]
        assert np.allclose(got, sess.run(["probabilities"], {"X": digits})[0], rtol=1e-5)
        price = _infer(s, "housing_Chicago_IL", "features", features, ["price"])["price"].reshape(-1)
        assert np.allclose(price, joblib.load(ART / "housing_Chicago_IL.joblib").predict(features), rtol=1e-4)
        got = _infer(s, "digits_mlp", "X", digits, ["probabilities"])["probabilities"]
        assert np.allclose(got, mlp.predict({"X": digits})["probabilities"], rtol=1e-5)
        assert not names & _loaded(s)  # all three inside hosts
        root = mux_root(repo)
        assert sorted(os.listdir(root / PREPARED)) == ["digits_logreg", "housing_Chicago_IL"]
        assert (root / "digits_mlp" / DESCRIPTOR).is_file() and not (root / "digits_logreg").exists()
