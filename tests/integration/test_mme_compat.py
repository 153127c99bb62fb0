"""Artifacts built for the NGC/SageMaker Triton container, and SageMaker's observable MME behaviours, through a real
``tritonctl serve`` (the library's ``start``: embedded Triton, model manager, gateway) and real clients (boto3,
tritonclient HTTP and gRPC).

* Native ``onnxruntime_onnx`` artifacts (as ``generate --target triton``/``deploy`` build them, with a bare config
  completed from the graph, and an ensemble whose steps are native ONNX artifacts) answer what onnxruntime computes
  on the same files; backends this python-only Triton lacks are refused in one line naming the artifact and backend.
* ``ModelCacheSetting: Disabled`` (``--endpoint`` + ``--model-cache-setting``): the model is gone after each call.
* A load that outlasts ``--load-wait``: 429 ModelNotReadyException while the load goes on; the retry succeeds.
* A model that cannot fit even after eviction (declared above the whole byte budget; an ensemble whose steps fill
  ``--max-models``): 507 on the SageMaker and KServe routes, RESOURCE_EXHAUSTED over gRPC, one line naming the model
  and the budget.
"""

from __future__ import annotations

import importlib.util
import io
import json
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from botocore.config import Config
from botocore.exceptions import ClientError
from tritonclient.utils import InferenceServerException
from waiting import wait_until

from toolkit import ServeConfig, start
from toolkit.repository.config import build_config, render_config
from toolkit.repository.generate import GeneratedModel, model_files, write_model
from toolkit.repository.samples import SCALE_TEMPLATE, scale_model_spec, write_scale_model
from toolkit.spec import load_manifest

ROOT = Path(__file__).resolve().parents[2]
ART = ROOT / "examples" / "artifacts"
FREE = {"http_port": 0, "grpc_port": 0, "metrics_port": 0, "gateway_port": 0, "gateway_grpc_port": 0}
BUDGET = 4 * 2**30
MAX_MODELS = 3
STEP = '{{ model_name: "{m}" model_version: -1 input_map {{ key: "{i}" value: "{a}" }} output_map {{ key: "{o}" value: "{b}" }} }}'  # noqa: E501


OOM_MODEL = b"""class TritonPythonModel:
    def initialize(self, args):
        raise MemoryError("failed to allocate memory for the weights (on purpose)")
"""


def ensemble(inp: str, out: str, dims: tuple[int, int], batch: int, steps: list[tuple[str, str, str]]) -> str:
    """An ensemble config chaining ``steps`` (model, its input, its output), tensors named after the first input."""
    lines, prev = [], inp
    for k, (model, i, o) in enumerate(steps):
        nxt = out if k == len(steps) - 1 else f"t{k}"
        lines.append(STEP.format(m=model, i=i, a=prev, o=o, b=nxt))
        prev = nxt
    body = ",\n".join(lines)
    return (
        f'platform: "ensemble"\nmax_batch_size: {batch}\n'
        f'input [{{ name: "{inp}" data_type: TYPE_FP32 dims: [{dims[0]}] }}]\n'
        f'output [{{ name: "{out}" data_type: TYPE_FP32 dims: [{dims[1]}] }}]\n'
        f"ensemble_scheduling {{ step [\n{body}\n] }}\n"
    )


