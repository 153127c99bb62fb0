"""``python -m bench.tune``: ``tritonctl tune`` against NVIDIA's Model Analyzer on one model and one space, in one run.

1. Model Analyzer 1.58 (pip ``triton-model-analyzer``, installed by this script into its own venv, default
   /tmp/tritonctl-ma-venv) in local launch mode against the embedded tritonserver (a ``tritonserver`` wrapper that
   sets the library path and the backend directory) and tools/perf_analyzer: brute search over instance count 1-2,
   max batch size 1-16, dynamic batching on, concurrency 1-16, p99 <= the bound.
2. ``tritonctl tune`` on the same model, space and bound (CLI, a fresh process: its wall time includes starting
   Triton).
3. Both winners measured again back to back on one Triton, alternating, ``--rounds`` times, each at the concurrency its
   tuner chose: the two tuners ran minutes apart on a shared machine, so their own numbers are not comparable.
4. Dynamic batching against none at concurrency 32 on a batch-friendly model (digits_forest: a random forest costs
   about the same for 1 row as for 16), alternating rounds.
5. One ensemble tuned end to end (its three step models searched while the pipeline's p99 is measured).

Both tuners get the model without preferred batch sizes: with the manifest's ``preferred_batch_sizes: [8, 16]`` Model
Analyzer generates illegal configs for every max batch size below 16 and stops (the pitfall the issue records);
tune rescales them (tests/unit/test_tune_offline.py). Writes docs/benchmarks/tune.md and reports/bench/tune.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from toolkit.server import EmbeddedTriton, ServerOptions, TritonAdmin
from toolkit.server.locate import locate_triton, prepare_backend_dir
from toolkit.tune.measure import PerfAnalyzer, find_perf_analyzer
from toolkit.tune.space import ModelSettings, Point

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = """\
version: 1
x-digits: &digits
  framework: onnx
  max_batch_size: 64
  dynamic_batching: {{max_queue_delay_microseconds: 200}}
  inputs: [{{name: X, dtype: FP32, dims: [64]}}]
models:
  - name: digits_logreg
    artifact: {root}/examples/artifacts/digits_logreg.onnx
    <<: *digits
    outputs:
      - {{name: probabilities, dtype: FP32, dims: [10]}}
      - {{name: label, dtype: INT64, dims: [1], reshape: []}}
  - name: digits_forest
    artifact: {root}/examples/artifacts/digits_forest.joblib
    <<: *digits
    framework: sklearn
    outputs:
      - {{name: probabilities, dtype: FP32, dims: [10], method: predict_proba}}
      - {{name: label, dtype: INT64, dims: [1], method: predict}}
"""


def ensure_model_analyzer(venv: Path) -> Path:
    """model-analyzer from its own venv (created and installed on first use: it pins packages of its own)."""
    binary = venv / "bin" / "model-analyzer"
    if not binary.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "triton-model-analyzer==1.58.*"], check=True)
    return binary


def write_wrapper(where: Path) -> Path:
    """A ``tritonserver`` that Model Analyzer can launch: the wheel's binary with its libraries and python backend."""
    install = locate_triton()
    backends = prepare_backend_dir(install)
    path = where / "tritonserver"
    path.write_text(
        "#!/usr/bin/env bash\n"
        f'export LD_LIBRARY_PATH="{install.lib_dir}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}"\n'
        f'export PATH="{Path(sys.executable).parent}:$PATH"\n'
        f'exec "{install.binary}" --backend-directory="{backends}" "$@"\n'
    )
    path.chmod(0o755)
    return path


def run_model_analyzer(ma: Path, work: Path, repo: Path, p99_ms: float, pa: Path, reuse: bool) -> dict[str, Any]:
    """Model Analyzer's brute search, in ``work`` (kept: reports/bench/ma); ``reuse`` reads a finished run's results
    instead of running it again."""
    export = work / "ma_export"
    if reuse:
        saved = json.loads((work / "ma_run.json").read_text())
        rows = list(csv.DictReader((export / "results" / "metrics-model-inference.csv").open()))
        return {**saved, "reused": True, "rows": rows, "out": work / "ma_out", **_ma_best(rows, p99_ms)}
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cfg = {
        "model_repository": str(repo), "output_model_repository_path": str(work / "ma_out"),
        "override_output_model_repository": True, "export_path": str(export),
        "checkpoint_directory": str(work / "ma_ckpt"), "triton_launch_mode": "local",
        "triton_server_path": str(write_wrapper(work)), "perf_analyzer_path": str(pa), "client_protocol": "grpc",
        "run_config_search_mode": "brute", "run_config_search_max_instance_count": 2,
        "run_config_search_max_model_batch_size": 16, "run_config_search_max_concurrency": 16,
        "profile_models": "digits_logreg", "constraints": {"perf_latency_p99": {"max": p99_ms}},
    }  # fmt: skip
    (work / "ma.yaml").write_text(json.dumps(cfg))  # JSON is YAML
    t0 = time.monotonic()
    with open(work / "ma.log", "w") as log:
        r = subprocess.run([str(ma), "profile", "-f", str(work / "ma.yaml")], stdout=log, stderr=subprocess.STDOUT)
    wall = time.monotonic() - t0
    (work / "ma_run.json").write_text(json.dumps({"wall_s": wall, "exit": r.returncode, "constraint_p99_ms": p99_ms}))
    rows = list(csv.DictReader((export / "results" / "metrics-model-inference.csv").open()))
    return {"wall_s": wall, "exit": r.returncode, "rows": rows, "out": work / "ma_out", **_ma_best(rows, p99_ms)}


