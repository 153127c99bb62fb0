"""The CLI against a real embedded Triton: clear one-line errors and non-zero exits, never tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from examples.digits import load_split
from toolkit.cli.main import app
from toolkit.server import EmbeddedTriton, TritonAdmin

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    r = runner.invoke(app, list(args))
    return r.exit_code, r.stdout, r.stderr


@pytest.fixture(scope="module")
def url(triton: EmbeddedTriton, admin: TritonAdmin) -> str:
    admin.load("digits_mlp")
    return triton.endpoint.http_url


def test_models_list_load_unload_ready(url: str) -> None:
    code, out, _ = run("models", "load", "housing_Chicago_IL", "--url", url)
    assert code == 0 and "housing_Chicago_IL: READY" in out
    code, out, _ = run("models", "list", "--url", url, "--json")
    states = {m["name"]: m.get("state") for m in json.loads(out)}
    assert states["housing_Chicago_IL"] == "READY" and "digits_forest" in states
    assert run("models", "ready", "housing_Chicago_IL", "--url", url)[0] == 0
    assert run("models", "unload", "housing_Chicago_IL", "--url", url)[0] == 0
    code, out, _ = run("models", "ready", "housing_Chicago_IL", "--url", url)
    assert code == 1 and "NOT READY" in out


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_invoke_json_and_npy(url: str, tmp_path: Path, protocol: str, triton: EmbeddedTriton) -> None:
    _, x_test, _, y_test = load_split()
    np.save(tmp_path / "x.npy", x_test[:3])
    code, out, err = run(
        "invoke",
        "digits_mlp",
        "-i",
        f"X=@{tmp_path / 'x.npy'}",
        "--protocol",
        protocol,
        "--url",
        url,
        "--grpc-url",
        triton.endpoint.grpc,
        "--json",
    )
    assert code == 0, err
    labels = [row[0] for row in json.loads(out)["label"]]
    expected = json.loads(run("invoke", "digits_mlp", "-i", f"X=@{tmp_path / 'x.npy'}", "--url", url, "--json")[1])
    assert labels == [row[0] for row in expected["label"]]
    assert sum(a == b for a, b in zip(labels, y_test[:3], strict=True)) >= 2
    # a single sample without the batch dimension, as JSON
    code, out, err = run("invoke", "digits_mlp", "-i", "X=" + json.dumps(x_test[0].tolist()), "--url", url, "--json")
    assert code == 0, err
    assert np.asarray(json.loads(out)["probabilities"]).shape == (1, 10)


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


def test_status_and_metrics(url: str, triton: EmbeddedTriton) -> None:
    code, out, _ = run("status", "--url", url)
    assert code == 0 and "triton" in out and "digits_mlp" in out
    run("invoke", "digits_mlp", "-i", "X=" + json.dumps([0.0] * 64), "--url", url)
    code, out, _ = run("metrics", "--url", url, "--metrics-url", triton.endpoint.metrics)
    assert code == 0 and 'nv_inference_count{model="digits_mlp"' in out
