"""The housing city models as a multi-model endpoint: >= 50 per-city models in a store, loaded on demand.

Each city model is the shared preprocessor (scaling + one-hot) and the city's LinearRegression folded into one numpy
model (the numpy adapter): a python-backend model that imports only numpy loads in ~0.1 s, where the sklearn adapter
needs ~0.9 s (the stub imports sklearn), which matters when every cold request pays a load. The coefficients are the
fitted sklearn ones, written out in full precision, so predictions equal sklearn's (checked by ``verify``).

``build_city_store`` writes ``housing_<city>.tar.gz`` artifacts (Triton model directories) for a LocalStore or an S3
prefix; ``run_mme_demo`` serves them through the ``ModelManager`` from a local store and from S3 (moto server):
``python -m examples.mme``.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from examples.housing import FEATURES, build_preprocessor, cities, generate, train_city_model
from toolkit.repository.generate import render_model_dir
from toolkit.spec.models import ModelSpec, TensorSpec

MODEL_TEMPLATE = '''"""Housing price for {city}: scaling + one-hot (deck, front_porch) + LinearRegression, in numpy."""
import numpy as np

MEAN = np.array({mean!r}, dtype=np.float64)
SCALE = np.array({scale!r}, dtype=np.float64)
COEF = np.array({coef!r}, dtype=np.float64)
INTERCEPT = {intercept!r}


def predict(inputs):
    x = np.asarray(inputs["raw"], dtype=np.float32).reshape(-1, 8)
    num = (x[:, :6].astype(np.float32) - MEAN.astype(np.float32)) / SCALE.astype(np.float32)
    cat = np.column_stack([x[:, 6] == 0, x[:, 6] == 1, x[:, 7] == 0, x[:, 7] == 1]).astype(np.float32)
    feats = np.concatenate([num, cat], axis=1).astype(np.float64)
    return {{"price": (feats @ COEF + INTERCEPT).astype(np.float32).reshape(-1, 1)}}
'''


def model_name(city: str) -> str:
    return f"housing_{city}"


def city_source(pre: Any, model: Any, city: str) -> str:
    """The numpy model file for one city, from the fitted preprocessor and regression."""
    scaler = pre.named_transformers_["num"]
    return MODEL_TEMPLATE.format(
        city=city,
        mean=[float(v) for v in scaler.mean_],
        scale=[float(v) for v in scaler.scale_],
        coef=[float(v) for v in model.coef_],
        intercept=float(model.intercept_),
    )


def city_spec(city: str, artifact: Path) -> ModelSpec:
    return ModelSpec(
        name=model_name(city),
        framework="numpy",
        artifact=artifact,
        max_batch_size=32,
        inputs=[TensorSpec(name="raw", dtype="FP32", dims=[len(FEATURES)])],
        outputs=[TensorSpec(name="price", dtype="FP32", dims=[1])],
        description=f"house price model for {city} (MME example)",
    )


def _tar_dir(src: Path, out: Path) -> None:
    """Deterministic tar.gz of a model directory (flat layout: config.pbtxt at the top)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for p in sorted(src.rglob("*")):
            info = tf.gettarinfo(str(p), arcname=p.relative_to(src).as_posix())
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if p.is_file():
                with p.open("rb") as fh:
                    tf.addfile(info, fh)
            else:
                tf.addfile(info)
    out.write_bytes(gzip.compress(buf.getvalue(), mtime=0))


