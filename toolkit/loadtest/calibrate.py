"""Calibration against NVIDIA's perf_analyzer: same server, model, concurrency and protocol, in one run.

    make perf-analyzer     # once: tools/get-perf-analyzer.sh installs it into tools/perf_analyzer
    python -m toolkit.loadtest.calibrate --model digits_logreg --concurrency 4 --processes 1,2 \
        --output docs/benchmarks/loadtest.md
    python -m toolkit.loadtest.calibrate --protocol grpc --grpc-clients h2,grpcio --processes 1

Each round runs perf_analyzer, then our driver with each (gRPC client, process count); ratios are paired within a
round and the medians over the rounds are reported, so that a busy shared machine does not decide the outcome.
Goal (issue 15): throughput >= 0.9x perf_analyzer's and p50 within 10% of it. Each of our runs also reports the load
generator's CPU share (of one core) and the machine's busy share, and the load average is taken at the start and
the end, because on a shared 2-core machine those decide the numbers more than the driver does.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from toolkit.loadtest.perfcsv import HEADER
from toolkit.loadtest.perfcsv import row as perf_row
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
    """One perf_analyzer measurement; tried up to 3 times (it gives up when a busy machine keeps it unstable)."""
    with tempfile.NamedTemporaryFile(suffix=".csv") as f:
        cmd = [*perf_analyzer_command(binary, model, url, protocol, concurrency, window_ms, extra), "-f", f.name]
        for _ in range(3):
            before, t0 = _children_cpu(), time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            cpu_share = (_children_cpu() - before) / (time.perf_counter() - t0)  # its whole run, stabilisation too
            if r.returncode == 0:
                break
        else:
            raise LoadTestError(f"perf_analyzer failed ({r.returncode}): {(r.stderr or r.stdout)[-1000:]}")
        with open(f.name) as fh:
            row = next(csv.DictReader(fh))
    return {
        "throughput_rps": float(row["Inferences/Second"]),
        "p50_ms": float(row["p50 latency"]) / 1000.0,
        "p90_ms": float(row["p90 latency"]) / 1000.0,
        "p99_ms": float(row["p99 latency"]) / 1000.0,
        "command": " ".join(cmd[:-2]),
        "client_cpu": cpu_share,
        "outside_server_us": sum(float(row[k]) for k in ("Client Send", "Network+Server Send/Recv", "Client Recv")),
    }


def _children_cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


GOAL_THROUGHPUT, GOAL_P50 = 0.9, 0.10


def calibrate(
    model: str,
    concurrency: int,
    processes: list[int],
    duration: float,
    protocol: str,
    repository: Path,
    rounds: int = 3,
    grpc_clients: tuple[str, ...] = ("h2",),
    pa_stability: int | None = None,
) -> dict[str, Any]:
    """``rounds`` x (perf_analyzer, then ours for each client and process count); medians of the paired ratios."""
    if not PA.exists():
        raise LoadTestError(f"{PA} missing: run `make perf-analyzer` (tools/get-perf-analyzer.sh)")
    sc = parse_scenario(
        {"name": f"calibrate_{model}", "protocol": protocol, "encoding": "binary", "targets": [{"model": model}]}
    )
    raw: list[dict[str, Any]] = []
    clients = grpc_clients if protocol == "grpc" else ("",)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp, embedded_triton(repository, [model], Path(tmp)) as ep:
        url = ep.http if protocol == "http" else ep.grpc
        target = ep.http_url if protocol == "http" else ep.grpc
        window = int(duration * 1000 / 3)
        for rnd in range(rounds):
            extra = ["--stability-percentage", str(pa_stability)] if pa_stability else None
            pa = run_perf_analyzer(PA, model, url, protocol, concurrency, window, extra)
            raw.append({"round": rnd, "driver": "perf_analyzer", **pa})
            for client in clients:
                for k in processes:
                    raw.append(_ours(sc, target, ep.http_url, protocol, client, concurrency, duration, k, rnd, pa))
    rows = []
    for driver in dict.fromkeys(r["driver"] for r in raw):
        rs = [r for r in raw if r["driver"] == driver]
        row: dict[str, Any] = {"driver": driver, "command": rs[0]["command"], "n": len(rs)}
        for key in ("throughput_rps", "p50_ms", "p90_ms", "p99_ms", "tp_ratio", "p50_diff"):
            if key in rs[0]:
                row[key] = statistics.median(r[key] for r in rs)
        if "tp_ratio" in row:
            row["meets_goal"] = row["tp_ratio"] >= GOAL_THROUGHPUT and abs(row["p50_diff"]) <= GOAL_P50
        for key in ("client_cpu", "host_busy", "outside_server_us"):
            vals = [r[key] for r in rs if r.get(key) is not None]
            row[key] = statistics.median(vals) if vals else None
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
        "load_start": load_start,
        "load": os.getloadavg(),
    }


def _ours(
    sc: Any, target: str, http_url: str, protocol: str, client: str, concurrency: int, duration: float, k: int,
    rnd: int, pa: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """One run of our driver, paired with the round's perf_analyzer result."""
    rep = run_loadtest(
        RunOptions(scenario=sc, target=target, triton_url=http_url, users=concurrency, spawn_rate=1000,
                   duration=duration, warmup=2.0, processes=k, grpc_client=client or "h2")
    )  # fmt: skip
    t, cpu = rep["client"]["total"], rep["client"]["cpu"]
    outside = float(perf_row(rep)[HEADER.index("Network+Server Send/Recv")])  # avg latency - server queue/compute
    name = f"tritonctl loadtest{f' ({client})' if client else ''}, {k} process{'es' if k > 1 else ''}"
    flag = f" --grpc-client {client}" if client else ""
    return {
        "round": rnd,
        "driver": name,
        **{x: t[x] for x in ("throughput_rps", "p50_ms", "p90_ms", "p99_ms")},
        "errors": t["errors"],
        "tp_ratio": t["throughput_rps"] / pa["throughput_rps"],
        "p50_diff": t["p50_ms"] / pa["p50_ms"] - 1.0,
        "client_cpu": cpu["max"],
        "host_busy": cpu["host_busy"],
        "outside_server_us": outside,
        "command": f"tritonctl loadtest single_model --target {target} --protocol {protocol}{flag} "
        f"--users {concurrency} --processes {k} --duration {duration:g}s --warmup 2s",
    }


