"""Multiplexing's pure parts, without Triton: the request rewrite (the authorized name always wins), which artifacts
a host may serve, the host's config, and folding host counters into metrics across a host restart."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import orjson
import pytest

from toolkit.gateway.errors import ValidationError
from toolkit.gateway.mux_rewrite import MUX_PARAM, from_host, to_host
from toolkit.mme.metrics import MMEMetrics
from toolkit.mme.muxspec import ADAPTER, HostSettings, host_config, read_artifact, signature_of, write_host
from toolkit.mme.muxstats import HostStats
from toolkit.repository.config import parse_config
from toolkit.repository.generate import render_model_dir
from toolkit.spec.models import ModelSpec, TensorSpec

IHCL = "Inference-Header-Content-Length"


def test_the_authorized_name_overwrites_the_clients_parameter() -> None:
    body = json.dumps({"inputs": [], "parameters": {MUX_PARAM: "victim", "keep": 1}}).encode()
    out, headers = to_host("mine", body, {"Content-Type": "application/json"})
    assert orjson.loads(out)["parameters"] == {MUX_PARAM: "mine", "keep": 1}
    assert headers == {"Content-Type": "application/json"}


def test_a_binary_body_keeps_its_tensors_and_gets_the_new_header_length() -> None:
    head = json.dumps({"inputs": [{"name": "x", "parameters": {"binary_data_size": 4}}]}).encode()
    out, headers = to_host("m", head + b"\x01\x02\x03\x04", {IHCL: str(len(head)), "Content-Type": "x"})
    n = int(headers[IHCL])
    assert orjson.loads(out[:n])["parameters"] == {MUX_PARAM: "m"} and out[n:] == b"\x01\x02\x03\x04"


@pytest.mark.parametrize("body", [b"[]", b"{", json.dumps({"parameters": [1]}).encode()])
def test_a_body_that_cannot_carry_the_parameter_is_refused(body: bytes) -> None:
    with pytest.raises(ValidationError):
        to_host("m", body, {})


def test_the_answer_names_the_model_not_the_host() -> None:
    head = json.dumps({"model_name": "tritonctl_mux_abc", "outputs": []}).encode()
    headers = {IHCL: str(len(head))}
    out = from_host("housing_x", head + b"TAIL", headers)
    assert orjson.loads(out[: int(headers[IHCL])])["model_name"] == "housing_x" and out.endswith(b"TAIL")
    assert from_host("m", b"not json", {}) == b"not json"


def _numpy_model(tmp: Path, name: str = "m", dims: int = 8) -> Path:
    src = tmp / f"{name}.py"
    src.write_text("def predict(inputs):\n    return {'y': inputs['x']}\n")
    spec = ModelSpec(
        name=name,
        framework="numpy",
        artifact=src,
        max_batch_size=8,
        inputs=[TensorSpec(name="x", dtype="FP32", dims=[dims])],
        outputs=[TensorSpec(name="y", dtype="FP32", dims=[dims])],
    )
    return render_model_dir(spec, tmp / "models")


def test_an_adapter_model_is_servable_with_its_signature(tmp_path: Path) -> None:
    d = _numpy_model(tmp_path)
    got = read_artifact(d, "m", 1 << 20)
    assert not isinstance(got, str)
    assert (got.framework, got.artifact) == ("numpy", "1/m.py")
    assert got.signature == signature_of(parse_config((d / "config.pbtxt").read_text()))
    (tmp_path / "b").mkdir()
    other = read_artifact(_numpy_model(tmp_path / "b", "n", dims=4), "n", 1 << 20)
    assert not isinstance(other, str) and other.signature != got.signature  # another shape: another host


def test_what_a_host_does_not_serve_keeps_its_own_stub(tmp_path: Path) -> None:
    d = _numpy_model(tmp_path)
    assert "over the host's limit" in str(read_artifact(d, "m", 10))
    (d / "1" / "model.py").write_text("# hand-written\n")
    assert "is not tritonctl's adapter" in str(read_artifact(d, "m", 1 << 20))
    shutil.copy(ADAPTER, d / "1" / "model.py")
    os.unlink(d / "1" / "m.py")
    assert "missing" in str(read_artifact(d, "m", 1 << 20))


def test_the_host_config_declares_the_signature_budgets_and_batching(tmp_path: Path) -> None:
    d = _numpy_model(tmp_path)
    cfg = parse_config((d / "config.pbtxt").read_text())
    host = host_config(cfg, "h", tmp_path, HostSettings(budget_bytes=123, max_models=7, policy="gdsf"))
    assert host.backend == "python" and host.max_batch_size == 8 and host.HasField("dynamic_batching")
    assert [t.name for t in host.input] == ["x"] and [t.name for t in host.output] == ["y"]
    params = {k: v.string_value for k, v in host.parameters.items()}
    assert params["tritonctl.mux.budget_bytes"] == "123" and params["tritonctl.mux.max_models"] == "7"
    assert params["tritonctl.mux.policy"] == "gdsf" and params["tritonctl.mux.signature"] == signature_of(cfg)
    repo, scratch = tmp_path / "repo", tmp_path / "scratch"
    repo.mkdir()
    scratch.mkdir()
    name = write_host(repo, d, tmp_path, HostSettings(), scratch)
    assert name == "tritonctl_mux_" + signature_of(cfg) and (repo / name / "1" / "model.py").is_file()


def test_counters_stay_monotonic_across_a_host_restart(tmp_path: Path) -> None:
    state = tmp_path / ".state"
    state.mkdir()
    metrics = MMEMetrics()
    stats = HostStats(tmp_path, metrics)

    def write(pid: int, hits: int, misses: int, evictions: int, seq: int, loads: list[float]) -> None:
        doc = {"pid": pid, "counts": {"a": [hits, misses, misses, 0, 0]}, "resident": {"a": 10}}
        doc.update(evictions=evictions, load_seq=seq, load_seconds=loads)
        (state / "h_0.json").write_text(json.dumps(doc))
        stats.refresh()

    write(1, 3, 1, 2, 1, [0.001])
    write(1, 5, 1, 2, 1, [0.001])  # two more hits; nothing else new
    assert metrics.cache_hit.get(model="a") == 5 and metrics.cache_miss.get(model="a") == 1
    assert metrics.loading.n == 1 and metrics.evictions.get() == 2
    write(2, 1, 1, 0, 1, [0.002])  # a new process: its counters restarted from zero
    assert metrics.cache_hit.get(model="a") == 6 and metrics.cache_miss.get(model="a") == 2
    assert metrics.loading.n == 2 and metrics.invocations.get(model="a") == 8
