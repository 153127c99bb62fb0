"""Why ``tritonctl deploy`` runs a ``serial`` endpoint as a Triton ensemble in one container and offers no SageMaker
inference pipeline of Triton containers: SageMaker posts each container's response body to the next container, and
Triton's own SageMaker front end (``--allow-sagemaker``, the one NVIDIA's container serves, here in the embedded
tritonserver 2.51) answers a KServe *response* with an error: it reads only requests (``inputs``). Measured here with
two Tritons as the two containers; if a later Triton accepts it, this test fails and the pipeline can be offered."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from toolkit.server import EmbeddedTriton, ServerOptions, free_port


def _post(port: int, body: bytes, content_type: str) -> tuple[int, str, bytes]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", data=body, method="POST", headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def _wait_for_ping(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        assert time.monotonic() < deadline, f"Triton's SageMaker port {port} did not answer /ping"
        time.sleep(0.1)


@pytest.fixture
def containers(example_repo: Path, tmp_path: Path) -> Iterator[list[int]]:
    """Two "containers": Tritons with the SageMaker front end, each serving one step as its default model."""
    servers, ports = [], []
    saved = os.environ.get("SAGEMAKER_TRITON_DEFAULT_MODEL_NAME")
    try:
        for model in ("housing_preprocess", "housing_Chicago_IL"):
            port = free_port()
            os.environ["SAGEMAKER_TRITON_DEFAULT_MODEL_NAME"] = model  # as the container's env sets it
            work = tmp_path / model
            work.mkdir()
            args = ["--allow-sagemaker=true", f"--sagemaker-port={port}"]
            t = EmbeddedTriton(ServerOptions(repository=example_repo, workdir=work, load=[model], extra_args=args))
            servers.append(t)
            t.start(timeout=120)
            _wait_for_ping(port)  # the SageMaker listener is not what start() waits for
            ports.append(port)
        yield ports
    finally:
        for t in servers:
            t.stop()
        if saved is None:
            os.environ.pop("SAGEMAKER_TRITON_DEFAULT_MODEL_NAME", None)
        else:
            os.environ["SAGEMAKER_TRITON_DEFAULT_MODEL_NAME"] = saved


def test_a_triton_container_cannot_take_the_previous_containers_response(containers: list[int]) -> None:
    first, second = containers
    raw = [1.0, 0.0, 1.0, 2000.0, 3.0, 2.0, 1.0, 10.0]
    request = json.dumps({"inputs": [{"name": "raw", "shape": [1, 8], "datatype": "FP32", "data": raw}]}).encode()
    status, content_type, response = _post(first, request, "application/json")
    assert status == 200 and json.loads(response)["outputs"][0]["name"] == "features"  # step 1 runs
    status, _, answer = _post(second, response, content_type or "application/json")  # what SageMaker passes on
    assert status >= 400 and b"inputs" in answer, (status, answer)
