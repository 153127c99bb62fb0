"""Load tests against the real embedded Triton (shared session fixture); the pure pieces they rest on (histograms,
scenarios, server-stats arithmetic) are tests/unit/test_loadtest_offline.py.

Two short headless runs share the module: a 5-second HTTP run of a healthy model (report with throughput, no errors,
per-model server breakdown, HTML/CSV/PNG files) and a 2-second gRPC run that mixes a healthy target with one sending
a wrong shape (the error shows up by type, only on that target).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from toolkit.cli.loadtest import loadtest
from toolkit.loadtest.report import write_report
from toolkit.loadtest.runner import RunOptions, run_loadtest
from toolkit.loadtest.scenario import LoadTestError, load_scenario, parse_scenario
from toolkit.server import EmbeddedTriton, TritonAdmin

MODEL = "digits_logreg"
ROOT = Path(__file__).resolve().parents[2]


# -- real runs -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def loaded(triton: EmbeddedTriton, admin: TritonAdmin) -> EmbeddedTriton:
    admin.load(MODEL)
    return triton


def test_http_run_report_has_throughput_no_errors_and_server_breakdown(loaded: EmbeddedTriton, tmp_path: Path) -> None:
    ep = loaded.endpoint
    opts = RunOptions(scenario=load_scenario("single_model"), target=ep.http_url, users=2, duration=5.0)
    report = run_loadtest(opts)
    total = report["client"]["total"]
    assert total["count"] > 50 and total["throughput_rps"] > 10
    assert total["errors"] == 0 and report["client"]["errors"] == []
    assert 0 < total["p50_ms"] <= total["p90_ms"] <= total["p99_ms"] <= total["max_ms"]
    srv = report["server"][MODEL]
    assert srv["compute_infer_us"] > 0 and srv["queue_us"] >= 0 and srv["failed"] == 0
    # the server saw what the client sent (the windows differ by the requests in flight at the edges)
    assert abs(srv["requests"] - total["count"]) <= 2 * opts.users + 2
    assert sum(r["rps"] for r in report["timeseries"]) >= total["count"]
    html = write_report(report, tmp_path / "r")
    for f in (
        "report.json",
        "client.csv",
        "timeseries.csv",
        "errors.csv",
        "server.csv",
        "throughput.png",
        "latency.png",
        "server.png",
    ):
        assert (tmp_path / "r" / f).stat().st_size > 0, f
    page = html.read_text()
    assert MODEL in page and "compute infer (µs)" in page and "<img src='latency.png'" in page


def test_bad_shape_shows_up_as_errors_by_type_grpc(loaded: EmbeddedTriton) -> None:
    sc = parse_scenario(
        {
            "name": "bad_shape",
            "protocol": "grpc",
            "targets": [
                {"model": MODEL, "name": "good", "weight": 1},
                {"model": MODEL, "name": "bad", "weight": 1, "inputs": {"X": {"dtype": "FP32", "shape": [63]}}},
            ],
        }
    )
    ep = loaded.endpoint
    report: dict[str, Any] = run_loadtest(
        RunOptions(scenario=sc, target=ep.grpc, triton_url=ep.http_url, users=2, duration=2.0)
    )
    per = report["client"]["per_target"]
    assert per["good"]["count"] > 0 and per["good"]["errors"] == 0
    assert per["bad"]["count"] == 0 and per["bad"]["errors"] > 0
    errors = report["client"]["errors"]
    assert {e["target"] for e in errors} == {"bad"}
    assert any("INVALID_ARG" in e["type"] and "63" in e["type"] for e in errors), errors
    assert report["client"]["total"]["errors"] == per["bad"]["errors"]


def test_sweep_through_the_cli_function_writes_the_curve(loaded: EmbeddedTriton, tmp_path: Path) -> None:
    lines: list[str] = []
    html = loadtest(
        "single_model",
        report_dir=tmp_path / "sweep",
        target=loaded.endpoint.http_url,
        duration="1.5s",
        sweep="1,2",
        progress=lines.append,
    )
    rows = list(csv.DictReader((tmp_path / "sweep" / "sweep.csv").read_text().splitlines()))
    assert [r["users"] for r in rows] == ["1", "2"] and all(float(r["throughput_rps"]) > 0 for r in rows)
    assert (tmp_path / "sweep" / "sweep.png").stat().st_size > 0
    assert (tmp_path / "sweep" / "c2" / "report.html").is_file() and "c2/report.html" in html.read_text()
    assert any("req/s" in line for line in lines)  # live progress was shown
    with pytest.raises(LoadTestError, match="bad --sweep"):
        loadtest("single_model", report_dir=tmp_path / "x", target=loaded.endpoint.http_url, sweep="1,two")


def test_plain_locustfile_runs_the_same_users(loaded: EmbeddedTriton) -> None:
    env = dict(os.environ, TRITONCTL_SCENARIO="single_model")
    cmd = [
        str(Path(sys.executable).parent / "locust"),
        "-f",
        str(ROOT / "load" / "locustfile.py"),
        "--host",
        loaded.endpoint.http_url,
        "--headless",
        "-u",
        "2",
        "-r",
        "2",
        "-t",
        "2s",
        "--only-summary",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    agg = next(line for line in (r.stdout + r.stderr).splitlines() if "Aggregated" in line)  # the summary: stderr
    assert int(agg.split()[1]) > 10 and "0(0.00%)" in agg
