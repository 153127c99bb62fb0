"""tritonctl tune on real embedded Tritons with perf_analyzer: config overrides loaded and restored, the climb and the
brute-force search with tiny budgets, --apply through generate, an ensemble's steps tuned end to end.

The searches are given a space whose answer is known whatever the machine's load: the original config has dynamic
batching with a 100 ms max queue delay, so at concurrency 1 every request waits ~100 ms and no concurrency meets a
40 ms p99; the same model without dynamic batching answers in a few ms. A search that does not find "dynamic batching
off" (or keeps an infeasible config, or never loads the other config) fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from toolkit.cli.main import app
from toolkit.repository.config import parse_config
from toolkit.repository.generate import generate_repository
from toolkit.server import EmbeddedTriton, TritonAdmin
from toolkit.spec import load_manifest
from toolkit.tune.measure import PerfAnalyzer, find_perf_analyzer
from toolkit.tune.run import TuneOptions, tune
from toolkit.tune.space import Point, Space
from toolkit.tune.target import Target

ROOT = Path(__file__).resolve().parents[2]
PA = ROOT / "tools" / "perf_analyzer" / "perf_analyzer"
pytestmark = pytest.mark.skipif(not PA.exists(), reason="perf_analyzer missing: make perf-analyzer")

MANIFEST = """\
# tuned by the tests
version: 1
x-post: &post  # a slow batcher: waits up to 100 ms for a batch
  framework: python
  artifact: {artifact}
  max_batch_size: 32
  dynamic_batching: {{preferred_batch_sizes: [8, 16], max_queue_delay_microseconds: 100000}}
  inputs:
    - {{name: price, dtype: FP32, dims: [1]}}
  outputs:
    - {{name: price_dollars, dtype: INT64, dims: [1]}}
models:
  - name: post
    <<: *post