def _ma_best(rows: list[dict[str, str]], p99_ms: float) -> dict[str, Any]:
    def num(row: dict[str, str], *names: str) -> float:
        return float(next(row[n] for n in row if any(n.startswith(x) for x in names)))

    ok = [r for r in rows if num(r, "p99 Latency") <= p99_ms]
    best = max(ok, key=lambda r: num(r, "Throughput"))
    config = best.get("Model Config Path") or best.get("Model Config") or ""
    return {
        "configs": len({r.get("Model Config Path") for r in rows}), "measurements": len(rows),
        "best_config": config, "best_concurrency": int(num(best, "Concurrency", "Request Concurrency")),
        "best_throughput": num(best, "Throughput"), "best_p99_ms": num(best, "p99 Latency"),
    }  # fmt: skip


def ma_point(out_repo: Path, config_name: str) -> Point:
    """The Point a Model Analyzer config is (its config.pbtxt in the output repository)."""
    from google.protobuf.json_format import MessageToDict

    from toolkit.repository.config import parse_config

    text = (out_repo / config_name / "config.pbtxt").read_text()
    cfg = MessageToDict(parse_config(text), preserving_proto_field_name=True)
    return ModelSettings(config_name, cfg).start()


def run_tune(manifest: Path, p99_ms: float, budget: str, report: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "toolkit", "tune", "digits_logreg", "--manifest", str(manifest), "--p99",
           f"{p99_ms:g}ms", "--instances", "1-2", "--max-batch", "1-16", "--dynamic-batching", "on",
           "--queue-delays", "0", "--concurrency", "1-16", "--budget-time", budget,
           "--report", str(report)]  # fmt: skip
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t0
    data = json.loads((report / "report.json").read_text())
    return {"wall_s": wall, "exit": r.returncode, "stdout": r.stdout[-3000:], "command": " ".join(cmd[1:]),
            "report": data}  # fmt: skip


def paired(repo: Path, model: str, contenders: dict[str, tuple[Point, int]], rounds: int) -> dict[str, Any]:
    """Each contender (a point at a concurrency) loaded by override and measured in turn, ``rounds`` times; the
    median of each and the per-round ratios to the first contender."""
    pa_bin = find_perf_analyzer()
    got: dict[str, list[dict[str, float]]] = {k: [] for k in contenders}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedTriton(ServerOptions(repository=repo, workdir=Path(tmp))) as t:
        admin = TritonAdmin(t.endpoint, timeout=120)
        admin.load(model)
        settings = ModelSettings(model, admin.config(model))
        pa = PerfAnalyzer(pa_bin, t.endpoint.grpc, window_ms=1000)
        for _ in range(rounds):
            for name, (point, c) in contenders.items():
                admin.load(model, json.dumps(settings.config_for(point)))
                m = pa.measure(model, c)
                got[name].append({"throughput": m.throughput, "p99_ms": m.p99_ms})
    first = next(iter(contenders))
    return {
        name: {
            "point": contenders[name][0].label(), "concurrency": contenders[name][1],
            "throughput": statistics.median(x["throughput"] for x in xs),
            "p99_ms": statistics.median(x["p99_ms"] for x in xs), "rounds": xs,
            "ratio": statistics.median(x["throughput"] / y["throughput"] for x, y in zip(xs, got[first], strict=True)),
        }
        for name, xs in got.items()
    }  # fmt: skip


def paired_sweeps(repo: Path, model: str, points: dict[str, Point], p99_ms: float, rounds: int) -> dict[str, Any]:
    """The configs compared as configs: in each round, each one swept over concurrency 1, 2, 4, 8, 16 (until p99
    passes the bound) and valued at its best throughput within the bound; medians over the rounds. This does not
    depend on the concurrency either tuner picked from its own, noisier, measurements."""
    pa_bin = find_perf_analyzer()
    got: dict[str, list[float]] = {k: [] for k in points}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedTriton(ServerOptions(repository=repo, workdir=Path(tmp))) as t:
        admin = TritonAdmin(t.endpoint, timeout=120)
        admin.load(model)
        settings = ModelSettings(model, admin.config(model))
        pa = PerfAnalyzer(pa_bin, t.endpoint.grpc, window_ms=500)
        for _ in range(rounds):
            for name, point in points.items():
                admin.load(model, json.dumps(settings.config_for(point)))
                best = 0.0
                for c in (1, 2, 4, 8, 16):
                    m = pa.measure(model, c)
                    if m.p99_ms > p99_ms:
                        break
                    best = max(best, m.throughput)
                got[name].append(best)
    first = next(iter(points))
    return {
        name: {"point": points[name].label(), "throughput": statistics.median(xs), "rounds": xs,
               "ratio": statistics.median(x / y if y else float("inf") for x, y in zip(xs, got[first], strict=True))}
        for name, xs in got.items()
    }  # fmt: skip