def pack(out: Path, files: dict[str, bytes | str]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:gz") as tf:
        for name, data in files.items():
            raw = data.encode() if isinstance(data, str) else data
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tf.addfile(info, io.BytesIO(raw))


def native(spec_name: str, folder: str) -> dict[str, bytes | str]:
    """What ``generate --target triton`` (and so ``tritonctl deploy``) packs for a manifest model (onnxruntime)."""
    spec = next(m for m in load_manifest(ROOT / "tritonctl.yaml").models if m.name == spec_name)
    gm = model_files(spec, "triton")
    assert gm.config.backend == "onnxruntime"
    files: dict[str, bytes | str] = {f"{folder}config.pbtxt": render_config(gm.config)}
    files.update({f"{folder}{r}": s if isinstance(s, bytes) else s.read_bytes() for r, s in gm.files.items()})
    return files


def tree(d: Path, folder: str = "") -> dict[str, bytes | str]:
    return {f"{folder}{p.relative_to(d).as_posix()}": p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def build_store(store: Path, work: Path) -> None:
    pack(store / "logreg.tar.gz", native("digits_logreg", "digits_logreg/"))  # deploy's layout, renamed
    pack(store / "onnx" / "prep.tar.gz", native("housing_preprocess_onnx", ""))  # flat
    pack(store / "onnx" / "chicago.tar.gz", native("housing_Chicago_IL_onnx", "chicago/"))
    chain = [("onnx..prep", "raw", "features"), ("onnx..chicago", "features", "price")]
    pack(store / "pipelines" / "chicago.tar.gz", {"config.pbtxt": ensemble("raw", "price", (8, 1), 32, chain),
                                                  "1/.keep": ""})  # fmt: skip
    bare = {"config.pbtxt": 'platform: "onnxruntime_onnx"\n', "1/model.onnx": (ART / "digits_logreg.onnx").read_bytes()}
    pack(store / "bare.tar.gz", bare)  # Triton's auto-complete fills the tensors from the graph
    pack(store / "engine.tar.gz", {"engine/config.pbtxt": 'platform: "tensorrt_plan"\n', "engine/1/model.plan": b"\0"})
    pack(store / "torch.tar.gz", {"config.pbtxt": 'platform: "pytorch_libtorch"\n', "1/model.pt": b"\0"})
    huge = scale_model_spec("huge")
    huge.parameters["tritonctl.memory_bytes"] = str(2**40)  # 1 TiB: above any budget
    write_model(GeneratedModel("huge", build_config(huge), {"1/model.py": SCALE_TEMPLATE}), work)
    pack(store / "huge.tar.gz", tree(work / "huge", "huge/"))
    pack(store / "slow.tar.gz", tree(write_scale_model(work, "slow", init_sleep_ms=6000)))
    pack(store / "plain.tar.gz", tree(write_scale_model(work, "plain", factor=3.0)))
    oom = tree(write_scale_model(work, "oom"))
    oom["1/model.py"] = OOM_MODEL
    pack(store / "oom.tar.gz", oom)
    for k in range(MAX_MODELS):
        pack(store / "steps" / f"s{k}.tar.gz", tree(write_scale_model(work, f"s{k}")))
    steps = [(f"steps..s{k}", "X", "Y") for k in range(MAX_MODELS)]  # 3 steps + the ensemble: 4 > --max-models 3
    pack(store / "pipelines" / "wide.tar.gz", {"config.pbtxt": ensemble("X", "Y", (2, 2), 0, steps), "1/.keep": ""})


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """``tritonctl serve repo --store DIR --endpoint mme --max-models 3 --memory-budget 4GiB --load-wait 3`` plus a
    manifest endpoint ``once`` over the same store with ``model_cache_setting: Disabled``."""
    base = tmp_path_factory.mktemp("compat")
    (base / "repo").mkdir()
    build_store(base / "store", base / "work")
    manifest = base / "tritonctl.yaml"
    manifest.write_text(  # a manifest declares a model; the repository is given, so nothing is generated from it
        "models:\n  - {name: unused, framework: python, inputs: [{name: X, dtype: FP32, dims: [2]}],\n"
        "     outputs: [{name: Y, dtype: FP32, dims: [2]}]}\n"
        f"endpoints:\n  - {{name: once, mode: multi-model, store: '{base / 'store'}', model_cache_setting: Disabled}}\n"
    )
    config = ServeConfig(
        repository=base / "repo", manifest=manifest, store=str(base / "store"), endpoint="mme",
        max_models=MAX_MODELS, memory_budget=BUDGET, load_wait_s=3.0, **FREE,
    )  # fmt: skip
    with start(config, echo=lambda _: None) as running:
        yield running


def runtime(serving: Any) -> Any:
    return boto3.client(
        "sagemaker-runtime", endpoint_url=serving.url, region_name="us-east-1", aws_access_key_id="AKIDTEST",
        aws_secret_access_key="x", config=Config(retries={"max_attempts": 1}, read_timeout=60),
    )  # fmt: skip


def invoke(serving: Any, target: str, name: str, x: np.ndarray, endpoint: str = "mme", retry: bool = True) -> Any:
    """boto3 ``invoke_endpoint``; like SageMaker clients, retries ModelNotReadyException (a cold chain of ONNX
    stubs can outlast the 3 s wait budget on a busy machine) unless ``retry`` is False."""
    body = {"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    sm = runtime(serving)
    for _ in range(20):
        try:
            r = sm.invoke_endpoint(
                EndpointName=endpoint, TargetModel=target, ContentType="application/json", Body=json.dumps(body)
            )
            return {
                o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in json.loads(r["Body"].read())["outputs"]
            }
        except sm.exceptions.ModelNotReadyException:
            if not retry:
                raise
            time.sleep(0.5)
    raise AssertionError(f"{target} never became ready")


def onnx(path: Path, **feeds: np.ndarray) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))


DIGITS = np.load(ROOT / "examples" / "digits_samples.npy")[:4].astype(np.float32)
RAW = np.array([[3, 2, 1500, 1, 0, 12, 4, 1], [4, 3, 2400, 0, 1, 3, 9, 2]], dtype=np.float32)


def test_native_onnx_artifacts_answer_what_onnxruntime_computes(serving: Any) -> None:
    want = onnx(ART / "digits_logreg.onnx", X=DIGITS)
    got = invoke(serving, "logreg.tar.gz", "X", DIGITS)
    assert got["label"].ravel().tolist() == want["label"].tolist()
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], rtol=1e-6)
    bare = invoke(serving, "bare.tar.gz", "X", DIGITS)  # tensors completed from the graph (max_batch_size 4)
    assert bare["label"].ravel().tolist() == want["label"].tolist()
    features = onnx(ART / "housing_preprocess.onnx", raw=RAW)["features"]
    price = onnx(ART / "housing_Chicago_IL.onnx", features=features)["price"]
    np.testing.assert_allclose(invoke(serving, "onnx/prep.tar.gz", "raw", RAW)["features"], features, rtol=1e-6)
    np.testing.assert_allclose(invoke(serving, "pipelines/chicago.tar.gz", "raw", RAW)["price"], price, rtol=1e-6)
    config = (serving.repository / "logreg" / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and 'name: "logreg"' in config  # the cached copy, adapted and renamed


def test_tritonclient_http_and_grpc_reach_the_adapted_models(serving: Any) -> None:
    want = onnx(ART / "digits_logreg.onnx", X=DIGITS)
    invoke(serving, "logreg.tar.gz", "X", DIGITS)  # warm (retrying a slow cold load, as SageMaker clients do)
    http = httpclient.InferenceServerClient(serving.http)
    grpc = grpcclient.InferenceServerClient(serving.grpc)
    try:
        for client, mod in ((http, httpclient), (grpc, grpcclient)):
            inp = mod.InferInput("X", list(DIGITS.shape), "FP32")
            inp.set_data_from_numpy(DIGITS)
            res = client.infer("logreg", [inp])
            assert res.as_numpy("label").ravel().tolist() == want["label"].tolist()
            assert np.array_equal(res.as_numpy("probabilities"), want["probabilities"])  # binary: bit for bit
        meta = http.get_model_metadata("logreg")
        assert [i["name"] for i in meta["inputs"]] == ["X"] and meta["inputs"][0]["shape"] == [-1, 64]
    finally:
        http.close()
        grpc.close()


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("engine.tar.gz", "backend tensorrt (platform tensorrt_plan) cannot run on this python-only Triton; export"),
        # with torch importable the model is adapted, and refused for the tensors libtorch cannot infer either
        ("torch.tar.gz", "declares no inputs or outputs; declare them (name, data_type, dims)")
        if importlib.util.find_spec("torch")
        else (
            "torch.tar.gz",
            "needs torch, and torch is not installed: pip install torch, or export the model to ONNX",
        ),
    ],
)
def test_backends_that_cannot_run_here_are_refused_in_one_line(serving: Any, target: str, says: str) -> None:
    with pytest.raises(ClientError) as err:
        invoke(serving, target, "X", DIGITS)
    error, meta = err.value.response["Error"], err.value.response["ResponseMetadata"]
    assert (meta["HTTPStatusCode"], error["Code"]) == (424, "ModelError")
    assert f"artifact '{target}'" in error["Message"] and says in error["Message"] and "\n" not in error["Message"]
    assert error["Message"].endswith(("Triton container", "to ONNX", "dims)"))  # what to change, not cut off


