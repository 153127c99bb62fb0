"""Cold bursts on a multi-model endpoint: ``python -m bench.mme_burst``.

The issue's measurement: renamed copies served from a large store (1,000 ``NY_<i>.tar.gz``), a budget of 60, Zipf(1.0)
popularity, 4 SageMaker users (closed loop) through ``tritonctl loadtest``'s runner against ``tritonctl serve``. Most
requests early in the run are cold, so loads pile up: this shows what the request p99 and the loading wait are, and
where the loads' time goes (``tritonctl_mme_model_load_phase_seconds``). ``--serve-args`` passes flags to
``tritonctl serve``
(e.g. ``--max-concurrent-loads 2``), and several ``--variant`` runs alternate in one invocation so they share the
machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.mme_seed003 import ROOT, Serve, build_store, phase_split, scrape

SCENARIO = {
    "name": "mme_burst",
    "protocol": "sagemaker",
    "encoding": "json",
    "mme": {"endpoint": "seed003", "models": "NY_{i}.tar.gz", "n": 1000, "alpha": 1.0, "cold_threshold_ms": 50,
            "template": {"model": "housing_NewYork_NY", "batched": True,
                         "inputs": {"raw": {"dtype": "FP32", "shape": [8], "low": 0, "high": 3}}}},
}  # fmt: skip


def one_run(store: Path, work: Path, args: argparse.Namespace, serve_args: tuple[str, ...]) -> dict[str, Any]:
    from toolkit.loadtest.runner import RunOptions, run_loadtest
    from toolkit.loadtest.scenario import parse_scenario

    scenario = json.loads(json.dumps(SCENARIO))
    scenario["mme"].update(n=args.models, alpha=args.alpha)
    serve = Serve(ROOT, work, store, args.max_models, args.policy, serve_args)
    load0 = os.getloadavg()[0]
    try:
        before = scrape(serve.url)
        opts = RunOptions(scenario=parse_scenario(scenario), target=serve.url, users=args.users,
                          duration=args.duration, warmup=0.0)  # fmt: skip
        report = run_loadtest(opts)
        after = scrape(serve.url)
    finally:
        serve.stop()
    total = report["client"]["total"]
    mme = report.get("mme") or {}
    return {
        "serve_args": " ".join(serve_args) or "(defaults)",
        "requests": total.get("count"),
        "errors": total.get("errors"),
        "p50_ms": total.get("p50_ms"),
        "p90_ms": total.get("p90_ms"),
        "p99_ms": total.get("p99_ms"),
        "max_ms": total.get("max_ms"),
        "hit_ratio": mme.get("hit_ratio"),
        "loads": mme.get("loads"),
        "loads_per_s": round((mme.get("loads") or 0) / args.duration, 1),
        "avg_loading_wait_ms": mme.get("avg_loading_wait_ms"),
        "phases_ms": phase_split(after, before),
        "load_average_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--max-models", type=int, default=60)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--policy", default="gdsf")
    ap.add_argument("--variant", action="append", default=None,
                    help="flags for tritonctl serve, quoted (repeatable; runs alternate)")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    variants = [tuple(shlex.split(v)) for v in (args.variant or [""])]
    runs = []
    with tempfile.TemporaryDirectory(prefix="tritonctl-burst-") as tmp:
        work = Path(tmp)
        store = build_store(work, args.models)
        for _ in range(args.rounds):
            for v in variants:
                run = one_run(store, work, args, v)
                print(json.dumps(run), flush=True)
                runs.append(run)
                time.sleep(2)
    print("| tritonctl serve flags | requests | errors | p50 / p90 / p99 / max ms | hit ratio | loads/s | avg loading "
          "wait ms | load phases (mean ms) | load avg |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        ph = ", ".join(f"{k} {v}" for k, v in r["phases_ms"].items())
        latency = " / ".join(f"{r[k]:.0f}" for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms"))
        cells = [
            r["serve_args"],
            r["requests"],
            r["errors"],
            latency,
            f"{r['hit_ratio']:.3f}",
            r["loads_per_s"],
            f"{r['avg_loading_wait_ms']:.0f}",
            ph,
            f"{r['load_average_1m'][0]} -> {r['load_average_1m'][1]}",
        ]
        print("| " + " | ".join(map(str, cells)) + " |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(runs, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