def run_ensemble(p99_ms: float, budget: str, report: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "toolkit", "tune", "housing_pipeline_onnx_Chicago_IL", "--manifest",
           str(ROOT / "tritonctl.yaml"), "--p99", f"{p99_ms:g}ms", "--instances", "1-2", "--max-batch", "32",
           "--queue-delays", "0,200", "--concurrency", "1-16", "--budget-time", budget,
           "--report", str(report)]  # fmt: skip
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True)
    data = json.loads((report / "report.json").read_text())
    return {"wall_s": time.monotonic() - t0, "exit": r.returncode, "command": " ".join(cmd[1:]), "report": data}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--p99", type=float, default=10.0, help="p99 bound in ms (the issue's quiet-machine run: 5)")
    ap.add_argument("--budget", default="100s", help="tune's --budget-time")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ma-venv", type=Path, default=Path("/tmp/tritonctl-ma-venv"))
    ap.add_argument("--ma-reuse", action="store_true", help="read the last Model Analyzer run (reports/bench/ma)")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: ma, batching, ensemble")
    ap.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks" / "tune.md")
    a = ap.parse_args()
    skip = set(a.skip.split(","))
    out = ROOT / "reports" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"p99_ms": a.p99, "load_before": os.getloadavg(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="tritonctl-bench-tune-") as tmp:
        work = Path(tmp)
        manifest = work / "tritonctl.yaml"
        manifest.write_text(MANIFEST.format(root=ROOT))
        from toolkit.repository.generate import generate_repository
        from toolkit.spec import load_manifest

        repo = work / "repo"
        generate_repository(load_manifest(manifest), repo)
        ma_repo = work / "ma_repo"
        ma_repo.mkdir()
        shutil.copytree(repo / "digits_logreg", ma_repo / "digits_logreg")
        if "ma" not in skip:
            ma_bin, ma_work = ensure_model_analyzer(a.ma_venv), out / "ma"
            res["model_analyzer"] = run_model_analyzer(
                ma_bin, ma_work, ma_repo, a.p99, find_perf_analyzer(), a.ma_reuse
            )
            print("model analyzer:", {k: v for k, v in res["model_analyzer"].items() if k != "rows"}, flush=True)
        res["tune"] = run_tune(manifest, a.p99, a.budget, out / "tune")
        print(res["tune"]["stdout"], flush=True)
        best = res["tune"]["report"]["best"]
        if best is None or best["best"] is None:  # no config met the bound on tune's medians: nothing to re-measure
            skip.add("ma-compare")
            best = {"points": [vars(Point(1, 64, True, 200))], "best": {"concurrency": 1}}
        contenders = {"tune": (Point(**best["points"][0]), best["best"]["concurrency"])}
        if not {"ma", "ma-compare"} & skip:
            ma = res["model_analyzer"]
            contenders["model_analyzer"] = (ma_point(ma["out"], ma["best_config"]), ma["best_concurrency"])
            res["paired"] = paired(repo, "digits_logreg", contenders, a.rounds)
            print("paired:", res["paired"], flush=True)
            points = {name: point for name, (point, _) in contenders.items()}
            res["sweeps"] = paired_sweeps(repo, "digits_logreg", points, a.p99, a.rounds)
            print("sweeps:", res["sweeps"], flush=True)
        if "batching" not in skip:
            pair = {
                "no dynamic batching": (Point(1, 64, False, 0), 32),
                "dynamic batching": (Point(1, 64, True, 200), 32),
            }
            res["batching"] = paired(repo, "digits_forest", pair, a.rounds)
            print("batching:", res["batching"], flush=True)
    if "ensemble" not in skip:
        res["ensemble"] = run_ensemble(25.0, "90s", out / "tune-ensemble")
    previous = out / "tune.json"
    if previous.exists():  # a part skipped now keeps its last result (the page says which run each part is from)
        old = json.loads(previous.read_text())
        for part in ("batching", "ensemble"):
            if part in skip and part in old:
                res[part] = {**old[part], "from_previous_run": True} if isinstance(old[part], dict) else old[part]
    res["load_after"] = os.getloadavg()
    (out / "tune.json").write_text(json.dumps(res, indent=2, default=str))
    from bench.tune_page import write_page

    write_page(res, a.output)
    print(a.output.read_text())


if __name__ == "__main__":
    main()
