"""Native ``pytorch_libtorch`` artifacts (a TorchScript ``1/model.pt`` with the config NVIDIA's container expects:
``INPUT__0``/``OUTPUT__0`` names, ``max_batch_size``, dims, a GPU instance group) from an MME store, through a real
``tritonctl serve`` (the library's ``start``: embedded Triton, model manager, gateway) and real clients (boto3
``invoke_endpoint`` with TargetModel, tritonclient HTTP). The cached copy is adapted to the python adapter, which runs
the same file with torch; the answers are compared with torch's own on the same file.

Skipped where torch is not importable (CI: the project venv has no torch). To run it, install torch outside the venv
and put it on PYTHONPATH; Triton's python stub ignores PYTHONPATH (its interpreter is isolated) and the adapter puts
the entries on ``sys.path`` itself, which the first test would fail without ("No module named 'torch'")::

    python -m pip install --no-deps --target /work/torchlib torch-...-cp311-....whl filelock fsspec
    PYTHONPATH=$PWD:/work/torchlib python -m pytest tests/integration/test_mme_torch.py
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
import tritonclient.http as httpclient
from botocore.config import Config

from toolkit import ServeConfig, Serving, start

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.(script|load)` is deprecated:DeprecationWarning")

FREE: dict[str, Any] = {"http_port": 0, "grpc_port": 0, "metrics_port": 0, "gateway_port": 0, "gateway_grpc_port": 0}

# What NVIDIA's container expects for a libtorch model (its docs' config, as SageMaker's MME samples ship it): the
# `__N` names give the position of the tensor in forward()'s arguments and in its returned tuple.
MLP_CONFIG = """name: "mlp"
platform: "pytorch_libtorch"
max_batch_size: 8
input [{ name: "INPUT__0" data_type: TYPE_FP32 dims: [4] }]
output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [3] }]
instance_group [{ kind: KIND_GPU count: 1 }]
dynamic_batching { max_queue_delay_microseconds: 2000 }
"""
# Two inputs and two outputs listed out of their index order: only the `__N` index says which argument is which.
PAIR_CONFIG = """platform: "pytorch_libtorch"
max_batch_size: 8
input [
  { name: "INPUT__1" data_type: TYPE_FP32 dims: [2] },
  { name: "INPUT__0" data_type: TYPE_FP32 dims: [4] }
]
output [
  { name: "OUTPUT__1" data_type: TYPE_FP32 dims: [1] },
  { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [2] }
]
"""


Module: Any = torch.nn.Module


class Pair(Module):
    """forward(a, b) -> (a @ W + b, sum(a * a)): swapping the inputs or the outputs changes the numbers or shapes.
    forward is unannotated on purpose: TorchScript reads its arguments as Tensors (a ``typing.Any`` would not do)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.arange(8, dtype=torch.float32).reshape(4, 2) / 7.0)

    def forward(self, a, b):  # type: ignore[no-untyped-def]
        return a @ self.w + b, (a * a).sum(dim=1, keepdim=True)


# Inputs named like forward()'s arguments, listed in another order: libtorch binds them by name.
NAMED_CONFIG = """platform: "pytorch_libtorch"
max_batch_size: 8
input [
  { name: "scale" data_type: TYPE_FP32 dims: [1] },
  { name: "x" data_type: TYPE_FP32 dims: [4] }
]
output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [4] }]
"""


class Named(Module):
    """forward(x, scale) -> x - scale: the inputs swapped give scale - x."""

    def forward(self, x, scale):  # type: ignore[no-untyped-def]
        return x - scale


def scripted(module: Any, path: Path) -> Path:
    """TorchScript, as libtorch loads it (``torch.jit.load``)."""
    torch.jit.script(module.eval()).save(str(path))
    return path