def build_city_store(dest: Path, n: int = 50) -> dict[str, Path]:
    """Write ``dest/housing_<city>.tar.gz`` for the first ``n`` cities; returns model name -> artifact path."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    pre = build_preprocessor()
    out: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="tritonctl-cities-") as tmp:
        for city in cities(n):
            src = Path(tmp) / "src" / f"{model_name(city)}.py"
            src.parent.mkdir(parents=True, exist_ok=True)
            src.write_text(city_source(pre, train_city_model(pre, city), city))
            model_dir = render_model_dir(city_spec(city, src), Path(tmp) / "models")
            path = dest / f"{model_name(city)}.tar.gz"
            _tar_dir(model_dir, path)
            out[model_name(city)] = path
    return out


def expected_prices(city: str, x: NDArray[np.float32]) -> NDArray[np.float64]:
    """What sklearn itself predicts for ``x`` (the reference the served model must equal)."""
    pre = build_preprocessor()
    return np.asarray(train_city_model(pre, city).predict(pre.transform(x)), dtype=np.float64)  # type: ignore[attr-defined]


async def _invoke(manager: Any, client: Any, city: str, x: NDArray[np.float32]) -> NDArray[np.float32]:
    import tritonclient.http.aio as httpaio

    inp = httpaio.InferInput("raw", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    async with manager.serving(model_name(city)):
        res = await client.infer(model_name(city), [inp])
    return np.asarray(res.as_numpy("price")).reshape(-1)


async def _serve(endpoint: Any, repo: Path, store: Any, picks: list[str], max_models: int, say: Any) -> dict[str, Any]:
    import time

    import tritonclient.http.aio as httpaio

    from toolkit.mme.manager import ModelManager

    mgr = ModelManager(endpoint, repository=repo, store=store, max_models=max_models)
    await mgr.start()
    client = httpaio.InferenceServerClient(endpoint.http)
    x, _ = generate(picks[0], 3, seed=123)
    report: dict[str, Any] = {"store": repr(store), "known": len([s for s in mgr.states()])}
    try:
        for city in picks:
            t0 = time.perf_counter()
            got = await _invoke(mgr, client, city, x)
            cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            await _invoke(mgr, client, city, x)
            warm = time.perf_counter() - t0
            ok = bool(np.allclose(got, expected_prices(city, x), rtol=1e-4))
            timing = f"cold {cold * 1000:6.1f} ms  warm {warm * 1000:5.1f} ms"
            say(f"  {city:<18} {timing}  prices {np.round(got, 0)}  ok={ok}")
            report.setdefault("cities", {})[city] = {"cold_ms": cold * 1000, "warm_ms": warm * 1000, "ok": ok}
        resident = [s.name for s in mgr.states() if s.state == "READY"]
        say(f"  resident now ({len(resident)} of budget {max_models}): {', '.join(resident)}")
        keep = ("cache_hits", "loaded_models", "model_loading_seconds_sum", "evictions", "downloading_seconds_sum")
        for line in mgr.metrics_text().splitlines():
            if not line.startswith("#") and any(k in line for k in keep) and "_bucket" not in line:
                say("    " + line)
        await asyncio.gather(*(mgr.unload(s.name) for s in mgr.states() if s.state == "READY"))
    finally:
        await client.close()
        await mgr.close()
    return report


RENAMED_MANIFEST = """# a manifest declares a model; the repository is given, so nothing is generated from it
models:
  - {{name: unused, framework: python, inputs: [{{name: X, dtype: FP32, dims: [2]}}],
     outputs: [{{name: Y, dtype: FP32, dims: [2]}}]}}
endpoints:
  - {{name: seed003, mode: multi-model, store: '{store}'}}