def to_markdown(res: dict[str, Any]) -> str:
    lines = [
        f"### {res['model']}, concurrency {res['concurrency']}, {res['protocol']}: {res['rounds']} rounds of "
        f"{res['duration']:g} s ({res['cpus']} CPUs, load average {res['load_start'][0]:.1f} at the start, "
        f"{res['load'][0]:.1f} at the end)",
        "",
        "Medians over the rounds; ratios are paired with the perf_analyzer run of the same round. Client CPU: the "
        "load generator's busiest process, share of one core; machine: all CPUs' busy share during our run; outside "
        "server: average latency minus Triton's queue and compute times (perf_analyzer's Client Send + "
        "Network+Server Send/Recv + Client Recv), i.e. what the client and the transport add.",
        "",
        "| driver | throughput (req/s) | vs perf_analyzer | p50 (ms) | p50 vs perf_analyzer | p90 (ms) | p99 (ms) "
        "| client CPU | machine busy | outside server (µs) | goal |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in res["rows"]:
        if "tp_ratio" not in r:
            lines.append(
                f"| {r['driver']} | {r['throughput_rps']:.0f} | 1.00x | {r['p50_ms']:.3f} | 0% | "
                f"{r['p90_ms']:.3f} | {r['p99_ms']:.3f} | {r['client_cpu']:.0%} (whole run) | | "
                f"{r['outside_server_us']:.0f} | |"
            )
            continue
        goal = "met" if r["meets_goal"] else "**missed**"
        cpu = f"{r['client_cpu']:.0%}" if r.get("client_cpu") is not None else "?"
        busy = f"{r['host_busy']:.0%}" if r.get("host_busy") is not None else "?"
        lines.append(
            f"| {r['driver']} | {r['throughput_rps']:.0f} | {r['tp_ratio']:.2f}x | {r['p50_ms']:.3f} | "
            f"{r['p50_diff']:+.0%} | {r['p90_ms']:.3f} | {r['p99_ms']:.3f} | {cpu} | {busy} | "
            f"{r['outside_server_us']:.0f} | {goal} |"
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
    ap.add_argument("--pa-stability", type=int, help="perf_analyzer's --stability-percentage (busy machine: 50)")
    ap.add_argument("--grpc-clients", default="h2", help="gRPC drivers to compare: h2, grpcio or h2,grpcio")
    ap.add_argument("--output", type=Path, help="append the markdown table to this file")
    a = ap.parse_args()
    res = calibrate(
        a.model, a.concurrency, [int(x) for x in a.processes.split(",")], a.duration, a.protocol, a.repository,
        a.rounds, tuple(a.grpc_clients.split(",")), a.pa_stability,
    )  # fmt: skip
    md = to_markdown(res)
    print(md)
    if a.output:
        with open(a.output, "a") as f:
            f.write(md + "\n")


if __name__ == "__main__":
    main()
