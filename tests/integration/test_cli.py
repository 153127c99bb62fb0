"""The CLI against a real embedded Triton: clear one-line errors and non-zero exits, never tracebacks."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from examples.digits import load_numpy_module, load_split
from tests.waiting import wait_until
from toolkit.cli.main import app
from toolkit.server import EmbeddedTriton, TritonAdmin

runner = CliRunner()
# The file Triton runs for digits_mlp (the numpy adapter imports it), called in-process: what invoke must print.
MLP: Any = load_numpy_module(Path(__file__).resolve().parents[2] / "examples" / "artifacts" / "digits_mlp.py")


def run(*args: str) -> tuple[int, str, str]:
    r = runner.invoke(app, list(args))
    return r.exit_code, r.stdout, r.stderr


@pytest.fixture(scope="module")
def url(triton: EmbeddedTriton, admin: TritonAdmin) -> str:
    admin.load("digits_mlp")
    return triton.endpoint.http_url


def test_models_list_load_unload_ready(url: str, admin: TritonAdmin) -> None:
    code, out, _ = run("models", "load", "housing_Chicago_IL", "--url", url)
    assert code == 0 and "housing_Chicago_IL: READY" in out
    code, out, _ = run("models", "list", "--url", url, "--json")
    states = {m["name"]: m.get("state") for m in json.loads(out)}
    assert states["housing_Chicago_IL"] == "READY" and "digits_forest" in states
    assert run("models", "ready", "housing_Chicago_IL", "--url", url)[0] == 0
    assert run("models", "unload", "housing_Chicago_IL", "--url", url)[0] == 0
    code, out, _ = run("models", "ready", "housing_Chicago_IL", "--url", url)
    assert code == 1 and "NOT READY" in out
    # `models unload` returns once Triton accepted it; the stub takes ~2 s to go, and until then Triton (strict
    # readiness) is not ready: the tests after this one must not depend on how fast they happen to start.
    wait_until(admin.ready, 30, "Triton ready again once housing_Chicago_IL is unloaded")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_invoke_json_and_npy(url: str, tmp_path: Path, protocol: str, triton: EmbeddedTriton) -> None:
    _, x_test, _, y_test = load_split()
    want = MLP.predict({"X": x_test[:3]})
    np.save(tmp_path / "x.npy", x_test[:3])
    over = ["--protocol", protocol, "--url", url, "--grpc-url", triton.endpoint.grpc, "--json"]
    code, out, err = run("invoke", "digits_mlp", "-i", f"X=@{tmp_path / 'x.npy'}", *over)
    assert code == 0, err
    got = json.loads(out)
    assert sorted(got) == ["label", "probabilities"]
    np.testing.assert_allclose(np.asarray(got["probabilities"]), want["probabilities"], rtol=1e-5, atol=1e-7)
    assert got["label"] == [[int(v)] for v in want["label"]]
    assert sum(a == b for a, b in zip(want["label"], y_test[:3], strict=True)) >= 2  # a sample the model gets right
    # a single sample without the batch dimension, as JSON: sent as a batch of one
    code, out, err = run("invoke", "digits_mlp", "-i", "X=" + json.dumps(x_test[0].tolist()), *over)
    assert code == 0, err
    one = json.loads(out)
    assert np.asarray(one["probabilities"]).shape == (1, 10) and one["label"] == [[int(want["label"][0])]]
    np.testing.assert_allclose(one["probabilities"][0], want["probabilities"][0], rtol=1e-5, atol=1e-7)


def test_invoke_errors_are_one_line(url: str) -> None:
    cases = {
        ("invoke", "no_such_model", "-i", "X=[1]", "--url", url): "no_such_model",
        ("invoke", "digits_mlp", "-i", "X=[1,2,3]", "--url", url): "shape",
        ("invoke", "digits_mlp", "-i", "Z=[1]", "--url", url): "has no input 'Z'",
        ("invoke", "digits_mlp", "-i", "X=[1,", "--url", url): "not valid JSON",
        ("invoke", "digits_mlp", "-i", "X=@/nonexistent.npy", "--url", url): "not found",
        ("invoke", "digits_mlp", "-i", 'X=["a"]', "--url", url): "cannot convert",
        ("invoke", "digits_mlp", "-i", "X=[1]", "--url", "http://127.0.0.1:9"): "unreachable",
        ("status", "--url", "http://127.0.0.1:9"): "not reachable",
    }
    for args, needle in cases.items():
        code, out, err = run(*args)
        assert code == 1, (args, out, err)
        assert err.startswith("error: ") and needle in err, (args, err)
        assert "Traceback" not in err


def _inference_count(metrics_text: str, model: str) -> float:
    m = re.search(rf'^nv_inference_count{{model="{model}",version="1"}} (\S+)$', metrics_text, re.MULTILINE)
    assert m, metrics_text
    return float(m.group(1))


def test_status_and_metrics(url: str, triton: EmbeddedTriton) -> None:
    code, out, _ = run("status", "--url", url)
    assert code == 0 and "triton" in out and "digits_mlp" in out
    metrics = ("metrics", "--url", url, "--metrics-url", triton.endpoint.metrics)
    code, before, _ = run(*metrics)
    assert code == 0
    # the plain-text form: each output's name, dtype and shape, then its values (probabilities to 4 decimals)
    code, out, err = run("invoke", "digits_mlp", "-i", "X=" + json.dumps([0.0] * 64), "--url", url)
    assert code == 0, err
    want = MLP.predict({"X": np.zeros((1, 64), np.float32)})
    head, _, tail = out.partition("label int64 [1, 1]:")
    assert head.startswith("probabilities float32 [1, 10]:\n") and tail.strip() == f"[[{int(want['label'][0])}]]", out
    printed = [float(v) for v in re.findall(r"-?\d+\.\d*(?:e[-+]\d+)?", head.split("\n", 1)[1])]
    np.testing.assert_allclose(printed, want["probabilities"][0], atol=5e-5)
    code, after, _ = run(*metrics)
    assert code == 0
    assert _inference_count(after, "digits_mlp") - _inference_count(before, "digits_mlp") == 1  # that invoke


def test_json_of_status_models_mme_and_metrics(url: str, triton: EmbeddedTriton, example_repo: Path) -> None:
    """Every data-printing command's --json is one document that parses, with the facts the text form shows."""
    code, out, err = run("status", "--url", url, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["live"] is True and doc["ready"] is True and "digits_mlp" in doc["loaded"], err
    assert doc["server"] == "triton" and doc["url"] == url
    code, out, _ = run("models", "ready", "digits_forest", "--url", url, "--json")
    assert code == 1 and json.loads(out) == {"model": "digits_forest", "ready": False}
    code, out, err = run("mme", "list", "--url", url, "-r", str(example_repo), "--json")
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["digits_mlp"]["state"] == "READY" and rows["digits_forest"]["state"] == "UNLOADED"
    assert rows["digits_mlp"]["target_model"] == "digits_mlp"
    assert run("invoke", "digits_mlp", "-i", "X=" + json.dumps([0.0] * 64), "--url", url)[0] == 0
    code, out, err = run("metrics", "--url", url, "--metrics-url", triton.endpoint.metrics, "--json")
    assert code == 0, err
    samples = json.loads(out)
    counts = [s for s in samples if s["name"] == "nv_inference_count" and s["labels"].get("model") == "digits_mlp"]
    assert len(counts) == 1 and counts[0]["value"] >= 1


def test_invoke_model_version_and_its_old_spelling(url: str) -> None:
    x = "X=" + json.dumps([0.0] * 64)
    for flag in ("--model-version", "--version"):
        code, out, err = run("invoke", "digits_mlp", "-i", x, "--url", url, flag, "1", "--json")
        assert code == 0 and sorted(json.loads(out)) == ["label", "probabilities"], err
    code, _, err = run("invoke", "digits_mlp", "-i", x, "--url", url, "--model-version", "7")
    assert code == 1 and err.startswith("error: ") and "7" in err, err