def pack(out: Path, files: dict[str, bytes | str]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:gz") as tf:
        for name, data in files.items():
            raw = data.encode() if isinstance(data, str) else data
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tf.addfile(info, io.BytesIO(raw))


def own(path: Path, *args: np.ndarray) -> list[np.ndarray]:
    """torch's own answer on the file the store holds, in the test process."""
    net = torch.jit.load(str(path), map_location="cpu").eval()
    with torch.no_grad():
        res = net(*[torch.from_numpy(a) for a in args])
    return [r.numpy() for r in (res if isinstance(res, tuple) else (res,))]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("torch_models")
    torch.manual_seed(13)
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    return {
        "mlp": scripted(mlp, work / "mlp.pt"),
        "pair": scripted(Pair(), work / "pair.pt"),
        "named": scripted(Named(), work / "named.pt"),
    }


@pytest.fixture(scope="module")
def serving(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    """``tritonctl serve repo --store DIR --endpoint mme`` over a store holding the two TorchScript models as a
    SageMaker prefix would: one in a folder named unlike its TargetModel (AWS's samples pack ``resnet/`` in
    ``resnet_pt_v0.tar.gz``), one flat under a nested TargetModel."""
    base = tmp_path_factory.mktemp("torch_serve")
    (base / "repo").mkdir()
    store = base / "store"
    pack(store / "mlp_pt_v0.tar.gz", {"mlp/config.pbtxt": MLP_CONFIG, "mlp/1/model.pt": models["mlp"].read_bytes()})
    pack(store / "pt" / "pair.tar.gz", {"config.pbtxt": PAIR_CONFIG, "1/model.pt": models["pair"].read_bytes()})
    pack(store / "pt" / "named.tar.gz", {"config.pbtxt": NAMED_CONFIG, "1/model.pt": models["named"].read_bytes()})
    config = ServeConfig(repository=base / "repo", store=str(store), endpoint="mme", load_wait_s=3.0, **FREE)
    with start(config, echo=lambda _: None) as running:
        yield running


def invoke(serving: Serving, target: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """boto3 ``invoke_endpoint`` (JSON body); retries ModelNotReadyException as SageMaker clients do (the stub's
    ``import torch`` is a few seconds on a busy machine, over the 3 s wait budget)."""
    sm = boto3.client(
        "sagemaker-runtime", endpoint_url=serving.url, region_name="us-east-1", aws_access_key_id="AKIDTEST",
        aws_secret_access_key="x", config=Config(retries={"max_attempts": 1}, read_timeout=120),
    )  # fmt: skip
    body = {
        "inputs": [
            {"name": n, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
            for n, x in inputs.items()
        ]
    }
    for _ in range(60):
        try:
            r = sm.invoke_endpoint(
                EndpointName="mme", TargetModel=target, ContentType="application/json", Body=json.dumps(body)
            )
            out = json.loads(r["Body"].read())["outputs"]
            return {o["name"]: np.asarray(o["data"], dtype=np.float32).reshape(o["shape"]) for o in out}
        except sm.exceptions.ModelNotReadyException:
            time.sleep(0.5)
    raise AssertionError(f"{target} never became ready")


def http_infer(serving: Serving, model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
    """tritonclient HTTP with binary tensors: the float32 bytes as the adapter returned them."""
    tensors = []
    for name, x in inputs.items():
        t = httpclient.InferInput(name, list(x.shape), "FP32")
        t.set_data_from_numpy(x, binary_data=True)
        tensors.append(t)
    wanted = [httpclient.InferRequestedOutput(o, binary_data=True) for o in outputs]
    with httpclient.InferenceServerClient(serving.http) as client:
        res = client.infer(model, tensors, outputs=wanted)
    return [res.as_numpy(o) for o in outputs]


ROWS = np.random.default_rng(13).standard_normal((6, 4)).astype(np.float32)
B = np.random.default_rng(14).standard_normal((6, 2)).astype(np.float32)


def test_a_libtorch_model_answers_what_torch_computes_on_its_file(serving: Serving, models: dict[str, Path]) -> None:
    """One row and a batch of six, through boto3 (JSON) and tritonclient (binary): equal to torch's own answer on
    the same file, bit for bit (the same torch, the same rows in one call: the same kernels). The cached copy is
    the adapter's, named after the TargetModel, on the CPU."""
    for x in (ROWS[:1], ROWS):
        (want,) = own(models["mlp"], x)
        got = invoke(serving, "mlp_pt_v0.tar.gz", {"INPUT__0": x})
        assert list(got) == ["OUTPUT__0"] and got["OUTPUT__0"].shape == (len(x), 3)
        np.testing.assert_array_equal(got["OUTPUT__0"], want)  # JSON floats round-trip float32 exactly
        (binary,) = http_infer(serving, "mlp_pt_v0", {"INPUT__0": x}, ["OUTPUT__0"])
        np.testing.assert_array_equal(binary, want)
    assert serving.repository is not None
    config = (serving.repository / "mlp_pt_v0" / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and 'name: "mlp_pt_v0"' in config and "pytorch_libtorch" not in config
    assert "KIND_CPU" in config and "max_batch_size: 8" in config and "dynamic_batching" in config
    assert (serving.repository / "mlp_pt_v0" / "1" / "model.py").is_file()
    with httpclient.InferenceServerClient(serving.http) as client:
        meta = client.get_model_metadata("mlp_pt_v0")
    assert [(t["name"], t["shape"]) for t in meta["inputs"]] == [("INPUT__0", [-1, 4])]
    assert [(t["name"], t["shape"]) for t in meta["outputs"]] == [("OUTPUT__0", [-1, 3])]


def test_two_inputs_and_outputs_follow_the_libtorch_index_not_the_config_order(
    serving: Serving, models: dict[str, Path]
) -> None:
    """INPUT__0 is forward()'s first argument and OUTPUT__0 its first result, whatever order the config lists them
    in (here INPUT__1 and OUTPUT__1 first) and the request sends them in."""
    want_0, want_1 = own(models["pair"], ROWS, B)
    got = invoke(serving, "pt/pair.tar.gz", {"INPUT__1": B, "INPUT__0": ROWS})
    np.testing.assert_array_equal(got["OUTPUT__0"], want_0)
    np.testing.assert_array_equal(got["OUTPUT__1"], want_1)
    three = {"INPUT__0": ROWS[:3], "INPUT__1": B[:3]}
    out_0, out_1 = http_infer(serving, "pt..pair", three, ["OUTPUT__0", "OUTPUT__1"])
    first_0, first_1 = own(models["pair"], ROWS[:3], B[:3])
    np.testing.assert_array_equal(out_0, first_0)
    np.testing.assert_array_equal(out_1, first_1)
    assert out_0.shape == (3, 2) and out_1.shape == (3, 1)


def test_inputs_named_like_forwards_arguments_are_bound_by_name(serving: Serving, models: dict[str, Path]) -> None:
    """Triton's libtorch backend binds inputs named like forward()'s arguments by name, whatever the config order
    (here ``scale`` before ``x``)."""
    scale = np.array([[1.0], [-2.0], [0.5]], dtype=np.float32)
    (want,) = own(models["named"], ROWS[:3], scale)
    got = invoke(serving, "pt/named.tar.gz", {"x": ROWS[:3], "scale": scale})
    np.testing.assert_array_equal(got["OUTPUT__0"], want)


def test_concurrent_requests_batched_together_answer_their_own_rows(serving: Serving, models: dict[str, Path]) -> None:
    """Dynamic batching may run several requests as one torch call (the adapter concatenates, then splits): each
    answer is its own rows' result. Within 1e-6 relative rather than bit for bit: a GEMM over more rows may sum in
    another order."""
    invoke(serving, "mlp_pt_v0.tar.gz", {"INPUT__0": ROWS[:1]})  # resident
    parts = [ROWS[k % 6 : k % 6 + 1 + k % 2] for k in range(16)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda x: http_infer(serving, "mlp_pt_v0", {"INPUT__0": x}, ["OUTPUT__0"]), parts))
    for x, (got,) in zip(parts, answers, strict=True):
        (want,) = own(models["mlp"], x)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
