"""Calibration against NVIDIA's perf_analyzer: same server, model, concurrency and protocol, in one run.

    make perf-analyzer     # once: tools/get-perf-analyzer.sh installs it into tools/perf_analyzer
    python -m toolkit.loadtest.calibrate --model digits_logreg --concurrency 4 --processes 1,2 \
        --output docs/benchmarks/loadtest.md

Each round runs perf_analyzer, then our driver with each process count; ratios are paired within a round and the
medians over the rounds are reported, so that a busy shared machine does not decide the outcome.
Goal: throughput >= 0.7x perf_analyzer's and p50 within 20% of it.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from toolkit.loadtest.runner import RunOptions, embedded_triton, run_loadtest
from toolkit.loadtest.scenario import LoadTestError, parse_scenario

ROOT = Path(__file__).resolve().parents[2]
PA = ROOT / "tools" / "perf_analyzer" / "perf_analyzer"


def perf_analyzer_command(
    binary: Path, model: str, url: str, protocol: str, concurrency: int, window_ms: int, extra: list[str] | None = None
) -> list[str]:
    """perf_analyzer at one concurrency (``binary`` is the wrapper script that sets its own library path)."""
    return [str(binary), "-m", model, "-u", url, "-i", protocol, "--concurrency-range", str(concurrency),
            "--measurement-interval", str(window_ms), *(extra or [])]  # fmt: skip


def run_perf_analyzer(
    binary: Path, model: str, url: str, protocol: str, concurrency: int, window_ms: int, extra: list[str] | None = None
) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".csv") as f:
        cmd = [*perf_analyzer_command(binary, model, url, protocol, concurrency, window_ms, extra), "-f", f.name]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise LoadTestError(f"perf_analyzer failed ({r.returncode}): {(r.stderr or r.stdout)[-1000:]}")
        with open(f.name) as fh:
            row = next(csv.DictReader(fh))
    return {
        "throughput_rps": float(row["Inferences/Second"]),
        "p50_ms": float(row["p50 latency"]) / 1000.0,
        "p90_ms": float(row["p90 latency"]) / 1000.0,
        "p99_ms": float(row["p99 latency"]) / 1000.0,
        "command": " ".join(cmd[:-2]),
    }


def calibrate(
    model: str,
    concurrency: int,
    processes: list[int],
    duration: float,
    protocol: str,
    repository: Path,
    rounds: int = 3,
) -> dict[str, Any]:
    """``rounds`` x (perf_analyzer, then ours for each process count); medians of the paired per-round ratios."""
    if not PA.exists():
        raise LoadTestError(f"{PA} missing: run `make perf-analyzer` (tools/get-perf-analyzer.sh)")
    sc = parse_scenario(
        {"name": f"calibrate_{model}", "protocol": protocol, "encoding": "binary", "targets": [{"model": model}]}
    )
    raw: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, embedded_triton(repository, [model], Path(tmp)) as ep:
        url = ep.http if protocol == "http" else ep.grpc
        target = ep.http_url if protocol == "http" else ep.grpc
        window = int(duration * 1000 / 3)
        for rnd in range(rounds):
            pa = run_perf_analyzer(PA, model, url, protocol, concurrency, window)
            raw.append({"round": rnd, "driver": "perf_analyzer", **pa})
            for k in processes:
                rep = run_loadtest(
                    RunOptions(
                        scenario=sc,
                        target=target,
                        triton_url=ep.http_url,
                        users=concurrency,
                        spawn_rate=1000,
                        duration=duration,
                        warmup=2.0,
                        processes=k,
                    )
                )
                t = rep["client"]["total"]
                raw.append(
                    {
                        "round": rnd,
                        "driver": f"tritonctl loadtest, {k} process{'es' if k > 1 else ''}",
                        **{x: t[x] for x in ("throughput_rps", "p50_ms", "p90_ms", "p99_ms")},
                        "errors": t["errors"],
                        "tp_ratio": t["throughput_rps"] / pa["throughput_rps"],
                        "p50_diff": t["p50_ms"] / pa["p50_ms"] - 1.0,
                        "command": f"tritonctl loadtest single_model --target {target} --protocol {protocol} "
                        f"--users {concurrency} --processes {k} --duration {duration:g}s --warmup 2s",
                    }
                )
    rows = []
    for driver in dict.fromkeys(r["driver"] for r in raw):
        rs = [r for r in raw if r["driver"] == driver]
        row: dict[str, Any] = {"driver": driver, "command": rs[0]["command"], "n": len(rs)}
        for key in ("throughput_rps", "p50_ms", "p90_ms", "p99_ms", "tp_ratio", "p50_diff"):
            if key in rs[0]:
                row[key] = statistics.median(r[key] for r in rs)
        if "tp_ratio" in row:
            row["meets_goal"] = row["tp_ratio"] >= 0.7 and abs(row["p50_diff"]) <= 0.2
        rows.append(row)
    return {
        "model": model,
        "concurrency": concurrency,
        "protocol": protocol,
        "rows": rows,
        "raw": raw,
        "rounds": rounds,
        "duration": duration,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "load": os.getloadavg(),
    }


def to_markdown(res: dict[str, Any]) -> str:
    lines = [
        f"### {res['model']}, concurrency {res['concurrency']}, {res['protocol']}: {res['rounds']} rounds of "
        f"{res['duration']:g} s ({res['cpus']} CPUs, load average {res['load'][0]:.1f} at the end)",
        "",
        "Medians over the rounds; ratios are paired with the perf_analyzer run of the same round.",
        "",
        "| driver | throughput (req/s) | vs perf_analyzer | p50 (ms) | p50 vs perf_analyzer | p90 (ms) | p99 (ms) "
        "| goal |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in res["rows"]:
        if "tp_ratio" not in r:
            lines.append(
                f"| {r['driver']} | {r['throughput_rps']:.0f} | 1.00x | {r['p50_ms']:.3f} | 0% | "
                f"{r['p90_ms']:.3f} | {r['p99_ms']:.3f} | |"
            )
            continue
        goal = "met" if r["meets_goal"] else "**missed**"
        lines.append(
            f"| {r['driver']} | {r['throughput_rps']:.0f} | {r['tp_ratio']:.2f}x | {r['p50_ms']:.3f} | "
            f"{r['p50_diff']:+.0%} | {r['p90_ms']:.3f} | {r['p99_ms']:.3f} | {goal} |"
        )
    lines += ["", "Per round (throughput req/s / p50 ms):", ""]
    for rnd in range(res["rounds"]):
        cells = [
            f"{r['driver']} {r['throughput_rps']:.0f} / {r['p50_ms']:.3f}" for r in res["raw"] if r["round"] == rnd
        ]
        lines.append(f"- round {rnd + 1}: " + "; ".join(cells))
    lines += ["", "Commands (ports were free ones of the embedded Triton):", "", "```"]
    lines += [r["command"] for r in res["rows"]] + ["```", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits_logreg")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--processes", default="1,2")
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--protocol", default="http", choices=["http", "grpc"])
    ap.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--output", type=Path, help="append the markdown table to this file")
    a = ap.parse_args()
    res = calibrate(
        a.model, a.concurrency, [int(x) for x in a.processes.split(",")], a.duration, a.protocol, a.repository
    )
    md = to_markdown(res)
    print(md)
    if a.output:
        with open(a.output, "a") as f:
            f.write(md + "\n")


if __name__ == "__main__":
    main()