"""


def run_renamed_copy_demo(copies: int = 3, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Seed article 003's habit: ``cp housing_NewYork_NY.tar.gz NY_<i>.tar.gz`` (nothing edited: each config still
    says ``name: "housing_NewYork_NY"``), then ``invoke_endpoint(TargetModel="NY_<i>.tar.gz")`` with boto3 through
    ``tritonctl serve``'s gateway. Each copy is served under its TargetModel and predicts what the original predicts."""
    import json
    import shutil

    import boto3

    from toolkit import ServeConfig, start

    x, _ = generate("NewYork_NY", 2, seed=11)
    want = expected_prices("NewYork_NY", x)
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tritonctl-renamed-") as tmp:
        work = Path(tmp)
        original = build_city_store(work / "original", n=1)[model_name("NewYork_NY")]
        store, repo = work / "store", work / "repo"
        store.mkdir()
        repo.mkdir()
        for i in range(copies):
            shutil.copyfile(original, store / f"NY_{i}.tar.gz")
        (work / "tritonctl.yaml").write_text(RENAMED_MANIFEST.format(store=store))
        say(f"store {store}: {copies} copies of {original.name} saved as NY_0.tar.gz ... NY_{copies - 1}.tar.gz")
        ports = {"http_port": 0, "grpc_port": 0, "metrics_port": 0, "gateway_port": 0, "gateway_grpc_port": 0}
        config = ServeConfig(repository=repo, manifest=work / "tritonctl.yaml", store=str(store), **ports)
        with start(config) as serving:
            sm = boto3.client("sagemaker-runtime", endpoint_url=serving.url, region_name="us-east-1",
                              aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="demo-secret")  # fmt: skip
            body = json.dumps({"inputs": [{"name": "raw", "shape": list(x.shape), "datatype": "FP32",
                                           "data": x.ravel().tolist()}]})  # fmt: skip
            for i in range(copies):
                t0 = time.perf_counter()
                r = sm.invoke_endpoint(EndpointName="seed003", TargetModel=f"NY_{i}.tar.gz",
                                       ContentType="application/json", Body=body)  # fmt: skip
                ms = (time.perf_counter() - t0) * 1000
                out = json.loads(r["Body"].read())
                got = np.asarray(next(o["data"] for o in out["outputs"] if o["name"] == "price"), dtype=np.float64)
                ok = bool(np.allclose(got, want, rtol=1e-4))
                result[f"NY_{i}"] = {"model": out.get("model_name"), "ok": ok, "ms": ms}
                say(f"  TargetModel=NY_{i}.tar.gz -> served as {out.get('model_name')!r} in {ms:5.1f} ms (cold), "
                    f"prices {np.round(got, 0)} = housing_NewYork_NY's: {ok}")  # fmt: skip
    return result


def run_mme_demo(
    n: int = 50, invoke: int = 6, max_models: int = 4, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """Build ``n`` city artifacts, then serve ``invoke`` cities from a local store and from S3 (moto server)."""
    import logging
    import os
    import shutil

    from moto.server import ThreadedMotoServer

    from toolkit.mme.stores import LocalStore, S3Store
    from toolkit.server import EmbeddedTriton, ServerOptions, free_port

    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tritonctl-mme-demo-") as tmp:
        work = Path(tmp)
        say(f"building {n} city models into {work / 'store'} ...")
        artifacts = build_city_store(work / "store", n)
        picks = [name.removeprefix("housing_") for name in list(artifacts)[: max(1, invoke)]]
        repo = work / "repo"
        repo.mkdir()
        server = EmbeddedTriton(ServerOptions(repository=repo, workdir=work, log_file=work / "triton.log"))
        server.start(timeout=90)
        moto: ThreadedMotoServer | None = None
        try:
            say(f"serving from a local store (max {max_models} models resident):")
            result["local"] = asyncio.run(
                _serve(server.endpoint, repo, LocalStore(work / "store"), picks, max_models, say)
            )
            for d in repo.iterdir():
                shutil.rmtree(d)
            os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
            os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
            logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request access log
            port = free_port()
            moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            moto.start()
            s3 = S3Store("mme-demo", "housing", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
            s3.client.create_bucket(Bucket="mme-demo")
            for name, path in artifacts.items():
                s3.client.upload_file(str(path), "mme-demo", f"housing/{name}.tar.gz")
            say(f"serving from s3://mme-demo/housing on a moto server at 127.0.0.1:{port}:")
            result["s3"] = asyncio.run(_serve(server.endpoint, repo, s3, picks, max_models, say))
        finally:
            if moto is not None:
                moto.stop()
            server.stop()
    return result


if __name__ == "__main__":
    run_mme_demo()