def _resident(serving: Any, name: str) -> bool:
    return any(s.name == name and s.state == "READY" for s in serving.models.states())


def _metric(serving: Any, name: str, model: str) -> float:
    for line in serving.models.metrics_text().splitlines():
        if line.startswith(f'{name}{{model="{model}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_model_cache_disabled_unloads_after_each_call(serving: Any) -> None:
    x = np.array([1.0, 2.0], dtype=np.float32)
    for _ in range(2):  # each call on `once` is a cold load (a miss), and the model is gone after it
        misses = _metric(serving, "tritonctl_mme_model_cache_misses_total", "plain")
        assert invoke(serving, "plain.tar.gz", "X", x, endpoint="once")["Y"].tolist() == [3.0, 6.0]
        assert _metric(serving, "tritonctl_mme_model_cache_misses_total", "plain") == misses + 1
        wait_until(lambda: not _resident(serving, "plain"), 30, "plain unloaded after its call", interval=0.05)
    invoke(serving, "plain.tar.gz", "X", x)  # the same model through `mme` (cache enabled) stays
    time.sleep(1.0)
    assert _resident(serving, "plain")


def test_a_load_outlasting_the_wait_budget_is_model_not_ready_while_it_goes_on(serving: Any) -> None:
    x = np.array([1.0, 2.0], dtype=np.float32)
    t0 = time.monotonic()
    with pytest.raises(ClientError) as err:
        invoke(serving, "slow.tar.gz", "X", x, retry=False)
    assert err.value.response["Error"]["Code"] == "ModelNotReadyException" and time.monotonic() - t0 < 5.5
    assert "slow" in err.value.response["Error"]["Message"]
    assert any(s.name == "slow" and s.state == "LOADING" for s in serving.models.states())  # the load goes on
    wait_until(lambda: _resident(serving, "slow"), 60, "slow READY", interval=0.1)
    assert invoke(serving, "slow.tar.gz", "X", x, retry=False)["Y"].tolist() == [2.0, 4.0]


def test_a_model_that_cannot_fit_is_507_naming_the_model_and_the_budget(serving: Any) -> None:
    x = np.array([1.0, 2.0], dtype=np.float32)
    with pytest.raises(ClientError) as err:
        invoke(serving, "huge.tar.gz", "X", x)
    error, meta = err.value.response["Error"], err.value.response["ResponseMetadata"]
    assert (meta["HTTPStatusCode"], error["Code"]) == (507, "InsufficientStorage")
    assert f"needs {2**40} bytes" in error["Message"] and f"memory budget of {BUDGET} bytes" in error["Message"]
    assert "Model huge " in error["Message"] and "\n" not in error["Message"]
    http = httpclient.InferenceServerClient(serving.http)
    grpc = grpcclient.InferenceServerClient(serving.grpc)
    try:
        for client, mod, status in ((http, httpclient, "507"), (grpc, grpcclient, "StatusCode.RESOURCE_EXHAUSTED")):
            inp = mod.InferInput("X", [2], "FP32")
            inp.set_data_from_numpy(x)
            with pytest.raises(InferenceServerException) as e:
                client.infer("huge", [inp])
            assert e.value.status() == status and "memory budget" in str(e.value)
    finally:
        http.close()
        grpc.close()


def test_an_ensemble_whose_steps_fill_the_budget_is_507_at_once(serving: Any) -> None:
    """Three steps pinned by their loading ensemble fill --max-models 3: nothing busy, loading or evictable could
    free the fourth place, so the answer comes at once (not a 429 after the load timeout)."""
    t0 = time.monotonic()
    with pytest.raises(ClientError) as err:
        invoke(serving, "pipelines/wide.tar.gz", "X", np.array([1.0, 2.0], dtype=np.float32))
    error, meta = err.value.response["Error"], err.value.response["ResponseMetadata"]
    assert (meta["HTTPStatusCode"], error["Code"]) == (507, "InsufficientStorage"), error
    assert "--max-models 3" in error["Message"] and "pinned by an ensemble" in error["Message"]
    assert time.monotonic() - t0 < 30  # the load timeout is 60 s


def test_a_load_that_runs_out_of_memory_is_507_as_sagemakers_front_end_answers(serving: Any) -> None:
    """Triton's own load failure whose message says out-of-memory (the strings SageMaker's Triton front end checks):
    507 with Triton's message, instead of 424."""
    with pytest.raises(ClientError) as err:
        invoke(serving, "oom.tar.gz", "X", np.array([1.0, 2.0], dtype=np.float32))
    error, meta = err.value.response["Error"], err.value.response["ResponseMetadata"]
    assert (meta["HTTPStatusCode"], error["Code"]) == (507, "InsufficientStorage"), error
    assert "Model oom cannot be loaded" in error["Message"] and "failed to allocate memory" in error["Message"]