"""
SLOW_BATCHER = Space(instances=(1,), max_batch=(32,), dynamic=(True, False), delays_us=(100_000,), concurrency=(1, 2))


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "tritonctl.yaml"
    path.write_text(MANIFEST.format(artifact=ROOT / "examples" / "python" / "housing_postprocess.py"))
    return path


def _essentials(cfg: dict) -> tuple:  # type: ignore[type-arg]
    return cfg["max_batch_size"], cfg.get("dynamic_batching"), [g["count"] for g in cfg["instance_group"]]


def test_config_override_loads_and_restore(admin: TritonAdmin, triton: EmbeddedTriton) -> None:
    """A point is loaded through the override (no restart), serves, and restore puts the original back -- also
    for the plain loads that follow (an override outlives the load that set it)."""
    target = Target.open(admin, "digits_mlp")
    original = admin.config("digits_mlp")
    assert target.start() == (Point(1, 64, True, 200),)
    target.load((Point(2, 4, True, 300),))
    cfg = admin.config("digits_mlp")
    assert cfg["max_batch_size"] == 4 and cfg["instance_group"][0]["count"] == 2
    assert cfg["dynamic_batching"]["preferred_batch_size"] == [4]  # [8, 16] rescaled under max batch 4
    assert cfg["dynamic_batching"]["max_queue_delay_microseconds"] == 300
    m = PerfAnalyzer(find_perf_analyzer(), triton.endpoint.grpc).measure("digits_mlp", 2)
    assert m.throughput > 0 and m.concurrency == 2
    target.load((Point(1, 8, False, 0),))
    assert "dynamic_batching" not in admin.config("digits_mlp")
    assert target.restore() == []
    assert _essentials(admin.config("digits_mlp")) == _essentials(original)
    admin.load("digits_mlp")  # a plain load now serves the files' config, as before the tuning
    assert admin.config("digits_mlp") == original


def test_climb_finds_the_feasible_config_and_apply_round_trips(manifest: Path, tmp_path: Path) -> None:
    result = tune(
        TuneOptions(model="post", p99_ms=40.0, manifest=manifest, space=SLOW_BATCHER, budget_s=60.0,
                    report_dir=tmp_path / "report", apply=True, price_per_hour=0.5),
    )  # fmt: skip
    o = result.outcome
    start = next(e for e in o.evaluations if e.assignment == (Point(1, 32, True, 100_000),))
    assert start.best(40.0) is None and (start.lowest_p99() or 0) > 40.0  # the slow batcher never meets 40 ms
    assert result.best is not None and result.best.assignment == (Point(1, 32, False, 0),)
    best = result.best.best(40.0)
    assert best is not None and best.p99_ms <= 40.0 and best.throughput > 0
    assert [s.verdict for s in o.path][:2] == ["start", "better"]
    assert result.cost(result.best) == pytest.approx(0.5 / (best.throughput * 3600) * 1e6)
    assert result.restore_problems == [] and result.applied and result.found
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["best"]["label"] == "1 inst, max batch 32, no dyn" and report["strategy"] == "climb"
    assert (tmp_path / "report" / "tune.png").stat().st_size > 10_000
    assert "cannot be told apart" in (tmp_path / "report" / "report.html").read_text().lower()
    # --apply: manifest -> tune -> manifest -> generate gives the tuned config.pbtxt; the anchor and comments stay
    text = manifest.read_text()
    assert "x-post: &post  # a slow batcher" in text and "max_queue_delay_microseconds: 100000" in text
    assert "    dynamic_batching: null  # tritonctl tune" in text
    generate_repository(load_manifest(manifest), tmp_path / "repo")
    cfg = parse_config((tmp_path / "repo" / "post" / "config.pbtxt").read_text())
    assert not cfg.HasField("dynamic_batching") and cfg.max_batch_size == 32 and cfg.instance_group[0].count == 1


def test_brute_measures_every_config(manifest: Path) -> None:
    space = Space(instances=(1, 2), max_batch=(32,), dynamic=(True, False), delays_us=(100_000,), concurrency=(1,))
    result = tune(TuneOptions(model="post", p99_ms=40.0, manifest=manifest, space=space, budget_s=90.0,
                              strategy="brute", report_dir=None))  # fmt: skip
    labels = sorted(e.label for e in result.outcome.evaluations)
    assert labels == sorted(p.label() for p in space.points()), labels
    assert all(e.measurements for e in result.outcome.evaluations)
    assert result.best is not None and result.best.assignment[0].dynamic is False
    assert not result.outcome.out_of_time


def test_ensemble_steps_tuned_end_to_end_within_budget(admin: TritonAdmin, triton: EmbeddedTriton) -> None:
    """On a running Triton (--url): the pipeline is measured while its three step models change; the budget stops
    the search; every step is restored."""
    name = "housing_pipeline_onnx_Chicago_IL"
    admin.load(name)
    steps = ["housing_preprocess_onnx", "housing_Chicago_IL_onnx", "housing_postprocess"]
    originals = {s: _essentials(admin.config(s)) for s in steps}
    space = Space(instances=(1, 2), max_batch=(32,), dynamic=(True, False), delays_us=(100, 500), concurrency=(1, 2))
    result = tune(TuneOptions(model=name, p99_ms=1000.0, manifest=None, url=triton.endpoint.http_url,
                              grpc_url=triton.endpoint.grpc, space=space,
                              budget_s=15.0, report_dir=None))  # fmt: skip
    assert result.ensemble and result.models == steps
    assert result.outcome.out_of_time and result.outcome.elapsed_s < 15.0 + 10.0
    changed = [e for e in result.outcome.evaluations if e.measurements and e.assignment != result.start_points]
    assert changed, "no step config other than the original was measured"
    assert result.restore_problems == []
    assert {s: _essentials(admin.config(s)) for s in steps} == originals


def test_cli_refuses_cost_without_a_price(manifest: Path) -> None:
    r = CliRunner().invoke(app, ["tune", "post", "--p99", "5ms", "--manifest", str(manifest), "--objective", "cost"])
    assert r.exit_code == 1 and "needs a price" in r.output
    r = CliRunner().invoke(app, ["tune", "post", "--p99", "soon", "--manifest", str(manifest)])
    assert r.exit_code == 1 and "bad duration 'soon'" in r.output


def test_no_config_meets_the_bound_apply_writes_nothing(manifest: Path) -> None:
    """The slow batcher alone against a 40 ms bound: nothing is found, the manifest is left as it was."""
    before = manifest.read_text()
    space = Space(instances=(1,), max_batch=(32,), dynamic=(True,), delays_us=(100_000,), concurrency=(1,))
    result = tune(TuneOptions(model="post", p99_ms=40.0, manifest=manifest, space=space, budget_s=30.0, apply=True))
    assert not result.found and not result.applied
    assert [e.label for e in result.outcome.evaluations] == ["1 inst, max batch 32, dyn 100000us"]
    assert "no config meets p99 <= 40 ms" in result.summary()
    assert manifest.read_text() == before
